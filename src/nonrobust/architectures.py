"""Image classifiers as plain ``nn.Module``s, each with its input normalisation inside.

Every model takes images in ``[0, 1]`` of shape ``[N, C, H, W]`` and returns
logits ``[N, num_classes]``. Its first submodule is ``normalize``, a
:class:`Normalize` whose mean and std are buffers, so they travel with the
weights in every checkpoint and no caller ever normalises by hand.

All heads use global average pooling, so every model accepts any image size
large enough for its poolings (32 px and up; 8 px and up for ``tiny_cnn``),
and any channel count given as ``in_channels``. Forward passes contain no
data-dependent Python control flow: ``torch.fx.symbolic_trace`` works on every
model, which is how the layer split ``f = f_l+ ∘ f_l`` is made elsewhere.
ReLUs are ``nn.ReLU`` modules and never in-place, so hooks that keep a layer's
output (e.g. a BatchNorm's, just before its ReLU) see the value they expect.

The factories (``vgg16``, ``wrn28_10``, ``preact_resnet18``, ``small_cnn``,
``tiny_cnn``) all take ``(num_classes, in_channels=3, mean=None, std=None)``
plus keyword-only options; :mod:`nonrobust.models` registers them by name.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.fx
from torch import Tensor, nn

from .errors import UserError, check

__all__ = [
    "DEFAULT_MEAN",
    "DEFAULT_STD",
    "Normalize",
    "PlainCNN",
    "PreActBlock",
    "WideResNet",
    "PreActResNet",
    "vgg16",
    "wrn28_10",
    "preact_resnet18",
    "small_cnn",
    "tiny_cnn",
]

DEFAULT_MEAN = 0.5
"""Default per-channel mean: the reference code's ``(x - 0.5) / 0.25``."""
DEFAULT_STD = 0.25
"""Default per-channel std: the reference code's ``(x - 0.5) / 0.25``."""

M = "M"
"""A 2×2 max-pool (stride 2) in a :class:`PlainCNN` layout."""

VGG16_LAYOUT: tuple[int | str, ...] = (64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512, M)


# --------------------------------------------------------------------------- checks


def _positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _per_channel(name: str, value: float | Sequence[float] | None, default: float, channels: int) -> list[float]:
    """``value`` as a list of ``channels`` finite floats (a single number is repeated)."""
    if value is None:
        value = default
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [float(value)] * channels
    try:
        values = [float(v) for v in value]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a number or a list of {channels} numbers, got {value!r}") from None
    check(len(values) == channels, f"{name} has {len(values)} values but the model has {channels} input channel(s): give one value per channel")
    check(all(math.isfinite(v) for v in values), f"{name} must be finite, got {values}")
    return values


def _check_input(x: Tensor, channels: int) -> Tensor:
    """Return ``x`` unchanged if it is a batch ``[N, channels, H, W]``; raise :class:`UserError` otherwise."""
    if x.dim() != 4 or x.shape[1] != channels:
        raise UserError(
            f"the model expects a batch of {channels}-channel images [N, {channels}, H, W] in [0, 1], got shape {list(x.shape)}: "
            f"convert the images, or use a model built with in_channels={x.shape[1] if x.dim() == 4 else 'C'}"
        )
    return x


# A leaf call in traced graphs: the check survives torch.fx.symbolic_trace and runs on every call.
torch.fx.wrap("_check_input")


def _init_weights(model: nn.Module, linear_std: float | None = None) -> None:
    """Kaiming-normal (fan-out) convs, unit/zero BatchNorms, zero Linear biases (weights N(0, linear_std) if given)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear_std is not None:
                nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=bias)


# --------------------------------------------------------------------------- building blocks


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, with ``mean`` and ``std`` stored as buffers of shape ``[C, 1, 1]``.

    Args:
        mean: one value per channel, or one number for all; default :data:`DEFAULT_MEAN`.
        std: likewise, all > 0; default :data:`DEFAULT_STD`.
        channels: the number of input channels ``C``.

    Input ``[N, C, H, W]`` (images in ``[0, 1]``); any other channel count or
    rank raises :class:`UserError` instead of silently broadcasting.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, mean: float | Sequence[float] | None = None, std: float | Sequence[float] | None = None, channels: int = 3) -> None:
        super().__init__()
        self.channels = _positive_int("in_channels", channels)
        means = _per_channel("mean", mean, DEFAULT_MEAN, channels)
        stds = _per_channel("std", std, DEFAULT_STD, channels)
        check(all(s > 0 for s in stds), f"std must be > 0 for every channel, got {stds}")
        self.register_buffer("mean", torch.tensor(means, dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(stds, dtype=torch.float32).view(-1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        x = _check_input(x, self.channels)
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        if self.mean.is_meta:
            return f"channels={self.channels}"
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


class PlainCNN(nn.Module):
    """A VGG-style stack: ``normalize`` → ``features`` → global average pool → ``classifier``.

    ``layout`` lists the layers of ``features``: an int ``w`` is a
    ``Conv2d(3×3, pad 1) + BatchNorm2d(w) + ReLU`` block (three entries of the
    Sequential), ``"M"`` a 2×2 max-pool. Output: logits ``[N, num_classes]``.
    """

    def __init__(
        self,
        layout: Sequence[int | str],
        num_classes: int,
        in_channels: int = 3,
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
        *,
        conv_bias: bool = False,
        linear_std: float | None = None,
    ) -> None:
        super().__init__()
        _positive_int("num_classes", num_classes)
        self.normalize = Normalize(mean, std, in_channels)
        layers: list[nn.Module] = []
        width = in_channels
        for item in layout:
            if item == M:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [_conv3x3(width, int(item), bias=conv_bias), nn.BatchNorm2d(int(item)), nn.ReLU()]
                width = int(item)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(width, num_classes)
        _init_weights(self, linear_std)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(self.normalize(x))
        logits: Tensor = self.classifier(self.flatten(self.pool(x)))
        return logits


class PreActBlock(nn.Module):
    """Pre-activation residual block (He et al. 2016), the unit of both WideResNet and PreActResNet.

    ``bn1 → relu1 → conv1(stride) → bn2 → relu2 → [dropout] → conv2``, plus a
    shortcut: the input itself, or — when the shape changes — a 1×1 conv of
    the activated input (``shortcut``), as in the reference WRN and PreActResNet code.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = _conv3x3(in_planes, out_planes, stride)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = _conv3x3(out_planes, out_planes)
        self.shortcut = (
            nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False) if stride != 1 or in_planes != out_planes else None
        )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.relu1(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)  # structural, fixed at construction
        out = self.conv1(out)
        out = self.conv2(self.dropout(self.relu2(self.bn2(out))))
        return out + shortcut


def _stage(in_planes: int, out_planes: int, blocks: int, stride: int, dropout: float = 0.0) -> nn.Sequential:
    """``blocks`` PreActBlocks; the first one changes width/resolution."""
    return nn.Sequential(*(PreActBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, dropout) for i in range(blocks)))


class WideResNet(nn.Module):
    """WideResNet-depth-widen (Zagoruyko & Komodakis 2016), as in RobustBench and the paper's code.

    ``normalize → conv1 → block1 → block2 → block3 → bn1 → relu → GAP → fc``,
    widths ``16, 16·widen, 32·widen, 64·widen``, ``(depth - 4) / 6`` blocks per group,
    strides 1, 2, 2 (so 8×8 at ``bn1`` for 32 px inputs).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
        *,
        depth: int = 28,
        widen: int = 10,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        _positive_int("num_classes", num_classes)
        _positive_int("depth", depth, minimum=10)
        check((depth - 4) % 6 == 0, f"WideResNet depth must be 6n + 4 (10, 16, 22, 28, 34, ...), got {depth}")
        _positive_int("widen", widen)
        check(
            isinstance(dropout, (int, float)) and not isinstance(dropout, bool) and 0.0 <= dropout < 1.0,
            f"dropout must be a number in [0, 1), got {dropout!r}",
        )
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.normalize = Normalize(mean, std, in_channels)
        self.conv1 = _conv3x3(in_channels, widths[0])
        self.block1 = _stage(widths[0], widths[1], n, 1, dropout)
        self.block2 = _stage(widths[1], widths[2], n, 2, dropout)
        self.block3 = _stage(widths[2], widths[3], n, 2, dropout)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(widths[3], num_classes)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(self.normalize(x))
        out = self.block3(self.block2(self.block1(out)))
        out = self.relu(self.bn1(out))
        logits: Tensor = self.fc(self.flatten(self.pool(out)))
        return logits


class PreActResNet(nn.Module):
    """PreActResNet (He et al. 2016) as used in fast/overfitting adversarial-training work.

    ``normalize → conv1 → layer1..4 → bn → relu → GAP → linear``, widths 64,
    128, 256, 512, strides 1, 2, 2, 2 (4×4 at ``bn`` for 32 px inputs).
    """

    def __init__(
        self,
        blocks: Sequence[int],
        num_classes: int,
        in_channels: int = 3,
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        _positive_int("num_classes", num_classes)
        self.normalize = Normalize(mean, std, in_channels)
        self.conv1 = _conv3x3(in_channels, 64)
        self.layer1 = _stage(64, 64, blocks[0], 1)
        self.layer2 = _stage(64, 128, blocks[1], 2)
        self.layer3 = _stage(128, 256, blocks[2], 2)
        self.layer4 = _stage(256, 512, blocks[3], 2)
        self.bn = nn.BatchNorm2d(512)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.linear = nn.Linear(512, num_classes)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(self.normalize(x))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = self.relu(self.bn(out))
        logits: Tensor = self.linear(self.flatten(self.pool(out)))
        return logits


# --------------------------------------------------------------------------- factories (registered in nonrobust.models)

def vgg16(num_classes: int, in_channels: int = 3, mean: float | Sequence[float] | None = None, std: float | Sequence[float] | None = None) -> PlainCNN:
    """The paper's CIFAR VGG-16 with BatchNorm (13 convs with bias, GAP, one Linear; 14.7M parameters).

    ``features.41`` is the BatchNorm after the 13th conv (512 ch, 2×2 at 32 px).
    """
    return PlainCNN(VGG16_LAYOUT, num_classes, in_channels, mean, std, conv_bias=True, linear_std=0.01)


def wrn28_10(
    num_classes: int,
    in_channels: int = 3,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    *,
    depth: int = 28,
    widen: int = 10,
    dropout: float = 0.0,
) -> WideResNet:
    """WideResNet-28-10 (36.5M parameters); ``depth``/``widen`` give other WRNs (e.g. 10/1 for tests).

    ``dropout`` is applied between the two convs of each block (the paper uses 0.3).
    """
    return WideResNet(num_classes, in_channels, mean, std, depth=depth, widen=widen, dropout=dropout)


def preact_resnet18(
    num_classes: int, in_channels: int = 3, mean: float | Sequence[float] | None = None, std: float | Sequence[float] | None = None
) -> PreActResNet:
    """PreActResNet-18 (11.2M parameters)."""
    return PreActResNet((2, 2, 2, 2), num_classes, in_channels, mean, std)


def small_cnn(
    num_classes: int,
    in_channels: int = 3,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    *,
    width: int = 32,
) -> PlainCNN:
    """A seven-conv VGG-style CNN that trains on a 2-core CPU: widths ``w, M, 2w, 2w, M, 4w, 4w, M, 8w, M, 8w``.

    Only the first conv runs at full resolution, which makes it several times
    faster to train than a ``w, w, M, …`` layout of the same size, and, like the
    paper's VGG-16, its last conv works on a 2×2 map at 32 px, which keeps the
    bottleneck's head cheap. ``width=32`` (default): 1.16M parameters;
    ``features.23`` is the BatchNorm after the last conv (``8·width`` = 256 ch,
    2×2 at 32 px).
    """
    w = _positive_int("width", width)
    return PlainCNN((w, M, 2 * w, 2 * w, M, 4 * w, 4 * w, M, 8 * w, M, 8 * w), num_classes, in_channels, mean, std)


def tiny_cnn(
    num_classes: int, in_channels: int = 3, mean: float | Sequence[float] | None = None, std: float | Sequence[float] | None = None
) -> PlainCNN:
    """Two convs (8 and 16 channels) for fast unit tests; ``features.5`` is the BatchNorm after the second."""
    return PlainCNN((8, M, 16), num_classes, in_channels, mean, std)
