"""Measure a trained run's best checkpoint and ship it as a pretrained asset.

    python scripts/ship_pretrained.py --run RUN_DIR --name cifar10-small-at [--pgd-n 10000] [--aa-n 1000]
    python scripts/ship_pretrained.py --run RUN_DIR --name cifar10-vgg16-at --dtype float16 --aa-n 0 --apgd-n 1000

Clean accuracy on the whole CIFAR-10 test set, PGD-20 (L∞ 8/255, α 2/255, random
start) on the first ``--pgd-n`` test images and AutoAttack (standard, L∞ 8/255) on
the first ``--aa-n`` (0 skips it) are measured with nonrobust's own evaluation
code and written into the checkpoint's metadata, which is then saved to
``src/nonrobust/assets/NAME.safetensors``. With ``--dtype float16`` the weights are
stored in half precision: clean accuracy is measured on the whole test set before
and after the rounding (recorded as ``metrics.weight_rounding``), and every other
figure is measured on the rounded weights, i.e. on the model as it is shipped. The data is the JPEG-re-encoded copy of
CIFAR-10 prepared from ``shared/data`` (recorded in the metadata).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from nonrobust import data, models
from nonrobust.attacks import make_attack
from nonrobust.evaluation import evaluate_attacks
from nonrobust.io import write_json
from nonrobust.runtime import environment

ASSETS = Path(__file__).resolve().parents[1] / "src" / "nonrobust" / "assets"
EPS = 8 / 255  # L∞ budget of every measurement here


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, help="training run folder (not needed with --add-to-shipped)")
    ap.add_argument("--name", required=True)
    ap.add_argument("--checkpoint", default="best.safetensors")
    ap.add_argument("--pgd-n", type=int, default=10000)
    ap.add_argument("--aa-n", type=int, default=1000)
    ap.add_argument("--apgd-n", type=int, default=0, help="APGD-CE alone on the first N (an upper bound on AutoAttack accuracy)")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="precision of the stored weights")
    ap.add_argument("--add-to-shipped", action="store_true",
                    help="keep the shipped asset's measurements and only add AutoAttack's (--aa-n)")
    args = ap.parse_args()
    if args.add_to_shipped:
        add_to_shipped(args)
        return
    if args.run is None:
        ap.error("--run is required (unless --add-to-shipped)")

    model, meta = models.load_with_meta(args.run / args.checkpoint)
    test = data.load_dataset("cifar10", "test")
    measured: dict = {"data": "CIFAR-10 test set, JPEG-re-encoded copy (shared/data/cifar10_from_jpeg.py), class-balanced order",
                      "environment": environment(torch.device("cpu"))}
    dtype = getattr(torch, args.dtype)
    if dtype != torch.float32:
        model, measured["weight_rounding"] = round_weights(model, meta, test, dtype, args.batch_size)
    t0 = time.perf_counter()
    pgd = {"PGD-20": make_attack("pgd-20", eps=EPS)} if args.pgd_n else {}
    res = evaluate_attacks(model, test.first(args.pgd_n or len(test)).batches(args.batch_size), pgd, seed=0)
    measured["clean_accuracy"] = {"n": res["n"], "value": res["clean_accuracy"]}
    if args.pgd_n:
        measured["pgd20_accuracy"] = {"n": res["n"], "value": res["attacks"]["PGD-20"]["robust_accuracy"],
                                      "attack": res["attacks"]["PGD-20"]["settings"],
                                      "perturbation": res["attacks"]["PGD-20"]["perturbation"]}
    if 0 < args.pgd_n < len(test):  # clean accuracy on the whole set only when PGD ran on part of it
        full = evaluate_attacks(model, test.batches(args.batch_size), {}, seed=0)
        measured["clean_accuracy"] = {"n": full["n"], "value": full["clean_accuracy"]}
    measured["seconds_clean_and_pgd"] = round(time.perf_counter() - t0, 1)
    measured["autoattack_accuracy"] = measure(model, test, "autoattack", "AutoAttack", args.aa_n, args.batch_size) if args.aa_n else "not measured"
    if args.apgd_n:
        measured["apgd_ce_accuracy"] = {**measure(model, test, "apgd-ce", "APGD-CE", args.apgd_n, args.batch_size),
                                        "note": "AutoAttack's first component alone: an upper bound on AutoAttack accuracy"}
    history = meta.metrics.get("history", [])
    meta.metrics = {**measured, "selected_epoch": meta.metrics.get("epoch"), "training_history": history,
                    "training_seconds": round(sum(h.get("seconds", 0) for h in history), 1)}
    meta.recipe = {**meta.recipe, "shipped_by": f"python scripts/ship_pretrained.py --run {args.run} --name {args.name}"}
    ASSETS.mkdir(parents=True, exist_ok=True)
    models.save(model, ASSETS / f"{args.name}.safetensors", meta, dtype=dtype)
    write_json(args.run / f"{args.name}.measured.json", measured)
    print(json.dumps({k: v for k, v in measured.items() if k != "environment"}, indent=2))


def round_weights(model: torch.nn.Module, meta: models.CheckpointMeta, test: data.ImageDataset, dtype: torch.dtype,
                  batch_size: int) -> tuple[torch.nn.Module, dict]:
    """The model as it loads from a file saved with ``dtype``, and clean accuracy on ``test`` before and after the rounding."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rounded.safetensors"
        models.save(model, path, meta, dtype=dtype)
        rounded = models.load(path)
    before = evaluate_attacks(model, test.batches(batch_size), {}, seed=0)
    after = evaluate_attacks(rounded, test.batches(batch_size), {}, seed=0)
    return rounded, {"dtype": str(dtype).removeprefix("torch."), "n": before["n"], "clean_accuracy_float32": before["clean_accuracy"],
                     "clean_accuracy_rounded": after["clean_accuracy"],
                     "change_points": round(100 * (after["clean_accuracy"] - before["clean_accuracy"]), 3)}


def measure(model: torch.nn.Module, test: data.ImageDataset, attack: str, label: str, n: int, batch_size: int) -> dict:
    """Robust accuracy under ``attack`` at L∞ 8/255 on the first ``n`` test images, with its settings and sizes."""
    t1 = time.perf_counter()
    res = evaluate_attacks(model, test.first(n).batches(batch_size), {label: make_attack(attack, eps=EPS)}, seed=0)
    return {"n": res["n"], "value": res["attacks"][label]["robust_accuracy"],
            "clean_accuracy_on_these": res["clean_accuracy"],
            "attack": res["attacks"][label]["settings"],
            "perturbation": res["attacks"][label]["perturbation"],
            "seconds": round(time.perf_counter() - t1, 1)}


def add_to_shipped(args: argparse.Namespace) -> None:
    """Measure AutoAttack on the shipped asset ``NAME`` and add it to its metadata."""
    path = ASSETS / f"{args.name}.safetensors"
    model, meta = models.load_with_meta(path)
    meta.metrics["autoattack_accuracy"] = measure(model, data.load_dataset("cifar10", "test"), "autoattack", "AutoAttack",
                                                  args.aa_n, args.batch_size)
    models.save(model, path, meta)
    print(json.dumps(meta.metrics["autoattack_accuracy"], indent=2))


if __name__ == "__main__":
    main()
