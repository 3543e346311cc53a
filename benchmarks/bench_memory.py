"""Peak memory of the streamed commands on 1,000 and 10,000 images (does it grow with the data set?).

    python benchmarks/bench_memory.py [--quick] [--device cpu|cuda] [--out benchmarks/results/bench_memory.json]

Each measurement is a fresh process: the data set (random uint8 CIFAR-sized images) is built,
one warm-up run on 256 images fills the allocator's caches, then the peak (Linux VmHWM) is reset
through ``/proc/self/clear_refs`` and the streamed run is measured:

* ``split``: :func:`nonrobust.streams.split_dataset`, ``paper`` protocol, 200 steps, batch 128;
* ``attack``: :func:`nonrobust.streams.attack_to_file`, PGD-1, batch 256.

Both write their output batch by batch into a file, so their peak should not grow with N
beyond the data set itself (uint8, held in memory) and allocator noise.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CODE = """
import os, tempfile, torch
import numpy as np
from nonrobust import models
from nonrobust.attacks import PGD
from nonrobust.bottleneck import IBConfig
from nonrobust.streams import split_dataset
from nonrobust.data import ImageDataset
from nonrobust.streams import attack_to_file
from nonrobust.split import split_model

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024

torch.set_num_threads(1)
device = torch.device({device!r})
g = np.random.default_rng(0)
def dataset(n):
    return ImageDataset("bench", "test", torch.from_numpy(g.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)),
                        torch.from_numpy(g.integers(0, 10, n)).long(), [str(i) for i in range(10)])
model = models.build("small_cnn").eval().to(device)
split = split_model(model, "features.23")
def run(ds, path):
    if {kind!r} == "split":
        split_dataset(split, ds, IBConfig(), path, batch_size=128, device=device, progress=False)
    else:
        attack_to_file(model, ds, PGD(steps=1), path, batch_size=256, device=device, progress=False)
ds = dataset({n})
with tempfile.TemporaryDirectory() as d:
    run(dataset(256), os.path.join(d, "warm.safetensors"))
    before = status("VmRSS")
    open("/proc/self/clear_refs", "w").write("5")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    run(ds, os.path.join(d, "out.safetensors"))
    gpu = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    print(before, status("VmHWM"), ds.images.numel() / 2**20, os.path.getsize(os.path.join(d, "out.safetensors")) / 2**20, gpu)
"""


def measure(kind: str, n: int, device: str = "cpu") -> dict:
    out = subprocess.run([sys.executable, "-c", CODE.format(kind=kind, n=n, device=device)], capture_output=True, text=True,
                         check=True).stdout.split()
    before, peak, data, file, gpu = map(float, out)
    return {"command": kind, "n": n, "device": device, "rss_before_mib": round(before), "peak_rss_mib": round(peak),
            "growth_mib": round(peak - before), "dataset_uint8_mib": round(data, 1), "output_file_mib": round(file, 1),
            "gpu_peak_allocated_mib": round(gpu, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--quick", action="store_true", help="300 and 1,000 images")
    ap.add_argument("--sizes", type=int, nargs="+", help="numbers of images (default 1000 10000; --quick 300 1000)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the GPU peak is torch.cuda.max_memory_allocated)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = []
    for kind in ("split", "attack"):
        for n in args.sizes or ((300, 1000) if args.quick else (1000, 10000)):
            r = measure(kind, n, args.device)
            print(f"{kind} on {n} images: RSS {r['rss_before_mib']} MiB before, peak {r['peak_rss_mib']} MiB (+{r['growth_mib']}); "
                  f"data {r['dataset_uint8_mib']} MiB, output file {r['output_file_mib']} MiB", flush=True)
            rows.append(r)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
