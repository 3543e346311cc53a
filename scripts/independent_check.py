"""Check a shipped model's figures with code that shares nothing with nonrobust but the weights file.

    python scripts/independent_check.py --data-dir DIR [--weights src/nonrobust/assets/cifar10-vgg16-at.safetensors] [--pgd-n 1000]

Everything here is written again from the definitions: the CIFAR-10 reader (the official pickled
batches; a copy whose test labels are stored sorted by class is read round-robin over the classes,
which is the order nonrobust documents for such copies), the networks, and PGD (L∞ 8/255, step
2/255, 20 steps of the sign of the cross-entropy gradient from a uniform random start, projected
and clipped to [0,1]). The network is the one the file's metadata names, built here from its
published definition with the options the metadata gives:

- ``vgg16``: VGG-16-BN, 13 convolutions with BatchNorm and ReLU, max-pools after convolutions 2, 4,
  7, 10 and 13, global average pooling, one linear layer;
- ``small_cnn``: the same kind of stack with widths ``w, M, 2w, 2w, M, 4w, 4w, M, 8w, M, 8w``;
- ``wrn28_10`` (any depth 6n+4 and widen k): the pre-activation WideResNet of Zagoruyko & Komodakis
  (2016) as RobustBench writes it: a 3×3 convolution to 16 channels, three groups of n blocks
  (``BN-ReLU-conv3×3-BN-ReLU-conv3×3`` plus the input, or a 1×1 convolution of the activated input
  where the shape changes) of widths 16k, 32k, 64k and strides 1, 2, 2, a final BN-ReLU, global
  average pooling and one linear layer.

Whether a convolution has a bias is read from the weights, and they are loaded strictly; the input
is normalised by the mean and std stored in the file. It prints clean accuracy on the whole test
set and PGD-20 accuracy (correct both clean and attacked) on the first ``--pgd-n`` images, with the
figures nonrobust recorded beside them.
"""

from __future__ import annotations

import argparse
import json
import pickle
import time
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def small_cnn_layout(width: int) -> list:
    w = width
    return [w, "M", 2 * w, 2 * w, "M", 4 * w, 4 * w, "M", 8 * w, "M", 8 * w]


class Normalised(nn.Module):
    """``(x - mean) / std`` with the file's statistics, then the network."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, 3, 1, 1))
        self.register_buffer("std", torch.ones(1, 3, 1, 1))

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class VGG(Normalised):
    def __init__(self, layout: list, bias: bool, classes: int = 10) -> None:
        super().__init__()
        layers, width = [], 3
        for item in layout:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(width, item, 3, padding=1, bias=bias), nn.BatchNorm2d(item), nn.ReLU()]
                width = item
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.scale(x)).mean((2, 3)))


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.bn1(x))
        out = self.conv2(torch.relu(self.bn2(self.conv1(a))))
        return out + (x if self.shortcut is None else self.shortcut(a))


class WRN(Normalised):
    def __init__(self, depth: int, widen: int, classes: int = 10) -> None:
        super().__init__()
        n, widths = (depth - 4) // 6, [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        for g, stride in enumerate((1, 2, 2), start=1):
            setattr(self, f"block{g}", nn.Sequential(*(Block(widths[g - 1] if i == 0 else widths[g], widths[g], stride if i == 0 else 1)
                                                       for i in range(n))))
        self.bn1, self.fc = nn.BatchNorm2d(widths[3]), nn.Linear(widths[3], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.block3(self.block2(self.block1(self.conv1(self.scale(x)))))
        return self.fc(torch.relu(self.bn1(h)).mean((2, 3)))


def build(meta: dict, state: dict) -> nn.Module:
    """The network the metadata names, with the options it records."""
    arch, options, classes = meta["arch"], meta.get("arch_options", {}), meta["num_classes"]
    if arch == "vgg16":
        return VGG(VGG16, "features.0.bias" in state, classes)
    if arch == "small_cnn":
        return VGG(small_cnn_layout(options.get("width", 32)), "features.0.bias" in state, classes)
    if arch == "wrn28_10":
        return WRN(options.get("depth", 28), options.get("widen", 10), classes)
    raise SystemExit(f"no independent definition of architecture {arch!r} here")


def load(weights: Path) -> tuple[nn.Module, dict]:
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(weights)).items()}
    with safe_open(str(weights), "pt") as fh:
        meta = json.loads(fh.metadata()["nonrobust"])
    model = build(meta, state)
    model.mean.copy_(state.pop("normalize.mean").view(1, 3, 1, 1))
    model.std.copy_(state.pop("normalize.std").view(1, 3, 1, 1))
    state.update(mean=model.mean, std=model.std)
    model.load_state_dict(state, strict=True)
    return model.eval(), meta


def cifar10_test(data_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    with open(data_dir / "cifar-10-batches-py" / "test_batch", "rb") as fh:  # our own prepared copy
        batch = pickle.load(fh, encoding="bytes")
    x = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    y = np.asarray(batch[b"labels"], dtype=np.int64)
    if np.all(np.diff(y) >= 0):  # stored sorted by class: the 1st image of each class, then the 2nd, ...
        rank = np.concatenate([np.arange((y == c).sum()) for c in np.unique(y)])
        order = sorted(range(len(y)), key=lambda i: (rank[i], y[i]))
        x, y = x[order], y[order]
    return torch.from_numpy(x).float() / 255, torch.from_numpy(y)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 20) -> torch.Tensor:
    adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = nn.functional.cross_entropy(model(adv), y)
        (grad,) = torch.autograd.grad(loss, adv)
        adv = torch.min(torch.max(adv.detach() + alpha * grad.sign(), x - eps), x + eps).clamp(0, 1)
    return adv


def _figure(entry: object) -> object:
    """nonrobust's recorded figure, for comparison: its value, images and attack (its provenance stays in the metadata)."""
    return {k: entry[k] for k in ("n", "value", "description") if k in entry} if isinstance(entry, dict) else entry


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--data-dir", required=True, type=Path)
    ap.add_argument("--weights", type=Path, default=Path(__file__).resolve().parents[1] / "src/nonrobust/assets/cifar10-vgg16-at.safetensors")
    ap.add_argument("--pgd-n", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.manual_seed(0)
    model, meta = load(args.weights)
    for p in model.parameters():
        p.requires_grad_(False)
    x, y = cifar10_test(args.data_dir)
    t0 = time.perf_counter()
    with torch.no_grad():
        clean = torch.cat([model(x[i:i + 500]).argmax(1) == y[i:i + 500] for i in range(0, len(y), 500)])
    robust = []
    for i in range(0, args.pgd_n, args.batch):
        xb, yb = x[i:min(i + args.batch, args.pgd_n)], y[i:min(i + args.batch, args.pgd_n)]
        adv = pgd(model, xb, yb)
        with torch.no_grad():
            robust.append(model(adv).argmax(1) == yb)
    robust = torch.cat(robust) & clean[:args.pgd_n]
    recorded = {k: _figure(v) for k, v in meta.get("metrics", {}).items()}
    result = {"clean_accuracy": {"n": len(y), "value": clean.float().mean().item(),
                                 "nonrobust": recorded.get("clean_accuracy")},
              "pgd20_accuracy": {"n": args.pgd_n, "value": robust.float().mean().item(),
                                 "clean_on_these": clean[:args.pgd_n].float().mean().item(), "nonrobust": recorded.get("pgd20_accuracy")},
              "seconds": round(time.perf_counter() - t0, 1), "weights": str(args.weights)}
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
