"""Measure a trained run's best checkpoint and ship it as a pretrained asset, or add measurements to a shipped one.

    python scripts/ship_pretrained.py --run RUN_DIR --name cifar10-small-at [--pgd-n 10000] [--aa-n 1000]
    python scripts/ship_pretrained.py --run RUN_DIR --name cifar10-vgg16-at --dtype float16 --pgd-n 0 --aa-n 0
    python scripts/ship_pretrained.py --run RUN_DIR --name cifar10-vgg16-std --dtype float16 --pgd-n 1000 --apgd-n 1000 --aa-n 0 \
        --machine "2-core AMD EPYC, no GPU"
    python scripts/ship_pretrained.py --name cifar10-vgg16-at --add-to-shipped --pgd-n 10000 --apgd-n 1000
    python scripts/ship_pretrained.py --name cifar10-vgg16-at --add-to-shipped --pgd-n 10000 --apgd-from-report RESULTS_JSON

Clean accuracy on the whole CIFAR-10 test set, PGD-20 (L∞ 8/255, α = eps/4, random start) on the
first ``--pgd-n`` test images, APGD-CE on the first ``--apgd-n``, APGD-T on the first ``--apgd-t-n`` and AutoAttack (standard, L∞
8/255) on the first ``--aa-n`` (0 skips a measurement) are measured with nonrobust's own evaluation
code and written into the checkpoint's metadata, which is then saved to
``src/nonrobust/assets/NAME.safetensors``. With ``--dtype float16`` the weights are stored in half
precision where that changes clean accuracy on the whole test set by at most 0.2 points (measured
before and after the rounding: ``metrics.weight_rounding``; otherwise float32 is shipped, and the
record says so), and every other figure is measured on the weights as shipped. ``--apgd-from-report`` takes APGD-CE from a ``nonrobust report``
of the shipped asset on the CIFAR-10 test set (its Table 3 row, measured by the same evaluation
code) instead of running it a second time. ``--add-to-shipped`` measures the shipped asset and adds to its
metadata (its precision is kept: the rounded values are exact in it). The data is the
JPEG-re-encoded copy of CIFAR-10 prepared from ``shared/data`` (recorded in the metadata).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

from nonrobust import data, models
from nonrobust.attacks import make_attack
from nonrobust.errors import UserError
from nonrobust.evaluation import evaluate_attacks
from nonrobust.identity import COMMAND, model_digest, provenance
from nonrobust.io import write_json
from nonrobust.runtime import environment

ASSETS = Path(__file__).resolve().parents[1] / "src" / "nonrobust" / "assets"
EPS = 8 / 255  # L∞ budget of every measurement here
MEASUREMENTS = (  # (option, metadata key, registered attack, label, note)
    ("pgd_n", "pgd20_accuracy", "pgd-20", "PGD-20", None),
    ("apgd_n", "apgd_ce_accuracy", "apgd-ce", "APGD-CE", "AutoAttack's first component alone: an upper bound on AutoAttack accuracy"),
    ("apgd_t_n", "apgd_t_accuracy", "apgd-t", "APGD-T",
     "AutoAttack's second component alone (targeted DLR loss, 9 target classes): an upper bound on AutoAttack accuracy"),
    ("aa_n", "autoattack_accuracy", "autoattack", "AutoAttack", None),
)
MAX_ROUNDING_POINTS = 0.2  # --dtype float16 ships half precision only where it changes clean accuracy by at most this many points
NOTES = {key: note for _, key, _, _, note in MEASUREMENTS if note}


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--run", type=Path, help="training run folder (not needed with --add-to-shipped)")
    ap.add_argument("--name", required=True)
    ap.add_argument("--checkpoint", default="best.safetensors")
    ap.add_argument("--pgd-n", type=int, default=10000, help="PGD-20 on the first N test images (0: skip)")
    ap.add_argument("--apgd-n", type=int, default=0, help="APGD-CE alone on the first N (an upper bound on AutoAttack accuracy)")
    ap.add_argument("--apgd-t-n", type=int, default=0, help="APGD-T alone on the first N (an upper bound on AutoAttack accuracy)")
    ap.add_argument("--apgd-from-report", type=Path, metavar="RESULTS_JSON",
                    help="take APGD-CE from this report of the shipped NAME (its first N test images) instead of measuring it")
    ap.add_argument("--aa-n", type=int, default=1000, help="AutoAttack (standard) on the first N (0: skip)")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="precision of the stored weights")
    ap.add_argument("--machine", help="the machine the run was trained on, kept in the recipe (e.g. '2-core AMD EPYC, no GPU'; "
                    "default: the training environment's device, threads and processor)")
    ap.add_argument("--recipe-note", help="a sentence on how the run was trained, kept in the recipe (e.g. a run resumed with more epochs)")
    ap.add_argument("--add-to-shipped", action="store_true", help="measure the shipped asset NAME and add to its metadata")
    args = ap.parse_args()
    COMMAND.set(["python", "scripts/ship_pretrained.py", *sys.argv[1:]])
    test = data.load_dataset("cifar10", "test")
    if args.add_to_shipped:
        path = ASSETS / f"{args.name}.safetensors"
        model, meta = models.load_with_meta(path)
        dtype = getattr(torch, meta.metrics.get("weight_rounding", {}).get("dtype", "float32"))
        measured = dict(meta.metrics)
    else:
        if args.run is None:
            ap.error("--run is required (unless --add-to-shipped)")
        model, meta = models.load_with_meta(args.run / args.checkpoint)
        dtype = getattr(torch, args.dtype)
        measured = {"data": "CIFAR-10 test set, JPEG-re-encoded copy (shared/data/cifar10_from_jpeg.py), class-balanced order",
                    "environment": environment(torch.device("cpu"))}
        if dtype != torch.float32:
            rounded, rounding, clean = round_weights(model, meta, test, dtype, args.batch_size)
            if abs(rounding["change_points"]) <= MAX_ROUNDING_POINTS:
                model, measured["clean_accuracy"] = rounded, clean["rounded"]
            else:  # half precision would change what the model is: ship it as trained
                dtype, measured["clean_accuracy"] = torch.float32, clean["float32"]
                print(f"rounding to {rounding['dtype']} changed clean accuracy by {rounding['change_points']} points "
                      f"(> {MAX_ROUNDING_POINTS}): shipping float32", flush=True)
            measured["weight_rounding"] = {**rounding, "shipped": str(dtype).removeprefix("torch.")}
        else:
            measured["clean_accuracy"] = clean_accuracy(model, test, args.batch_size)
        history = meta.metrics.get("history", [])
        measured.update(selected_epoch=meta.metrics.get("epoch"), training_history=history,
                        training_seconds=round(sum(h.get("seconds", 0) for h in history), 1))
        meta.recipe = {**meta.recipe, "shipped_by": shlex.join(["python", "scripts/ship_pretrained.py", *sys.argv[1:]]),
                       **({"note": args.recipe_note} if args.recipe_note else {}), **({"machine": args.machine} if args.machine else {})}
        init = meta.recipe.get("config", {}).get("init")
        if init:  # fine-tuned: keep how the weights it started from were made
            meta.recipe["previous"] = previous_run(Path(init))
    for option, key, attack, label, note in MEASUREMENTS:
        n = getattr(args, option)
        if n:
            measured[key] = {**measure(model, test, attack, label, n, args.batch_size), **({"note": note} if note else {})}
            print(f"{label} on {measured[key]['n']}: {measured[key]['value']:.2%} ({measured[key]['seconds']:.0f} s)", flush=True)
    if args.apgd_from_report is not None:
        measured["apgd_ce_accuracy"] = {**from_report(args.apgd_from_report, args.name, meta.metrics, "APGD-CE"),
                                        "note": NOTES["apgd_ce_accuracy"]}
        print(f"APGD-CE on {measured['apgd_ce_accuracy']['n']}: {measured['apgd_ce_accuracy']['value']:.2%} (from the report)", flush=True)
    meta.metrics = measured
    # what the figures were measured on: the shipped weights (as stored), the CIFAR-10 test set, the command
    meta.provenance = provenance(model=model, data=test, settings={"measurements": [k for k in measured if k.endswith("_accuracy")]},
                                 seeds={"attacks": 0})
    ASSETS.mkdir(parents=True, exist_ok=True)
    models.save(model, ASSETS / f"{args.name}.safetensors", meta, dtype=dtype)
    if args.run is not None:
        write_json(args.run / f"{args.name}.measured.json", measured)
    print(json.dumps({k: v for k, v in measured.items() if k not in ("environment", "training_history")}, indent=2))


def previous_run(path: Path) -> dict:
    """What a fine-tuned run started from (its ``--init`` file): that checkpoint's recipe, training time and history, clean
    accuracy and weight digest where it is a nonrobust checkpoint, else the file's weight digest alone."""
    if not path.is_file():
        raise SystemExit(f"{path}: the run's --init weights are gone; put them back to record what the run started from")
    try:
        model, meta = models.load_with_meta(path)
    except UserError:  # a plain state dict: no recipe to keep
        return {"weights": path.name, "weights_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    metrics = meta.metrics
    return {"weights": path.name, "model_digest": model_digest(model), "recipe": meta.recipe,
            **{k: metrics[k] for k in ("training_seconds", "selected_epoch", "training_history", "clean_accuracy", "weight_rounding") if k in metrics}}


def clean_accuracy(model: torch.nn.Module, test: data.ImageDataset, batch_size: int) -> dict:
    """``{"n", "value", "seconds"}``: clean accuracy on all of ``test``."""
    t0 = time.perf_counter()
    res = evaluate_attacks(model, test.batches(batch_size), {}, seed=0)
    return {"n": res["n"], "value": res["clean_accuracy"], "seconds": round(time.perf_counter() - t0, 1)}


def round_weights(model: torch.nn.Module, meta: models.CheckpointMeta, test: data.ImageDataset, dtype: torch.dtype,
                  batch_size: int) -> tuple[torch.nn.Module, dict, dict]:
    """The model as it loads from a file saved with ``dtype``, the rounding record, and clean accuracy on ``test``
    (:func:`clean_accuracy`) of each, under ``"float32"`` and ``"rounded"``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rounded.safetensors"
        models.save(model, path, meta, dtype=dtype)
        rounded = models.load(path)
    clean = {"float32": clean_accuracy(model, test, batch_size), "rounded": clean_accuracy(rounded, test, batch_size)}
    before, after = clean["float32"]["value"], clean["rounded"]["value"]
    return rounded, {"dtype": str(dtype).removeprefix("torch."), "n": clean["float32"]["n"], "clean_accuracy_float32": before,
                     "clean_accuracy_rounded": after, "change_points": round(100 * (after - before), 3)}, clean


def measure(model: torch.nn.Module, test: data.ImageDataset, attack: str, label: str, n: int, batch_size: int) -> dict:
    """Robust accuracy under ``attack`` at L∞ 8/255 on the first ``n`` test images, with its settings and sizes."""
    t1 = time.perf_counter()
    images = test.first(n)
    res = evaluate_attacks(model, images.batches(batch_size), {label: make_attack(attack, eps=EPS)}, seed=0)
    return {"n": res["n"], "value": res["attacks"][label]["robust_accuracy"],
            "clean_accuracy_on_these": res["clean_accuracy"],
            "attack": res["attacks"][label]["settings"],
            "description": make_attack(attack, eps=EPS).summary(),
            "perturbation": res["attacks"][label]["perturbation"],
            "seconds": round(time.perf_counter() - t1, 1),
            "provenance": provenance(model=model, data=images, settings={"attack": res["attacks"][label]["settings"], "batch_size": batch_size},
                                     seeds={"attack": 0})}


def from_report(path: Path, name: str, shipped_metrics: dict, label: str) -> dict:
    """The Table 3 row ``label`` of a report on the shipped model ``name``, in :func:`measure`'s form.

    The report must be of ``name`` on the CIFAR-10 test set at L∞ 8/255, made while the asset
    had the metadata it has now (its weight-rounding record): otherwise exits with the reason.
    """
    report = json.loads(path.read_text(encoding="utf-8"))
    settings = report.get("settings", {})
    made_with = (report.get("provenance") or {}).get("model", {}).get("digest")
    same = (made_with == model_digest(models.pretrained(name)) and settings.get("data") == "cifar10" and settings.get("split") == "test")
    if not same:
        raise SystemExit(f"{path}: not a report of the shipped {name} (its current weights, by content) on the CIFAR-10 test set")
    rows = [row for row in report["table3"]["rows"] if row["label"] == label and abs(row["eps"] - EPS) < 1e-9]
    if not rows:
        raise SystemExit(f"{path}: its Table 3 has no {label} row at L∞ 8/255")
    row = rows[0]
    return {"n": report["table3"]["n"], "value": row["robust_accuracy"], "clean_accuracy_on_these": row["clean_accuracy"],
            "attack": row["settings"],
            "perturbation": {"points": round(row["clean_accuracy"] * report["table3"]["n"]),
                             **{k: row[k] for k in ("linf_max", "l2_median", "l2_max", "nan", "min", "max")}},
            "seconds": row["seconds"], "measured_in": f"nonrobust report {path.name} (settings: {json.dumps(settings)})"}


if __name__ == "__main__":
    main()
