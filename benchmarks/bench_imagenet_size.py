"""Time and peak memory at ImageNet size: a ResNet-18 (ImageNet layout) on a batch of 32 images of 224×224.

    python benchmarks/bench_imagenet_size.py [--quick] [--out benchmarks/results/bench_imagenet_size.json]

The model is a user's model as nonrobust meets it: an ``nn.Module`` of the standard ImageNet
ResNet-18 layout (7×7 stem of stride 2, max-pool, four stages of two basic blocks, 11.7 M
parameters; defined here, random weights, since torchvision is not installed), normalisation
inside, split at ``layer4.1.bn2`` (512×7×7). Each measurement is a fresh process: one warm-up
run, then the peak resident memory (Linux VmHWM) is reset through ``/proc/self/clear_refs`` and
the step is timed once:

* ``forward``: one forward pass of the batch, no gradients;
* ``split``: :func:`nonrobust.bottleneck.distill`, ``paper`` protocol, 200 Adam steps;
* ``pgd-10``: the registered ``pgd`` attack, L∞ 8/255, 10 steps;
* ``nrf-linf``: the registered ``nrf-linf`` attack (20 steps, the split of each batch included).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CODE = r"""
import json, time, torch
from torch import nn
from nonrobust.attacks import make_attack
from nonrobust.bottleneck import IBConfig, distill
from nonrobust.split import split_model

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024

class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.down = nn.Sequential() if stride == 1 and cin == cout else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
    def forward(self, x):
        return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + self.down(x))

class ResNet18(nn.Module):
    def __init__(self, classes=1000):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        w = (64, 128, 256, 512)
        self.layer1 = nn.Sequential(Block(64, 64, 1), Block(64, 64, 1))
        self.layer2 = nn.Sequential(Block(64, 128, 2), Block(128, 128, 1))
        self.layer3 = nn.Sequential(Block(128, 256, 2), Block(256, 256, 1))
        self.layer4 = nn.Sequential(Block(256, 512, 2), Block(512, 512, 1))
        self.fc = nn.Linear(512, classes)
    def forward(self, x):
        x = self.stem((x - self.mean) / self.std)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

torch.manual_seed(0)
model = ResNet18().eval()
split = split_model(model, "layer4.1.bn2")
g = torch.Generator().manual_seed(0)
x, y = torch.rand({batch}, 3, {side}, {side}, generator=g), torch.randint(0, 1000, ({batch},), generator=g)
kind = "{kind}"
ib = IBConfig(iterations={iterations})
if kind == "forward":
    def step():
        with torch.no_grad():
            model(x)
elif kind == "split":
    step = lambda: distill(split, x, y, ib)
else:
    attack = make_attack("pgd", steps={pgd_steps}) if kind == "pgd-10" else make_attack("nrf-linf", split=split, ib=ib, steps={nrf_steps})
    step = lambda: attack(model, x, y)
step()  # warm-up
open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current resident size
base = status("VmRSS")
t0 = time.perf_counter()
step()
print(json.dumps({{"seconds": time.perf_counter() - t0, "peak_mib": status("VmHWM"), "before_mib": base,
                   "parameters": sum(p.numel() for p in model.parameters()), "z_shape": list(split.features(x[:1]).shape[1:]),
                   "threads": torch.get_num_threads()}}))
"""


def measure(kind: str, settings: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", CODE.format(kind=kind, **settings)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{out.stderr[-2000:]}")
    return {"kind": kind, **json.loads(out.stdout.strip().splitlines()[-1])}


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--quick", action="store_true", help="batch 2 at 64 px, 3 steps (a smoke test)")
    ap.add_argument("--out")
    args = ap.parse_args()
    settings = (dict(batch=2, side=64, iterations=3, pgd_steps=2, nrf_steps=2) if args.quick
                else dict(batch=32, side=224, iterations=200, pgd_steps=10, nrf_steps=20))
    rows = []
    for kind in ("forward", "split", "pgd-10", "nrf-linf"):
        rows.append(measure(kind, settings))
        r = rows[-1]
        print(f"{kind:<9} {r['seconds']:8.2f} s  peak {r['peak_mib']:7.0f} MiB (resident before the step {r['before_mib']:.0f} MiB)  "
              f"= {r['seconds'] / rows[0]['seconds']:.1f} forward passes", flush=True)
    from nonrobust.runtime import environment
    import torch

    result = {"settings": settings, "environment": environment(torch.device("cpu")), "rows": rows}
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
