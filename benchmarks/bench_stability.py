"""Stability of the per-image split against its cost: noise draws per Adam step and Adam steps.

For each model (by default the shipped ``cifar10-small-at`` and ``cifar10-vgg16-at``) on the first
``--n`` CIFAR-10 test images, in batches of 128 (the ``paper`` protocol's T is per batch), every
setting of (``samples`` K, ``iterations``) runs the split once per noise seed (``--seeds``). The
robust masks of the seeds are compared image by image (:func:`nonrobust.bottleneck.seed_agreement`)
under each threshold rule, all computed from the same σ. Cost: the split's wall time in forward
passes of the full model on the same images, each forward pass timed right before its split (the
median over the seeds). A setting with a mean Jaccard overlap ≥ 0.8 (over the pairs of seeds with
at least one robust channel) at ≤ 10 forward passes is flagged ``meets``.

Needs CIFAR-10 under $NONROBUST_DATA (``python shared/data/cifar10_from_jpeg.py DIR``).

Usage: python benchmarks/bench_stability.py [--quick] [--n 256] [--seeds 3] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from dataclasses import replace

import torch

from nonrobust import data, models
from nonrobust.bottleneck import IBConfig, _threshold, distill, robust_channels, seed_agreement, summarise_agreement
from nonrobust.runtime import environment
from nonrobust.split import split_model

GRID = ((1, 50), (1, 200), (1, 800), (4, 50), (4, 200), (16, 50), (16, 200))
"""(samples K, iterations) settings: K against iterations around the paper's (1, 200)."""
RULES = ("max", "channel")
TARGET_JACCARD, TARGET_PASSES = 0.8, 10.0


def clock(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def bench(model_name: str, images: data.ImageDataset, grid, seeds: int, batch: int) -> list[dict]:
    model = models.pretrained(model_name)
    split = split_model(model, model.nonrobust_meta.split_layer)
    batches = list(images.batches(batch))
    with torch.no_grad():
        model(batches[0][0])  # warm-up
    rows = []
    for samples, iterations in grid:
        config = IBConfig(samples=samples, iterations=iterations)
        sigmas, ratios = [], []
        for seed in range(seeds):
            with torch.no_grad():
                forward, _ = clock(lambda: [model(x) for x, _ in batches])
            seconds, results = clock(lambda config=config, seed=seed: [distill(split, x, y, replace(config, seed=seed),
                                                      indices=torch.arange(i * batch, i * batch + len(y)))
                                              for i, (x, y) in enumerate(batches)])
            ratios.append(seconds / forward)
            sigmas.append(results)
        row = {"model": model_name, "samples": samples, "iterations": iterations, "head_passes_per_image": samples * iterations,
               "forward_passes": statistics.median(ratios), "forward_passes_range": [min(ratios), max(ratios)], "rules": {}}
        for rule in RULES:
            masks = []
            for per_seed in sigmas:  # the same σ under each threshold rule
                masks.append(torch.cat([robust_channels(r.sigma, _threshold(r.var_z, replace(r.config, threshold=rule)))
                                        for r in per_seed]))
            masks = torch.stack(masks)
            s = summarise_agreement(seed_agreement(masks), masks.shape[-1], seeds)
            s["robust_per_image"] = float(masks.sum(-1).double().mean())
            s["meets"] = bool(s["jaccard_nonempty_pairs"] is not None and s["jaccard_nonempty_pairs"] >= TARGET_JACCARD
                              and row["forward_passes"] <= TARGET_PASSES)
            row["rules"][rule] = s
        rows.append(row)
        print(_line(row), flush=True)
    return rows


def _line(row: dict) -> str:
    cells = [f"| {row['model']} | {row['samples']} | {row['iterations']} | {row['forward_passes']:.1f} "
             f"({row['forward_passes_range'][0]:.1f}–{row['forward_passes_range'][1]:.1f})"]
    for rule in RULES:
        s = row["rules"][rule]
        nonempty = "–" if s["jaccard_nonempty_pairs"] is None else f"{s['jaccard_nonempty_pairs']:.2f}"
        cells.append(f"{s['robust_per_image']:.1f} | {s['jaccard_mean']:.2f} | {nonempty} | {s['pairs_both_empty']:.2f}"
                     + (" | **meets**" if s["meets"] else " | "))
    return " | ".join(cells) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--models", default="cifar10-small-at,cifar10-vgg16-at")
    ap.add_argument("--n", type=int, default=256, help="first N CIFAR-10 test images")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--quick", action="store_true", help="16 images, 2 seeds, 2 short settings (a smoke test)")
    ap.add_argument("--out")
    args = ap.parse_args()
    grid = ((1, 10), (2, 10)) if args.quick else GRID
    n, seeds, batch = (16, 2, 8) if args.quick else (args.n, args.seeds, args.batch)
    images = data.load_dataset("cifar10", "test", n=n)
    print("| model | K | iterations | forward passes | " + " | ".join(
        f"{r}: robust/image | Jaccard (all pairs) | Jaccard (non-empty pairs) | both empty | meets" for r in RULES) + " |")
    print("|" + " --- |" * (4 + 5 * len(RULES)))
    result = {"environment": environment(torch.device("cpu")), "n": n, "seeds": seeds, "batch": batch,
              "target": {"jaccard_nonempty_pairs": TARGET_JACCARD, "forward_passes": TARGET_PASSES},
              "data": images.provenance, "runs": []}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="no channel came out robust")  # measured here, as robust/image 0
        for name in args.models.split(","):
            result["runs"] += bench(name, images, grid, seeds, batch)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
