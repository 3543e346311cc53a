"""Resolve a data-set name (registry key, ``folder:PATH``, ``npz:PATH``) to an :class:`ImageDataset`."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError, check
from ..io import assets_dir as _assets_dir
from .dataset import ORDERS, SPLITS, ImageDataset, _dataset_from_arrays, default_data_dir
from .formats import _balanced_order, _folder_index, _load_npz, _read_images, _resize
from .registry import DATASETS, DatasetInfo

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- load


def _parse_name(name: str) -> tuple[str, Path | None]:
    """``("folder", path)``, ``("npz", path)`` or ``(registry_key, None)``; UserError for an unknown name."""
    kind, sep, rest = str(name).partition(":")
    if sep and kind in ("folder", "npz"):
        check(bool(rest.strip()), f"{name!r}: give a path after '{kind}:', e.g. {kind}:/data/my_set")
        return kind, Path(rest).expanduser().resolve()
    key = str(name).lower()
    if key not in DATASETS:
        raise UserError(f"unknown data set {name!r}: use one of {', '.join(DATASETS)}, folder:PATH or npz:PATH")
    return key, None


def _registry_root(info: DatasetInfo, data_dir: Path) -> Path:
    """``data_dir / info.folder``; an existing data dir that already is that folder is accepted too."""
    is_root = data_dir.name == info.folder and data_dir.is_dir() and not (data_dir / info.folder).exists()
    return data_dir if is_root else data_dir / info.folder


def load_dataset(
    name: str,
    split: str = "test",
    data_dir: str | os.PathLike[str] | None = None,
    n: int | None = None,
    image_size: int | None = None,
    order: str = "balanced",
) -> ImageDataset:
    """Load a data set split into memory.

    Args:
        name: a :data:`DATASETS` key, ``folder:PATH`` or ``npz:PATH`` (see the module docstring).
        split: ``"train"`` or ``"test"`` (Tiny-ImageNet's ``test`` is its labelled val set).
        data_dir: data folder for registry data sets (default :func:`default_data_dir`).
        n: keep only the first ``n`` images (``folder:`` decodes only those;
            ``folder:``, Tiny-ImageNet train and any split stored sorted by class
            are ordered round-robin over classes so a prefix is close to
            class-balanced; unsorted files keep their own order).
        image_size: resize every image to ``image_size×image_size`` (PIL
            bilinear); needed for folders whose images differ in size.
        order: one of :data:`ORDERS`: ``balanced`` reads a split stored sorted by class round-robin
            over the classes; ``file`` keeps the source's order. Either way every image keeps its
            position in the source (:attr:`ImageDataset.indices`).

    Returns:
        An :class:`ImageDataset` with uint8 ``[N, C, H, W]`` images and int64 labels.

    Raises:
        UserError: unknown name or split, missing or corrupt files, bad shapes or labels.
    """
    check(split in SPLITS, f"unknown split {split!r}: use 'train' or 'test'")
    check(image_size is None or int(image_size) >= 1, f"image size must be a positive number of pixels, got {image_size}")
    check(n is None or int(n) >= 1, f"n must be at least 1, got {n}")
    check(order in ORDERS, f"unknown order {order!r}: use {' or '.join(ORDERS)}")
    kind, path = _parse_name(name)
    indices = None
    if kind == "folder":
        assert path is not None
        ds_name = source = f"folder:{path}"
        paths, labels, classes = _folder_index(path, split)
        perm = _balanced_order(np.asarray(labels, dtype=np.int64), order, ds_name, split)
        if perm is not None:
            paths, labels, indices = [paths[i] for i in perm], [labels[i] for i in perm], torch.from_numpy(perm)
        x = _read_images(paths[:n], source=source, image_size=image_size)  # decode only what is kept
        y = np.asarray(labels[:n], dtype=np.int64)
        indices = None if indices is None else indices[:n]
        provenance = None
    else:
        if kind == "npz":
            assert path is not None
            ds_name = source = f"npz:{path}"
            x, y, classes = _load_npz(path, split)
            provenance = None
        else:
            info = DATASETS[kind]
            ddir = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
            root = _assets_dir() if info.bundled else _registry_root(info, ddir)
            ds_name, source = info.name, str(root)
            try:
                check(root.is_dir(), f"{info.name}: {root} not found; run `nonrobust data prepare {info.name} --data-dir {ddir}`")
                x, y, classes, *extra = info.loader(root, split)
                provenance = extra[0] if extra else None
            except FileNotFoundError as exc:
                raise UserError(f"{info.name}: {exc.filename or exc} not found; run `nonrobust data prepare {info.name} --data-dir {ddir}`") from None
        perm = _balanced_order(np.asarray(y), order, ds_name, split)
        if perm is not None:
            x, y, indices = x[perm], y[perm], torch.from_numpy(perm)
    ds = _dataset_from_arrays(ds_name, split, x, y, classes, source, provenance, indices, order).first(n)
    if image_size is not None and ds.input_shape[1:] != (image_size, image_size):
        ds = dataclasses.replace(ds, images=torch.from_numpy(_resize(ds.images.cpu().numpy(), int(image_size))))
    log.info("loaded %r", ds)
    return ds


