"""The container every loader returns: uint8 images with their labels, class names, data-set indices and order."""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from ..errors import check
from ..fields import DEFAULT_DATA_ENV

SPLITS = ("train", "test")
ORDERS = ("balanced", "file")
"""The orders a data set can be read in: ``balanced`` (the default: a split stored sorted by class, as the
CIFAR-10 test set of the JPEG copy is, is read round-robin over the classes, so that the first N images are
class-balanced; a split not stored sorted keeps its order) and ``file`` (always the source's own order, for
comparisons with tools that take "the first N" of the files as they are)."""
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})


def default_data_dir() -> Path:
    """The data folder used when none is given: ``$NONROBUST_DATA``, else ``~/.cache/nonrobust/data``."""
    env = os.environ.get(DEFAULT_DATA_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "nonrobust" / "data"


# --------------------------------------------------------------------------- data set


@dataclass(eq=False)
class ImageDataset:
    """A labelled image set held in memory as uint8.

    Attributes:
        name: ``"cifar10"``, ``"folder:/abs/path"``, ``"npz:/abs/path.npz"``, ...
        split: ``"train"`` or ``"test"``.
        images: uint8 ``[N, C, H, W]`` (``C`` 1 or 3), on the CPU.
        labels: int64 ``[N]``, each in ``[0, num_classes)``.
        classes: class names; ``len(classes) == num_classes``.
        provenance: where the images come from, when that matters for the numbers measured on
            them (e.g. a re-encoded copy rather than the official files); ``None`` when nothing is known.
        indices: int64 ``[N]``: each image's position in its source's own file order for this split
            (default ``0 … N−1``), so that results join with other tools whatever order is used here.
        order: ``balanced`` (a split stored sorted by class is read round-robin over the classes, so the
            first N images are class-balanced) or ``file`` (the source's own order); see :data:`ORDERS`.

    Construction checks all of the above and raises :class:`UserError` when a
    check fails (integer labels of another dtype are converted to int64).
    """

    name: str
    split: str
    images: torch.Tensor = field(repr=False)
    labels: torch.Tensor = field(repr=False)
    classes: list[str] = field(repr=False)
    provenance: str | None = field(default=None, repr=False)
    indices: torch.Tensor | None = field(default=None, repr=False)
    order: str = "file"

    def __post_init__(self) -> None:
        what = f"{self.name} ({self.split})"
        x, y = self.images, self.labels
        if self.indices is None:
            self.indices = torch.arange(len(y) if isinstance(y, torch.Tensor) else 0, device="cpu")  # CPU by design, as the images
        check(self.order in ORDERS, f"{what}: order must be one of {', '.join(ORDERS)}, got {self.order!r}")
        check(isinstance(x, torch.Tensor) and x.dtype == torch.uint8,
              f"{what}: images must be a uint8 tensor (0..255), got {getattr(x, 'dtype', type(x).__name__)}")
        check(x.dim() == 4 and x.shape[1] in (1, 3), f"{what}: images must be [N, C, H, W] with C 1 or 3, got shape {tuple(x.shape)}")
        integer = isinstance(y, torch.Tensor) and not y.is_floating_point() and not y.is_complex() and y.dtype != torch.bool
        check(integer, f"{what}: labels must be an integer tensor, got {getattr(y, 'dtype', type(y).__name__)}")
        check(y.dim() == 1, f"{what}: labels must be one-dimensional [N], got shape {tuple(y.shape)}")
        check(len(x) == len(y), f"{what}: {len(y)} labels for {len(x)} images; the data is truncated or inconsistent, re-create or re-download it")
        check(len(x) > 0, f"{what}: the data set is empty; check the path and the split")
        check(len(self.classes) > 0, f"{what}: no class names given")
        lo, hi = int(y.min()), int(y.max())
        check(lo >= 0, f"{what}: negative label {lo}; labels must be 0..{len(self.classes) - 1}")
        check(hi < len(self.classes), f"{what}: label {hi} out of range for {len(self.classes)} classes; labels must be 0..{len(self.classes) - 1}")
        check(tuple(self.indices.shape) == (len(y),) and not self.indices.is_floating_point(),
              f"{what}: indices must be {len(y)} integers, got shape {tuple(self.indices.shape)}")
        self.labels = y.to(torch.int64)
        self.indices = self.indices.to(torch.int64)
        self.classes = [str(c) for c in self.classes]

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"ImageDataset(name={self.name!r}, split={self.split!r}, n={len(self)}, input_shape={self.input_shape}, num_classes={self.num_classes})"

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(classes)``)."""
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def first(self, n: int | None) -> ImageDataset:
        """The first ``n`` images (copied, so the full set can be freed).

        ``n=None`` returns ``self``; ``n`` larger than the set warns and returns
        all of it; ``n < 1`` raises :class:`UserError`.
        """
        if n is None:
            return self
        check(int(n) >= 1, f"n must be at least 1, got {n}")
        if n >= len(self):
            if n > len(self):
                warnings.warn(f"{self.name} ({self.split}) has only {len(self)} images; using all of them instead of {n}", stacklevel=2)
            return self
        return self.rows(0, n)

    def rows(self, start: int, stop: int) -> ImageDataset:
        """Images ``start … stop−1`` (copied) with their labels and indices."""
        keep = slice(int(start), int(stop))
        assert self.indices is not None  # set by __post_init__
        return dataclasses.replace(self, images=self.images[keep].clone(), labels=self.labels[keep].clone(),
                                   indices=self.indices[keep].clone(), classes=list(self.classes))

    def batches(
        self,
        batch_size: int,
        device: str | torch.device | None = None,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        start: int = 0,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)`` batches: x float32 ``[B, C, H, W]`` in ``[0, 1]``, y int64 ``[B]``, both on ``device``.

        Only one batch at a time is converted to float, so memory does not grow
        with ``N``. ``shuffle`` draws one permutation from ``generator`` (the
        global RNG when ``None``). ``start`` skips the first ``start`` images
        of the (possibly shuffled) order, to resume a run: with the same seed,
        ``batches(b, start=k * b)`` yields exactly the batches ``k, k+1, ...``
        of ``batches(b)`` (nothing once ``start >= len(self)``). The last batch
        may be smaller than ``batch_size``.
        """
        check(int(batch_size) >= 1, f"batch size must be at least 1, got {batch_size}")
        check(int(start) >= 0, f"start must be 0 or more images, got {start}")
        device = torch.device("cpu") if device is None else torch.device(device)
        order: torch.Tensor | None = None
        if shuffle:
            gen_device = generator.device if generator is not None else torch.device("cpu")
            order = torch.randperm(len(self), generator=generator, device=gen_device).cpu()
        for lo in range(int(start), len(self), int(batch_size)):
            hi = min(lo + int(batch_size), len(self))
            if order is None:
                xb, yb = self.images[lo:hi], self.labels[lo:hi]
            else:
                xb, yb = self.images[order[lo:hi]], self.labels[order[lo:hi]]
            yield _to_float(xb, device), yb.to(device)

    def tensors(self, device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole set as ``(x, y)``: x float32 ``[N, C, H, W]`` in ``[0, 1]``, y int64 ``[N]``, on ``device``."""
        device = torch.device("cpu") if device is None else torch.device(device)
        return _to_float(self.images, device), self.labels.to(device)


def _to_float(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1] on ``device`` (moved as uint8, converted there)."""
    return images.to(device).to(torch.float32).div_(255.0)


def _dataset_from_arrays(name: str, split: str, x: np.ndarray, y: np.ndarray, classes: Sequence[str], source: object,
                         provenance: str | None = None, indices: torch.Tensor | None = None, order: str = "file") -> ImageDataset:
    """Build an :class:`ImageDataset` from uint8 NCHW (or NHWC) images and labels read from ``source``."""
    x, y = np.asarray(x), np.asarray(y)
    check(x.dtype == np.uint8, f"{source}: images must be uint8 (0..255), got {x.dtype}; convert with (x * 255).round().astype(np.uint8)")
    if x.ndim == 4 and x.shape[1] not in (1, 3) and x.shape[3] in (1, 3):
        x = x.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    check(x.ndim == 4 and x.shape[1] in (1, 3), f"{source}: images must be N×C×H×W or N×H×W×C with C 1 or 3, got shape {x.shape}")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    check(np.issubdtype(y.dtype, np.integer), f"{source}: labels must be integers, got {y.dtype}")
    check(y.ndim == 1, f"{source}: labels must be a vector of N integers, got shape {y.shape}")
    images = torch.from_numpy(np.ascontiguousarray(x))
    return ImageDataset(name, split, images, torch.from_numpy(y.astype(np.int64, copy=False)), list(classes), provenance, indices, order)


