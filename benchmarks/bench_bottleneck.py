"""Cost of the bottleneck's `paper` protocol on a batch, in forward passes of the full model.

For each model: time of one full forward pass on the batch (eval, no grad), time of
`distill` (Z computed once, 200 Adam steps through the head only), and the time the
same 200 steps would take if f_l were recomputed every step (measured on a few steps
and scaled). Usage: python benchmarks/bench_bottleneck.py [--quick] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from nonrobust import models
from nonrobust.bottleneck import IBConfig, distill
from nonrobust.runtime import environment
from nonrobust.split import split_model


def timed(fn, repeats=3):
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench(arch: str, batch: int, iterations: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = models.build(arch).eval()
    split = split_model(model, models.ARCHITECTURES[arch].default_layer)
    x, y = torch.rand(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    with torch.no_grad():
        forward = timed(lambda: model(x), repeats)
    config = IBConfig(iterations=iterations)
    ib = timed(lambda: distill(split, x, y, config), repeats)
    # the naive alternative: recompute Z = f_l(x) inside every step (measured on 5 steps)
    steps = 5
    lam = torch.zeros(batch, split.features(x[:1]).shape[1], requires_grad=True)
    opt = torch.optim.Adam([lam], lr=0.1)

    def naive():
        for _ in range(steps):
            z, ctx = split.features_and_context(x)
            s = torch.nn.functional.softplus(lam)[:, :, None, None]
            loss = torch.nn.functional.cross_entropy(split.head(z + s * torch.randn_like(s), ctx), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

    naive_total = timed(naive, 1) / steps * iterations
    return {"arch": arch, "layer": split.layer, "batch": batch, "iterations": iterations, "forward_s": forward,
            "distill_s": ib, "distill_in_forward_passes": ib / forward, "recompute_fl_s": naive_total,
            "recompute_fl_in_forward_passes": naive_total / forward, "speedup_vs_recompute": naive_total / ib}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    batch, iters, repeats = (16, 20, 1) if args.quick else (128, 200, 3)
    result = {"environment": environment(torch.device("cpu")), "runs": []}
    for arch in ("small_cnn", "vgg16"):
        r = bench(arch, batch, iters, repeats)
        result["runs"].append(r)
        print(f"{arch} @ {r['layer']}: forward {r['forward_s']*1e3:.0f} ms, paper split {r['distill_s']*1e3:.0f} ms "
              f"= {r['distill_in_forward_passes']:.2f} forward passes; recomputing f_l each step: "
              f"{r['recompute_fl_in_forward_passes']:.1f} forward passes ({r['speedup_vs_recompute']:.0f}x slower)", flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
