"""README's table of the sanity checks: one column per model, every figure read from its ``evaluate sanity`` results.json.

    python scripts/sanity_table.py docs/findings/cifar10-vgg16-at-sanity.results.json \
        docs/findings/cifar10-small-at-sanity.results.json docs/findings/cifar10-small-std-sanity.results.json

Prints a Markdown table (``--check README.md``: exit 1 unless README holds exactly this table). Shares are of the
images named in the column's header (the costlier checks on the first ``n_costly``); ``p`` is an exact McNemar
test against the IB split on the same images.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}%"


def _p(pair: dict[str, Any]) -> str:
    return f"p = {pair['p']:.2g}"


ROWS = (
    ("images", "images (the costlier checks: model randomisation, adaptive attacks, layers)"),
    ("model", "the model: clean / PGD-20"),
    ("table1", "Table 1 (paper protocol) under PGD-20: Int / R / NR"),
    ("random", "a random mask of the IB mask's size per image: R under PGD-20"),
    ("oracle", "the label oracle (no bottleneck, true label): R under PGD-20"),
    ("wrong", "masks from a wrong label ŷ: Z_r predicts ŷ (IB / oracle)"),
    ("population", "label-free population split / a random mask of its size: R under PGD-20"),
    ("head", "head re-initialised: the model / Z_r, clean"),
    ("all", "every layer re-initialised: the model / Z_r, clean"),
    ("best_random", "best Z_r of a re-initialised model (clean), and where"),
    ("per_image", "attacker who knows each image's mask: Z_r transfer → worst case (PGD-20; APGD-CE)"),
    ("pop_adaptive", "attacker who knows the population mask: Z_r transfer → worst case (PGD-20; APGD-CE)"),
    ("layers", "layers: R clean / R under PGD-20 / follows ŷ (robust channels)"),
)


def column(path: Path) -> tuple[str, dict[str, str]]:
    """The header and the figures of one model's column."""
    r = json.loads(path.read_text(encoding="utf-8"))
    s, ref = r["sanity"], r["reference_attack"]
    ib = s["ib"]["rows"]
    t3 = {row["label"]: row for row in r["table3"]["rows"]}
    rs, lo = s["random_subset"], s["label_oracle"]
    mr, ad = s["model_randomisation"], s["adaptive"]
    stages = mr["stages"]
    cascade = [st for st in stages if st["variant"] == "cascading"]
    best = max(stages, key=lambda st: st["rows"]["clean"]["robust"])

    def adaptive(kind: str) -> str:
        return "; ".join(f"{_pct(row['transfer'])} → {_pct(row['worst_case'])}" for row in ad[kind]["rows"].values())

    out = {
        "images": f"{s['n']} ({s['n_costly']})",
        "model": f"{_pct(t3[ref]['clean_accuracy'])} / {_pct(t3[ref]['robust_accuracy'])}",
        "table1": " / ".join(_pct(ib[ref][k]) for k in ("int", "robust", "nonrobust")),
        "random": f"{_pct(rs['rows'][ref]['robust'])} ({_p(rs['versus'][ref]['robust'])})",
        "oracle": f"{_pct(lo['true']['rows'][ref]['robust'])} ({_p(lo['true']['versus'][ref]['robust'])})",
        "wrong": f"{_pct(lo['ib_wrong']['predicts_mask_label']['clean']['robust'])} / {_pct(lo['wrong']['predicts_mask_label']['clean']['robust'])}",
        "population": f"{_pct(rs['population_split']['rows'][ref]['robust'])} / {_pct(rs['population']['rows'][ref]['robust'])} "
                      f"({_p(rs['population']['versus'][ref]['robust'])})",
        "head": f"{_pct(stages[0]['rows']['clean']['int'])} / {_pct(stages[0]['rows']['clean']['robust'])}",
        "all": f"{_pct(cascade[-1]['rows']['clean']['int'])} / {_pct(cascade[-1]['rows']['clean']['robust'])}",
        "best_random": f"{_pct(best['rows']['clean']['robust'])} ({best['name']})",
        "per_image": adaptive("per_image"),
        "pop_adaptive": adaptive("population"),
        "layers": "; ".join(f"{layer} ({'×'.join(map(str, v['shape'][1:]))}): {_pct(v['per_image']['rows']['clean']['robust'])} / "
                            f"{_pct(v['per_image']['rows'][ref]['robust'])} / "
                            f"{_pct(v['per_image'].get('label_control', {}).get('robust_predicts_mask_label'))} "
                            f"({v['per_image']['channels']['robust']:.0f})" for layer, v in s["layers"].items()),
    }
    return f"{r['settings']['model']} ({r['arch']} at {r['layer']})", out


def table(paths: list[Path]) -> str:
    cols = [column(p) for p in paths]
    lines = ["| | " + " | ".join(h for h, _ in cols) + " |", "| --- |" + " --- |" * len(cols)]
    lines += [f"| {label} | " + " | ".join(c[key] for _, c in cols) + " |" for key, label in ROWS]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("results", nargs="+", type=Path)
    ap.add_argument("--check", type=Path, metavar="README", help="exit 1 unless this file holds exactly the table")
    args = ap.parse_args()
    text = table(args.results)
    if args.check:
        if text not in args.check.read_text(encoding="utf-8"):
            print(f"{args.check} does not hold the sanity table of {', '.join(map(str, args.results))}: rerun scripts/sanity_table.py",
                  file=sys.stderr)
            return 1
        return 0
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
