"""Attack speed and memory, measured in one run (results go to BENCHMARKS.md).

1. PGD-k throughput against its bound: k forward+backward passes (gradient with
   respect to the input, parameters frozen, as in any attack) of the model itself.
2. NRF step cost (surrogate, exact, linf) against a PGD step.

Memory of a streamed attack is measured by bench_memory.py.

Usage: python benchmarks/bench_attacks.py [--quick] [--device cpu|cuda] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import statistics

import timing  # benchmarks/timing.py
import torch

from nonrobust import models
from nonrobust.attacks import NRF, PGD
from nonrobust.runtime import environment, frozen
from nonrobust.split import split_model


DEVICE = torch.device("cpu")  # set by --device in main()


def clock(fn) -> float:
    return timing.clock(fn, DEVICE)


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    return min(clock(fn) for _ in range(repeats))


def fwd_bwd(model, x, y):
    x = x.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(model(x), y, reduction="sum")
    torch.autograd.grad(loss, x)


def bench_pgd(arch: str, batch: int, steps: int, rounds: int) -> dict:
    """Rounds of (bound, PGD) timed back to back; the ratio is taken within each round (the machine's speed drifts)."""
    model = models.build(arch).eval().to(DEVICE)
    x, y = torch.rand(batch, 3, 32, 32, device=DEVICE), torch.randint(0, 10, (batch,), device=DEVICE)
    attack = PGD(eps=8 / 255, steps=steps)

    def bound_run():
        with frozen(model):
            for _ in range(steps):
                fwd_bwd(model, x, y)

    def pgd_run():
        attack(model, x, y, generator=torch.Generator(device=DEVICE).manual_seed(0))

    bound_run(), pgd_run()  # warm-up
    pairs = [(clock(bound_run), clock(pgd_run)) for _ in range(rounds)]
    ratios = [b / p for b, p in pairs]
    bound, pgd = statistics.median(b for b, _ in pairs), statistics.median(p for _, p in pairs)
    return {"arch": arch, "batch": batch, "steps": steps, "rounds": rounds, "bound_s": bound, "pgd_s": pgd,
            "pgd_img_per_s": batch / pgd, "bound_img_per_s": batch / bound, "ratio_throughput": statistics.median(ratios),
            "ratio_min": min(ratios), "ratio_max": max(ratios)}


def bench_nrf(arch: str, batch: int, steps: int, repeats: int) -> dict:
    model = models.build(arch).eval().to(DEVICE)
    split = split_model(model, models.ARCHITECTURES[arch].default_layer)
    x, y = torch.rand(batch, 3, 32, 32, device=DEVICE), torch.randint(0, 10, (batch,), device=DEVICE)
    channels = split.features(x[:1]).shape[1]
    mask = (torch.arange(channels, device=DEVICE) % 2).bool()
    pgd = best_time(lambda: PGD(steps=steps)(model, x, y), repeats) / steps
    out = {"arch": arch, "batch": batch, "pgd_step_s": pgd}
    for form in ("surrogate", "exact", "linf"):
        # early stopping off so every form runs exactly `steps` steps
        attack = NRF(split=split, mask=mask, form=form, steps=steps, eps=8 / 255 if form == "linf" else None, early_stop=False)
        t = best_time(lambda attack=attack: attack(model, x, y), repeats) / steps
        out[f"{form}_step_s"] = t
        out[f"{form}_ratio"] = t / pgd
    return out


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--archs", default="small_cnn,vgg16", help="registered architectures to measure, comma-separated")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    batch = 16 if args.quick else 128
    repeats = 1 if args.quick else 3
    result = {"environment": environment(DEVICE), "pgd": [], "nrf": []}
    for arch in args.archs.split(","):
        r = bench_pgd(arch, batch, 10, 1 if args.quick else 7)
        print(f"PGD-10 {arch}: {r['pgd_img_per_s']:.1f} img/s, bound {r['bound_img_per_s']:.1f} img/s (medians), ratio {r['ratio_throughput']:.3f} "
              f"(median of {r['rounds']} rounds; min {r['ratio_min']:.3f}, max {r['ratio_max']:.3f})", flush=True)
        result["pgd"].append(r)
    for arch in args.archs.split(","):
        r = bench_nrf(arch, batch, 2 if args.quick else 5, repeats)
        print(f"NRF step / PGD step {arch}: surrogate {r['surrogate_ratio']:.2f}, exact {r['exact_ratio']:.2f}, linf {r['linf_ratio']:.2f}", flush=True)
        result["nrf"].append(r)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
