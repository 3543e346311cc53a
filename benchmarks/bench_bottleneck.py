"""Cost of the bottleneck's `paper` protocol on a batch, in forward passes of the full model.

For each model, ``--rounds`` rounds, each measuring back to back: one full forward
pass on the batch (eval, no grad) and one ``distill`` (Z computed once, 200 Adam
steps through the head only). The ratio is taken within each round, so a slow
spell of the machine slows both sides; the median, minimum and maximum over the
rounds are reported. Each round also times the parts of ``distill`` (f_l, the
noise table, the 200 steps) and, per step, the head's forward + backward alone.
Once per model: the time the 200 steps would take if f_l were recomputed every
step (5 steps, scaled).

Usage: python benchmarks/bench_bottleneck.py [--quick] [--rounds N] [--device cpu|cuda] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import statistics

import timing  # benchmarks/timing.py
import torch
import torch.nn.functional as F

from nonrobust import models
from nonrobust.bottleneck import IBConfig, _Adam, _IBLoss, _PerImageNoise, distill, spatial_variance
from nonrobust.runtime import environment
from nonrobust.split import split_model


DEVICE = torch.device("cpu")  # set by --device in main()


def clock(fn) -> float:
    return timing.clock(fn, DEVICE)


def parts(split, x, y, config: IBConfig) -> dict[str, float]:
    """Seconds spent in each part of `distill` (the same calls, timed one by one)."""
    out = {}
    with torch.no_grad():
        out["f_l_s"] = clock(lambda: split.features_and_context(x))
        z, ctx = split.features_and_context(x)
    var_z = spatial_variance(z)
    holder = {}
    out["noise_s"] = clock(lambda: holder.setdefault("n", _PerImageNoise(torch.arange(len(x)), 0, (z.shape[1], 1, 1), config.iterations, z.device)))
    noise = holder["n"]
    lam = torch.zeros(var_z.shape, device=z.device)
    opt, loss = _Adam(lam, config.lr), _IBLoss(split, z, ctx, y, var_z, config)

    def steps():
        for step in range(config.iterations):
            opt.step(loss.grad(lam, noise(step), per_image=True))

    leaf = z.clone().requires_grad_(True)  # (neither model's head works in place on its input)

    def head_only():
        for _ in range(config.iterations):
            logits = split.head(leaf, ctx, consume=True)
            torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), leaf)

    out["steps_s"] = clock(steps)
    out["head_fwd_bwd_s"] = clock(head_only)
    return out


def bench(arch: str, batch: int, iterations: int, rounds: int) -> dict:
    torch.manual_seed(0)
    model = models.build(arch).eval().to(DEVICE)
    split = split_model(model, models.ARCHITECTURES[arch].default_layer)
    x, y = torch.rand(batch, 3, 32, 32, device=DEVICE), torch.randint(0, 10, (batch,), device=DEVICE)
    config = IBConfig(iterations=iterations)
    with torch.no_grad():
        model(x)  # warm-up
    distill(split, x, y, config)
    per_round = []
    for _ in range(rounds):
        with torch.no_grad():
            forward = clock(lambda: model(x))
        split_s = clock(lambda: distill(split, x, y, config))
        per_round.append({"forward_s": forward, "distill_s": split_s, "ratio": split_s / forward, **parts(split, x, y, config)})
    # the naive alternative: recompute Z = f_l(x) inside every step (5 steps, scaled)
    steps = 5
    lam = torch.zeros(batch, split.features(x[:1]).shape[1], requires_grad=True, device=DEVICE)
    opt = torch.optim.Adam([lam], lr=0.1)

    def naive():
        for _ in range(steps):
            z, ctx = split.features_and_context(x)
            s = F.softplus(lam)[:, :, None, None]
            loss = F.cross_entropy(split.head(z + s * torch.randn_like(s), ctx), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

    naive_total = clock(naive) / steps * iterations
    median = {k: statistics.median(r[k] for r in per_round) for k in per_round[0]}
    ratios = [r["ratio"] for r in per_round]
    return {"arch": arch, "layer": split.layer, "feature_shape": list(split.features(x[:1]).shape[1:]), "batch": batch,
            "iterations": iterations, "rounds": per_round, "median": median,
            "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "recompute_fl_s": naive_total, "recompute_fl_in_forward_passes": naive_total / median["forward_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--quick", action="store_true", help="batch 16, 20 steps, 2 rounds (a smoke test)")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--archs", default="small_cnn,vgg16", help="registered architectures to measure, comma-separated")
    ap.add_argument("--out")
    args = ap.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    batch, iters, rounds = (16, 20, 2) if args.quick else (128, 200, args.rounds)
    result = {"environment": environment(DEVICE), "runs": []}
    for arch in args.archs.split(","):
        r = bench(arch, batch, iters, rounds)
        result["runs"].append(r)
        m = r["median"]
        print(f"{arch} @ {r['layer']} {r['feature_shape']}: paper split = {r['ratio_median']:.2f} forward passes "
              f"(median of {rounds} rounds; min {r['ratio_min']:.2f}, max {r['ratio_max']:.2f}). Medians: forward "
              f"{m['forward_s']*1e3:.0f} ms, split {m['distill_s']*1e3:.0f} ms = f_l {m['f_l_s']*1e3:.0f} + noise "
              f"{m['noise_s']*1e3:.0f} + {iters} steps {m['steps_s']*1e3:.0f} ms, of which the head's forward+backward "
              f"{m['head_fwd_bwd_s']*1e3:.0f} ms. Recomputing f_l each step: {r['recompute_fl_in_forward_passes']:.0f} forward passes.",
              flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
