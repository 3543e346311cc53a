"""The architecture registry: data, each name mapped to its factory, default split layer, input size and notes; and :func:`build`."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from torch import nn

from .. import architectures as arch_lib
from ..errors import UserError

_COMMON_ARGS = ("num_classes", "in_channels", "mean", "std")


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class ArchSpec:
    """A registered architecture.

    Attributes:
        name: registry key.
        factory: ``factory(num_classes, in_channels=3, mean=None, std=None, **options) -> nn.Module``.
        default_layer: module name (``model.named_modules()``) of the default split layer ``l``.
        input_size: native image side in pixels (e.g. 32 for CIFAR).
        notes: channels and spatial shape at ``default_layer`` and where the choice comes from.
        paper: whether the paper (Kim, Lee, Ro 2021) used this architecture.
    """

    name: str
    factory: Callable[..., nn.Module]
    default_layer: str
    input_size: int
    notes: str
    paper: bool

    @property
    def options(self) -> dict[str, Any]:
        """The factory's own keyword options and their defaults (empty if it has none)."""
        params = inspect.signature(self.factory).parameters
        return {k: p.default for k, p in params.items() if k not in _COMMON_ARGS}


ARCHITECTURES: dict[str, ArchSpec] = {
    spec.name: spec
    for spec in (
        ArchSpec(
            "vgg16", arch_lib.vgg16, "features.41", 32,
            "BatchNorm after the 13th conv, before its ReLU: 512 ch, 2x2 at 32 px (index 41, the reference code's VGG split)",
            paper=True,
        ),
        ArchSpec(
            "wrn28_10", arch_lib.wrn28_10, "bn1", 32,
            "final BatchNorm before the last ReLU: 64*widen ch (640), 8x8 at 32 px (the reference code's WRN split)",
            paper=True,
        ),
        ArchSpec(
            "preact_resnet18", arch_lib.preact_resnet18, "bn", 32,
            "final BatchNorm before the last ReLU: 512 ch, 4x4 at 32 px (chosen like the WRN split)",
            paper=False,
        ),
        ArchSpec(
            "small_cnn", arch_lib.small_cnn, "features.23", 32,
            "BatchNorm after the 7th (last) conv, before its ReLU: 8*width ch (256), 2x2 at 32 px; CPU-sized, not from the paper",
            paper=False,
        ),
        ArchSpec(
            "tiny_cnn", arch_lib.tiny_cnn, "features.5", 32,
            "BatchNorm after the 2nd conv, before its ReLU: 16 ch, 16x16 at 32 px; for unit tests only",
            paper=False,
        ),
    )
}


def arch_spec(arch: str) -> ArchSpec:
    """The :class:`ArchSpec` registered as ``arch``; :class:`UserError` listing the names if there is none."""
    if arch not in ARCHITECTURES:
        raise UserError(f"unknown architecture {arch!r}: choose one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch]


@dataclass(frozen=True)
class BuildRecord:
    """How :func:`build` made a model; attached to it as ``model.nonrobust_build`` (read by :func:`make_meta`)."""

    arch: str
    options: dict[str, Any]
    num_classes: int


def build(
    arch: str,
    num_classes: int = 10,
    in_channels: int = 3,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    **options: Any,
) -> nn.Module:
    """A freshly initialised model of a registered architecture, in training mode, on the current default device.

    Args:
        arch: a name in :data:`ARCHITECTURES`.
        num_classes: number of logits.
        in_channels: image channels ``C`` (1 for grey-scale).
        mean, std: per-channel normalisation (one number or ``C`` numbers);
            default 0.5 and 0.25, i.e. ``(x - 0.5) / 0.25``.
        **options: the architecture's own options (``ARCHITECTURES[arch].options``),
            e.g. ``width=32`` for ``small_cnn`` or ``depth=10, widen=1, dropout=0.3`` for ``wrn28_10``.

    Returns:
        A module mapping images ``[N, C, H, W]`` in ``[0, 1]`` to logits ``[N, num_classes]``,
        with ``model.nonrobust_build`` (a :class:`BuildRecord`) set.

    Raises:
        UserError: unknown architecture or option, or an invalid value.
    """
    spec = arch_spec(arch)
    known = spec.options
    unknown = sorted(set(options) - set(known))
    if unknown:
        choices = ", ".join(f"{k}={v!r}" for k, v in known.items()) or "none"
        raise UserError(f"architecture {arch} has no option {unknown[0]!r}: its options are {choices}")
    resolved = {**known, **options}
    model = spec.factory(num_classes, in_channels, mean, std, **resolved)
    model.nonrobust_build = BuildRecord(arch, resolved, num_classes)  # type: ignore[assignment]  # torch types Module.__setattr__'s value as Tensor | Module
    return model

