"""Training throughput (images per second) of nonrobust's own training loop, for README's run-time table.

    python benchmarks/bench_training.py [--device cuda] [--archs vgg16,wrn28_10] [--images 2560] [--quick] [--out FILE.json]
    python benchmarks/bench_training.py --archs "wrn28_10:depth=16:widen=2,wrn28_10:depth=16:widen=4" --methods fast --amps none
    python benchmarks/bench_training.py --archs small_cnn --methods standard,fast,trades,mart --amps none

An architecture is a registered name, optionally with options (``NAME:KEY=VALUE:KEY=VALUE``).
For each architecture, method (``--methods``, keys of ``METHODS``: standard training, fast AT
(FGSM from a random start), PGD-10 AT, TRADES-10, MART-10) and precision (``--amps``: fp32, bf16
autocast), all channels-last, one epoch of :func:`nonrobust.training.train` on ``--images``
random 32×32 images (batch 128) is run after a one-batch warm-up epoch, and the loop's own
``images_per_second`` (the training images over the epoch's training time, evaluation excluded) is
recorded. ``--time-limit`` stops before a configuration that would start after it, keeping what
was measured.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from nonrobust.data import ImageDataset
from nonrobust.foreign import parse_arch_options
from nonrobust.runtime import environment
from nonrobust.training import make_config, train

METHODS = {"standard": ("standard", {"method": "standard"}), "fast": ("fast AT", {"method": "fast"}),
           "pgd": ("PGD-10 AT", {"method": "pgd", "steps": 10}), "trades": ("TRADES-10", {"method": "trades", "steps": 10}),
           "mart": ("MART-10", {"method": "mart", "steps": 10})}
"""``--methods`` keys: (label, training settings)."""


def parse_arch(text: str) -> tuple[str, dict[str, Any]]:
    """``wrn28_10:depth=16:widen=2`` as ``("wrn28_10", {"depth": 16, "widen": 2})`` (values read as ``--arch-option`` reads them)."""
    name, _, options = text.partition(":")
    return name, parse_arch_options(options.replace(":", ","))


def synthetic(n: int, side: int = 32) -> ImageDataset:
    g = torch.Generator(device="cpu").manual_seed(0)
    return ImageDataset("synthetic", "train", torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=g, device="cpu"),
                        torch.arange(n, device="cpu") % 10, [str(i) for i in range(10)])


def measure(arch: str, method: str, amp: str, images: int, batch: int, device: str) -> dict:
    name, options = parse_arch(arch)
    settings = dict(arch=name, arch_options=options, data="synthetic", epochs=1, batch_size=batch, lr=0.05, schedule="constant", eval_n=8,
                    eval_pgd_steps=1, device=device, amp=amp, channels_last=True, **METHODS[method][1])
    held_out = synthetic(8)
    with tempfile.TemporaryDirectory() as tmp:
        train(make_config(**settings), Path(tmp) / "warm", progress=False, dataset=synthetic(batch), eval_dataset=held_out)
        summary = train(make_config(**settings), Path(tmp) / "run", progress=False, dataset=synthetic(images), eval_dataset=held_out)
    last = summary["last"]
    return {"arch": arch, "method": METHODS[method][0], "amp": amp, "batch": batch, "images": last["train_images"], "seconds": last["seconds"],
            "images_per_second": last["images_per_second"]}


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--archs", default="vgg16,wrn28_10", help="comma-separated NAME or NAME:KEY=VALUE:...")
    ap.add_argument("--methods", default="fast,pgd", help=f"comma-separated, of {', '.join(METHODS)}")
    ap.add_argument("--amps", default="none,bf16", help="comma-separated, of none and bf16")
    ap.add_argument("--images", type=int, default=2560, help="training images timed per configuration")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--time-limit", type=float, default=float("inf"), help="seconds; no configuration starts after it")
    ap.add_argument("--quick", action="store_true", help="tiny_cnn, 32 images, batch 16 (a smoke test)")
    ap.add_argument("--out")
    args = ap.parse_args()
    unknown = sorted(set(args.methods.split(",")) - set(METHODS)) + sorted(set(args.amps.split(",")) - {"none", "bf16"})
    if unknown:
        ap.error(f"unknown method or amp {unknown[0]!r}: methods are {', '.join(METHODS)}; amps none, bf16")
    archs, images, batch = (["tiny_cnn"], 32, 16) if args.quick else (args.archs.split(","), args.images, args.batch)
    t0 = time.perf_counter()
    rows, skipped = [], []
    for arch in archs:
        for method in args.methods.split(","):
            for amp in args.amps.split(","):
                if time.perf_counter() - t0 > args.time_limit:
                    skipped.append(f"{arch} {METHODS[method][0]} {amp}")
                    continue
                r = measure(arch, method, amp, images, batch, args.device)
                rows.append(r)
                print(f"{arch:<9} {r['method']:<10} {'bf16' if amp == 'bf16' else 'fp32'}: {r['images_per_second']:8.1f} img/s "
                      f"({r['images']} images in {r['seconds']:.1f} s)", flush=True)
    result = {"environment": environment(torch.device(args.device)), "rows": rows, "skipped_for_time": skipped}
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
