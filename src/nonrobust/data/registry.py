"""The registry of named data sets: data, each a name mapped to its reader, shape, official downloads and statistics."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from .formats import _load_bundled, _load_cifar, _load_svhn, _load_tiny_imagenet

# --------------------------------------------------------------------------- registry


class RemoteFile(NamedTuple):
    """One file of an official release: where to get it and its MD5 checksum."""

    url: str
    filename: str
    md5: str

    @property
    def is_archive(self) -> bool:
        """Archives are saved in the data folder and extracted there (they hold the data set's folder)."""
        return self.filename.endswith((".tar.gz", ".tgz", ".tar", ".zip"))


Loader = Callable[[Path, str], "tuple[np.ndarray, np.ndarray, list[str]] | tuple[np.ndarray, np.ndarray, list[str], str | None]"]


@dataclass(frozen=True)
class DatasetInfo:
    """A registry entry: how to fetch and read one data set, and facts models need.

    Attributes:
        name: registry key.
        num_classes: number of classes.
        input_shape: ``(C, H, W)`` of the released images.
        folder: sub-folder of the data folder holding the release.
        loader: ``loader(root, split) -> (images, labels, classes[, provenance])`` with
            ``root = data_dir / folder`` and ``split`` ``"train"``/``"test"``;
            images uint8 ``N×C×H×W`` (``N×H×W×C`` is recognised too), labels
            integers ``[N]``. Raises :class:`FileNotFoundError` for a missing
            file and :class:`UserError` for a corrupt one.
        files: the official downloads.
        required: files (relative to ``root``) whose presence means the data set is prepared.
        flip: whether a horizontal flip is a label-preserving augmentation.
        mean, std: per-channel statistics of the training images in ``[0, 1]``
            (for a model's input normalisation).
        notes: provenance and caveats, one line.
        bundled: shipped inside the package (``nonrobust/assets``); ``folder`` is then
            ignored and nothing needs preparing.
    """

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    folder: str
    loader: Loader = field(repr=False)
    files: tuple[RemoteFile, ...]
    required: tuple[str, ...]
    flip: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    notes: str = ""
    bundled: bool = False



CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
"""CIFAR-10's training-set per-channel mean and standard deviation (pixels in [0,1]): the one home of these numbers
(the data sets' registry and ``--normalize cifar10`` read them here)."""
_CIFAR10_BATCHES: dict[str, tuple[str, ...]] = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
_CIFAR100_BATCHES: dict[str, tuple[str, ...]] = {"train": ("train",), "test": ("test",)}

DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            name="cifar10",
            num_classes=10,
            input_shape=(3, 32, 32),
            folder="cifar-10-batches-py",
            loader=functools.partial(_load_cifar, batches=_CIFAR10_BATCHES, label_key="labels", meta="batches.meta", names_key="label_names"),
            files=(RemoteFile("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),),
            required=(*_CIFAR10_BATCHES["train"], *_CIFAR10_BATCHES["test"], "batches.meta"),
            flip=True,
            mean=CIFAR10_MEAN,
            std=CIFAR10_STD,
            notes="CIFAR-10 (Krizhevsky 2009), python release: 50,000 train / 10,000 test 32x32 colour images, 10 classes.",
        ),
        DatasetInfo(
            name="cifar100",
            num_classes=100,
            input_shape=(3, 32, 32),
            folder="cifar-100-python",
            loader=functools.partial(_load_cifar, batches=_CIFAR100_BATCHES, label_key="fine_labels", meta="meta", names_key="fine_label_names"),
            files=(RemoteFile("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),),
            required=("train", "test", "meta"),
            flip=True,
            mean=(0.5071, 0.4865, 0.4409),
            std=(0.2673, 0.2564, 0.2762),
            notes="CIFAR-100 (Krizhevsky 2009), python release: 50,000 train / 10,000 test 32x32 colour images; the 100 fine labels are used.",
        ),
        DatasetInfo(
            name="svhn",
            num_classes=10,
            input_shape=(3, 32, 32),
            folder="svhn",
            loader=_load_svhn,
            files=(
                RemoteFile("http://ufldl.stanford.edu/housenumbers/train_32x32.mat", "train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"),
                RemoteFile("http://ufldl.stanford.edu/housenumbers/test_32x32.mat", "test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3"),
            ),
            required=("train_32x32.mat", "test_32x32.mat"),
            flip=False,
            mean=(0.4377, 0.4438, 0.4728),
            std=(0.1980, 0.2010, 0.1970),
            notes="SVHN cropped digits (Netzer et al. 2011): 73,257 train / 26,032 test 32x32 images, label 10 read as digit 0; 'extra' is not used; "
                  "no flips (mirrored digits are other digits).",
        ),
        DatasetInfo(
            name="tiny-imagenet",
            num_classes=200,
            input_shape=(3, 64, 64),
            folder="tiny-imagenet-200",
            loader=_load_tiny_imagenet,
            files=(RemoteFile("http://cs231n.stanford.edu/tiny-imagenet-200.zip", "tiny-imagenet-200.zip", "90528d7ca1a48142e341f4ae8d9c1d5d"),),
            required=("wnids.txt", "train", "val/val_annotations.txt", "val/images"),
            flip=True,
            mean=(0.4802, 0.4481, 0.3975),
            std=(0.2770, 0.2691, 0.2821),
            notes="Tiny-ImageNet-200 (CS231n): 100,000 train / 10,000 val 64x64 images, 200 classes; split 'test' reads the labelled val set (the "
                  "official test set has no labels); JPEG decoding takes a while for train.",
        ),
        DatasetInfo(
            name="cifar10-slice",
            num_classes=10,
            input_shape=(3, 32, 32),
            folder="",
            loader=lambda root, split: _load_bundled(root / "cifar10-test-1000.safetensors", split),
            files=(),
            required=(),
            flip=True,
            mean=CIFAR10_MEAN,
            std=CIFAR10_STD,
            notes="1,000 CIFAR-10 test images shipped with the package (100 per class, from the JPEG-re-encoded copy; "
                  "scripts/make_cifar10_slice.py); test split only; for demos without a download.",
            bundled=True,
        ),
    )
}

DATA_CHOICES_HELP = (
    f"{', '.join(k for k, v in DATASETS.items() if not v.bundled)} (official release under --data-dir; fetch with "
    f"`nonrobust data prepare NAME`), {', '.join(k for k, v in DATASETS.items() if v.bundled)} (shipped with the package), "
    "folder:PATH (one sub-folder of images per class: the test split; or inside train/ and test/), "
    "or npz:PATH (uint8 x_train, y_train, x_test, y_test arrays)"
)


