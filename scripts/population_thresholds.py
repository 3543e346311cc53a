"""Table 1 under each threshold rule of the population split, from a finished report folder (no refit, no new attack).

    python scripts/population_thresholds.py REPORT_DIR [--rules max channel quantile:0.5 quantile:0.9] [--out FILE.json]

The population split's σ does not depend on the threshold rule, so the σ and σ_z² the report
fitted (``REPORT_DIR/population.safetensors``) are thresholded again under each rule
(:func:`nonrobust.bottleneck.robust_channels`), and Table 1's population rows are recomputed with
:func:`nonrobust.analyses.feature_accuracy` on the report's images and its stored adversarial
examples. Prints, per rule: robust channels, and the accuracy of Z, Z_r and Z_nr clean and under
each attack, with 95% Wilson intervals.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from nonrobust import data, loading
from nonrobust.analyses import feature_accuracy
from nonrobust.attacks import ATTACKS
from nonrobust.bottleneck import IBResult, _threshold, robust_channels
from nonrobust.report.readings import ci
from nonrobust.split import split_model
from nonrobust.streams import StoredAdversarial


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("report", type=Path)
    ap.add_argument("--rules", nargs="+", default=["max", "channel", "quantile:0.5", "quantile:0.9"])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    results = json.loads((args.report / "results.json").read_text(encoding="utf-8"))
    s = results["settings"]
    model = loading.resolve(s["model"])[0]
    split = split_model(model, results["layer"])
    ds = data.load_dataset(s["data"], s["split"], s["data_dir"], n=s["n"], image_size=s["image_size"])
    stored = {ATTACKS[k].label: StoredAdversarial(args.report / "adversarial" / f"{k}.safetensors") for k in s["attacks"]}
    fitted = IBResult.load(args.report / "population.safetensors")
    rows = {}
    for rule in args.rules:
        config = replace(fitted.config, threshold=rule)
        threshold = _threshold(fitted.var_z, config)
        pop = replace(fitted, config=config, threshold=threshold, robust_mask=robust_channels(fitted.sigma, threshold))
        table = feature_accuracy(model, split, ds.batches(s["batch_size"]), stored, population=pop, seed=s["seed"], total=len(ds),
                                 progress=False)
        rows[rule] = {"robust_channels": int(pop.robust_mask.sum()), "channels": int(pop.robust_mask.numel()), "rows": table["rows"]}
        n = table["n"]
        print(f"{rule:<14} {rows[rule]['robust_channels']:>4} of {rows[rule]['channels']} robust; " + "; ".join(
            f"{k}: Z {ci(r['int'], n)}, Z_r {ci(r['robust'], n)}, Z_nr {ci(r['nonrobust'], n)}" for k, r in table["rows"].items()
            if k in ("clean", results["reference_attack"])), flush=True)
    out = {"report": str(args.report), "model": s["model"], "n": len(ds), "fitted_on": results["population"]["fitted_on"], "rules": rows}
    if args.out:
        args.out.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
