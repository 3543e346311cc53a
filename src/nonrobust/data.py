"""Image classification data sets: loading, downloading, batching and augmentation.

A data set is named by one of

* a registry key of :data:`DATASETS` (``cifar10``, ``cifar100``, ``svhn``,
  ``tiny-imagenet``), read from its official release format under the data
  folder (``--data-dir``, else ``$NONROBUST_DATA``, else
  ``~/.cache/nonrobust/data``) once :func:`prepare` has fetched it;
* ``folder:PATH``: one sub-folder of images per class (sorted folder names give
  the labels). If ``PATH`` has a ``train`` or ``test`` sub-folder, the split is
  read from ``PATH/train`` or ``PATH/test`` (``PATH/val`` is accepted for
  ``test``); otherwise ``PATH`` itself is the ``test`` split and there is no
  ``train`` split (asking for it is an error that says so; the report then fits
  its population split on the images it does not evaluate);
* ``npz:PATH``: a NumPy ``.npz`` with ``x_train``, ``y_train``, ``x_test``,
  ``y_test`` (uint8 images ``N×H×W`` or ``N×H×W×C`` with ``C`` 1 or 3, integer
  labels) and optionally ``classes`` (class names).

Every loader returns an :class:`ImageDataset` holding uint8 ``[N, C, H, W]``
images on the CPU; :meth:`ImageDataset.batches` turns one batch at a time into
float ``[0, 1]`` tensors for a model. Loading never executes code from a data
file: CIFAR pickles go through a restricted unpickler, ``.npz`` files are read
with ``allow_pickle=False`` and SVHN ``.mat`` files with :func:`scipy.io.loadmat`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.client
import logging
import os
import pickle
import shutil
import socket
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterator, NamedTuple, Sequence, cast

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import UserError, check
from .fields import DATA_DIR_HELP, DEFAULT_DATA_ENV
from .io import assets_dir as _assets_dir, atomic_write

__all__ = [
    "DEFAULT_DATA_ENV",
    "DATA_DIR_HELP",
    "DATA_CHOICES_HELP",
    "DATASETS",
    "DatasetInfo",
    "ImageDataset",
    "RemoteFile",
    "SPLITS",
    "augment",
    "default_data_dir",
    "load_dataset",
    "prepare",
]

log = logging.getLogger(__name__)

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


def _restricted_latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Python 3 writes every bytes object of a protocol-2 pickle as _codecs.encode(str, "latin1").
    if not isinstance(text, str) or encoding.replace("-", "").lower() != "latin1":
        raise pickle.UnpicklingError("_codecs.encode is allowed only for latin-1 encoding of a str")
    return text.encode("latin1")


def _numpy_reconstruct() -> Callable[..., Any]:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return _reconstruct


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that only builds what CIFAR batches contain (dicts, lists, bytes, str, ints, numpy arrays)."""

    _ALLOWED: dict[tuple[str, str], Callable[[], object]] = {
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
        ("_codecs", "encode"): lambda: _restricted_latin1_encode,
    }

    def __init__(self, file: IO[bytes], source: Path) -> None:
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str) -> object:
        make = self._ALLOWED.get((module, name))
        if make is None:
            raise UserError(f"refusing to unpickle {module}.{name} from {self.source}: not a CIFAR batch")
        return make()


def _require(path: Path) -> Path:
    """``path`` if it exists, else :class:`FileNotFoundError` (turned into a UserError naming the fix)."""
    if not path.exists():
        raise FileNotFoundError(str(path))
    return path


def _read_cifar_pickle(path: Path) -> dict[str, object]:
    """Read one CIFAR pickle with str keys, never running code from it."""
    with open(_require(path), "rb") as fh:
        try:
            obj = _CifarUnpickler(fh, path).load()
        except UserError:
            raise
        except Exception as exc:  # truncated/corrupt pickles raise many types
            raise UserError(f"{path}: truncated or corrupt CIFAR file ({type(exc).__name__}: {exc}); delete it and re-run `nonrobust data prepare`") from None
    check(isinstance(obj, dict), f"{path}: not a CIFAR file (expected a dict, got {type(obj).__name__})")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
"""CIFAR-10's training-set per-channel mean and standard deviation (pixels in [0,1]): the one home of these numbers
(the data sets' registry and ``--normalize cifar10`` read them here)."""

JPEG_COPY = ("a JPEG-re-encoded copy of CIFAR-10 (its files name JPEG images), not the official PNG-exact files: "
             "numbers can differ slightly from those on the official data set")
"""The provenance of CIFAR files whose images were re-encoded as JPEG (e.g. by ``shared/data/cifar10_from_jpeg.py``)."""


def _load_cifar(root: Path, split: str, *, batches: dict[str, tuple[str, ...]], label_key: str, meta: str,
                names_key: str) -> tuple[np.ndarray, np.ndarray, list[str], str | None]:
    """CIFAR-10/100 python release: pickled dicts of uint8 rows [N, 3072] (CHW order) and label lists.

    The fourth value is :data:`JPEG_COPY` when every image's file name in the batches ends in ``.jpg``
    (the official files name ``.png`` images), else ``None``."""
    names = _read_cifar_pickle(root / meta).get(names_key)
    check(isinstance(names, list), f"{root / meta}: no {names_key!r} list; not a CIFAR meta file")
    assert isinstance(names, list)
    classes = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]
    xs, ys, jpeg = [], [], []
    for fname in batches[split]:
        path = root / fname
        d = _read_cifar_pickle(path)
        check("data" in d and label_key in d, f"{path}: missing 'data' or {label_key!r}; not a CIFAR batch")
        data = np.asarray(d["data"])
        check(data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3 * 32 * 32, f"{path}: 'data' must be uint8 [N, 3072], got {data.dtype} "
                                                                                          f"{data.shape}; the file is corrupt")
        labels = np.asarray(d[label_key])
        check(len(labels) == len(data), f"{path}: {len(labels)} labels for {len(data)} images; the file is corrupt")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(labels)
        names = d.get("filenames")
        jpeg.append(isinstance(names, list) and bool(names)
                    and all((n.decode("latin1") if isinstance(n, bytes) else str(n)).endswith(".jpg") for n in names))
    return np.concatenate(xs), np.concatenate(ys), classes, JPEG_COPY if all(jpeg) else None


def _load_svhn(root: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """SVHN cropped digits: MATLAB v5 ``X`` H×W×C×N uint8, ``y`` N×1 with 10 meaning digit 0."""
    import scipy.io

    path = _require(root / f"{split}_32x32.mat")
    try:
        mat = scipy.io.loadmat(str(path), variable_names=["X", "y"])
    except Exception as exc:  # scipy raises several types for damaged files
        raise UserError(f"{path}: truncated or corrupt .mat file ({type(exc).__name__}: {exc}); delete it and re-run `nonrobust data prepare svhn`") from None
    check("X" in mat and "y" in mat, f"{path}: no 'X' and 'y' variables; not an SVHN file")
    x, y = mat["X"], np.asarray(mat["y"]).reshape(-1)
    check(x.ndim == 4 and x.shape[2] == 3, f"{path}: 'X' must be H×W×3×N, got shape {x.shape}")
    return x.transpose(3, 2, 0, 1), np.where(y == 10, 0, y), [str(d) for d in range(10)]


def _load_tiny_imagenet(root: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Tiny-ImageNet-200: class order of ``wnids.txt``; ``test`` is the labelled ``val`` split."""
    wnids = _require(root / "wnids.txt").read_text().split()
    check(len(wnids) > 0, f"{root / 'wnids.txt'} is empty")
    index = {w: i for i, w in enumerate(wnids)}
    words: dict[str, str] = {}
    if (root / "words.txt").is_file():
        for line in (root / "words.txt").read_text(encoding="utf-8", errors="replace").splitlines():
            wnid, _, text = line.partition("\t")
            words[wnid] = text.split(",")[0].strip()
    classes = [words.get(w) or w for w in wnids]
    if split == "train":
        per_class = [sorted(_image_files(_require(root / "train" / w / "images"))) for w in wnids]
        paths, labels = _class_major(per_class)
    else:
        ann = _require(root / "val" / "val_annotations.txt")
        paths, labels = [], []
        for lineno, line in enumerate(ann.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split("\t")
            check(len(parts) >= 2 and parts[1] in index, f"{ann}:{lineno}: expected 'filename<TAB>wnid...' with a wnid from wnids.txt, got {line[:80]!r}")
            paths.append(root / "val" / "images" / parts[0])
            labels.append(index[parts[1]])
    return _read_images(paths, source=root, channels=3), np.asarray(labels, dtype=np.int64), classes


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


# --------------------------------------------------------------------------- image files


def _image_files(folder: Path) -> list[Path]:
    """Image files directly inside ``folder`` (not hidden), sorted by name."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file())


def _class_major(per_class: Sequence[Sequence[Path]]) -> tuple[list[Path], list[int]]:
    """Files class by class (the "file order" of a folder of class folders); :func:`load_dataset` reads them
    round-robin over the classes in the ``balanced`` order, so that any prefix is close to class-balanced."""
    paths = [p for files in per_class for p in files]
    labels = [label for label, files in enumerate(per_class) for _ in files]
    return paths, labels


def _class_sorted_order(labels: np.ndarray) -> np.ndarray | None:
    """For labels stored sorted by class (as some copies of CIFAR-10's test set are), the
    round-robin order over classes (1st image of each class, then the 2nd, ...; stable
    within a class); ``None`` when the labels are not sorted, so official files keep
    their own order (the "first N test images" convention)."""
    labels = np.asarray(labels)
    if labels.size < 2 or len(np.unique(labels)) < 2 or not bool(np.all(labels[1:] >= labels[:-1])):
        return None
    rank = np.empty(labels.size, dtype=np.int64)  # position of each image within its class
    starts = np.searchsorted(labels, labels, side="left")
    rank[:] = np.arange(labels.size) - starts
    return np.lexsort((labels, rank))


def _balanced_order(labels: np.ndarray, order: str, name: str, split: str) -> np.ndarray | None:
    """The permutation that the ``balanced`` order applies to a split stored sorted by class (else ``None``)."""
    perm = _class_sorted_order(labels) if order == "balanced" else None
    if perm is not None:
        log.info("%s [%s] is stored sorted by class: reading it round-robin over the classes so that the first N images are "
                 "class-balanced (--order file keeps the files' order)", name, split)
    return perm


def _read_images(paths: Sequence[Path], source: object, image_size: int | None = None, channels: int | None = None) -> np.ndarray:
    """Decode image files into uint8 ``N×C×H×W``.

    ``image_size`` resizes each image to ``image_size×image_size`` (PIL
    bilinear). ``channels=None`` keeps one channel when every image is grey and
    converts all to RGB otherwise; ``channels=3`` always converts to RGB.
    Differing sizes without ``image_size`` raise :class:`UserError` naming the file.
    """
    from PIL import Image, UnidentifiedImageError

    out: np.ndarray | None = None  # filled as RGB; grey images broadcast into all three planes
    any_colour = channels == 3
    for i, path in enumerate(tqdm(paths, desc=f"reading {source}", unit="img", disable=len(paths) < 2000, leave=False)):
        try:
            with Image.open(_require(path)) as img:
                grey = channels != 3 and img.mode in ("1", "L", "LA", "I", "I;16", "F")
                img = img.convert("L" if grey else "RGB")
                if image_size is not None and img.size != (image_size, image_size):
                    img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
                arr = np.asarray(img, dtype=np.uint8)
        except FileNotFoundError:
            raise
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
            raise UserError(f"{path}: not a readable image ({type(exc).__name__}: {exc}); remove or replace it") from None
        if out is None:
            out = np.empty((len(paths), 3, *arr.shape[:2]), dtype=np.uint8)
        elif arr.shape[:2] != out.shape[2:]:
            raise UserError(
                f"{path} is {arr.shape[1]}x{arr.shape[0]} but {paths[0]} is {out.shape[3]}x{out.shape[2]}: "
                "pass --image-size N (image_size=N) to resize all images to N x N"
            )
        any_colour = any_colour or arr.ndim == 3
        out[i] = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    if out is None:
        return np.zeros((0, channels or 3, 1, 1), dtype=np.uint8)
    return out if any_colour else out[:, :1]


def _resize(x: np.ndarray, image_size: int) -> np.ndarray:
    """Resize uint8 ``N×C×H×W`` to ``image_size×image_size`` with PIL bilinear."""
    from PIL import Image

    out = np.empty((len(x), x.shape[1], image_size, image_size), dtype=np.uint8)
    for i, img in enumerate(x):
        for c, plane in enumerate(img):
            out[i, c] = np.asarray(Image.fromarray(plane).resize((image_size, image_size), Image.Resampling.BILINEAR))
    return out


# --------------------------------------------------------------------------- folder: and npz:


def _folder_split_dir(root: Path, split: str) -> Path:
    """Where ``split`` lives in a ``folder:`` data set (see the module docstring)."""
    names = ("train",) if split == "train" else ("test", "val")
    has_splits = any((root / s).is_dir() for s in ("train", "test", "val"))
    if not has_splits:
        check(split != "train", f"folder:{root} has no train/ sub-folder: a folder of class sub-folders is one set of images, read as "
                                f"the test split; for a training split put the images under {root / 'train'} and {root / 'test'}")
        return root
    for s in names:
        if (root / s).is_dir():
            return root / s
    raise UserError(f"folder:{root} has split sub-folders but no {' or '.join(names)}/ for split {split!r}; add {root / names[0]} or use the other split")


def _folder_index(root: Path, split: str) -> tuple[list[Path], list[int], list[str]]:
    """File list, labels and class names of a ``folder:`` split (class by class, names sorted)."""
    check(root.is_dir(), f"folder:{root}: no such folder; give a folder with one sub-folder of images per class")
    data = _folder_split_dir(root, split)
    split_roots = [data] if data == root else [d for d in (root / s for s in ("train", "test", "val")) if d.is_dir()]
    # Class names are the union over splits, so train and test labels agree.
    classes = sorted({p.name for d in split_roots for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")})
    check(len(classes) > 0, f"folder:{data}: no class sub-folders; put the images of each class in their own sub-folder")
    stray = _image_files(data)
    if stray:
        warnings.warn(f"folder:{data}: ignoring {len(stray)} image(s) outside the class sub-folders", stacklevel=3)
    per_class = [_image_files(data / c) if (data / c).is_dir() else [] for c in classes]
    empty = [c for c, files in zip(classes, per_class, strict=True) if not files]
    if empty and len(empty) < len(classes):
        warnings.warn(f"folder:{data}: no images for class(es) {', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}", stacklevel=3)
    paths, labels = _class_major(per_class)
    check(len(paths) > 0, f"folder:{data}: no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))}) in the class sub-folders")
    return paths, labels, classes


def _open_npz(path: Path) -> np.lib.npyio.NpzFile:
    check(path.is_file(), f"npz:{path}: no such file; give a .npz with x_train, y_train, x_test, y_test")
    with open(path, "rb") as fh:
        head = fh.read(6)
    # np.load would return a bare array for a .npy file, and for anything else suggest unpickling it
    check(head != b"\x93NUMPY", f"npz:{path}: not a readable .npz file (it is a single .npy array): save the four arrays together with "
          "np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)")
    check(head.startswith(b"PK"), f"npz:{path}: not a readable .npz file (a .npz is a zip of arrays; this file is not a zip): save the data with "
          "np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)")
    try:
        return cast("np.lib.npyio.NpzFile", np.load(path, allow_pickle=False))  # a zip: always an NpzFile
    except Exception as exc:
        raise UserError(f"npz:{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from None


def _npz_get(npz: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    check(key in npz.files, f"npz:{path}: no {key!r} array (has {', '.join(npz.files) or 'none'}); save it with np.savez(path, x_train=..., "
                            "y_train=..., x_test=..., y_test=...)")
    try:
        return npz[key]
    except Exception as exc:  # truncated members, object arrays
        raise UserError(f"npz:{path}: cannot read {key!r} ({type(exc).__name__}: {exc}); save plain uint8/integer arrays") from None


def _load_npz(path: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``x_SPLIT`` uint8 N×H×W or N×H×W×C, ``y_SPLIT`` labels; classes from ``classes`` or the largest label."""
    with _open_npz(path) as npz:
        x, y = _npz_get(npz, f"x_{split}", path), _npz_get(npz, f"y_{split}", path)
        if "classes" in npz.files:
            classes = [str(c) for c in _npz_get(npz, "classes", path).reshape(-1)]
        else:
            ys = [y] + [_npz_get(npz, f"y_{s}", path) for s in SPLITS if s != split and f"y_{s}" in npz.files]
            top = max((int(a.max()) for a in ys if a.size and np.issubdtype(a.dtype, np.integer)), default=0)
            classes = [str(i) for i in range(top + 1)]
    check(x.ndim in (3, 4), f"npz:{path}: x_{split} must be N×H×W (grey) or N×H×W×C, got shape {x.shape}")
    check(x.ndim == 3 or x.shape[3] in (1, 3), f"npz:{path}: x_{split} must have 1 or 3 channels last (N×H×W×C), got shape {x.shape}")
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    return x, y, classes


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


def _load_bundled(path: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str], str | None]:
    """A data slice shipped as safetensors (``images`` uint8 N×C×H×W, ``labels``; class names and provenance
    (``source``) in the metadata)."""
    from .io import load_tensors

    check(split == "test", f"{path.name} holds test images only: use --split test")
    if not path.is_file():
        raise FileNotFoundError(path)
    t, meta = load_tensors(path)
    return t["images"].cpu().numpy(), t["labels"].cpu().numpy(), list(meta["classes"]), meta.get("source")


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


# --------------------------------------------------------------------------- prepare / download


def _verify_md5(path: Path, md5: str) -> None:
    """Check ``path`` against ``md5``; on a mismatch remove the file and raise :class:`UserError`."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != md5.lower():
        path.unlink(missing_ok=True)
        raise UserError(f"{path}: MD5 {digest.hexdigest()} does not match the official {md5}; the file was incomplete or altered and has been "
                        "removed, fetch it again")


def _download(remote: RemoteFile, dest: Path, name: str, data_dir: Path) -> None:
    """Fetch ``remote`` to ``dest`` atomically, with a progress bar, then check its MD5."""
    extract = f" (or extract it in {data_dir})" if remote.is_archive else ""
    by_hand = f"download {remote.url} by hand to {dest}{extract} and re-run `nonrobust data prepare {name} --data-dir {data_dir}`"
    log.info("downloading %s -> %s", remote.url, dest)
    try:
        with urllib.request.urlopen(remote.url, timeout=60) as resp, atomic_write(dest, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=remote.filename, leave=False) as bar:
                for chunk in iter(lambda: resp.read(1 << 20), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, http.client.HTTPException, socket.timeout, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise UserError(f"could not download {remote.url} ({reason}); {by_hand}") from None
    _verify_md5(dest, remote.md5)


def _extract(archive: Path, into: Path) -> None:
    """Extract a .tar(.gz)/.zip into ``into`` via a temporary folder, refusing paths outside it."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{archive.name}.", dir=into))
    try:
        try:
            if archive.name.endswith(".zip"):
                with zipfile.ZipFile(archive) as zf:
                    zf.extractall(tmp)  # zipfile strips absolute paths and '..'
            else:
                with tarfile.open(archive) as tf:
                    _extract_tar(tf, tmp)
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
            raise UserError(f"{archive}: cannot extract ({type(exc).__name__}: {exc}); delete it and re-run `nonrobust data prepare`") from None
        for item in tmp.iterdir():
            target = into / item.name
            check(not target.exists(), f"{target} already exists; move it away and re-run `nonrobust data prepare`")
            os.replace(item, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _extract_tar(tf: tarfile.TarFile, dest: Path) -> None:
    """Extract only regular files and folders that stay inside ``dest``."""
    if hasattr(tarfile, "data_filter"):
        tf.extractall(dest, filter="data")  # refuses links and paths escaping dest
        return
    members = []
    for m in tf.getmembers():  # Python without extraction filters
        check(m.isfile() or m.isdir(), f"{tf.name!s}: refusing to extract {m.name!r} (not a plain file or folder)")
        check(os.path.realpath(dest / m.name).startswith(os.path.realpath(dest) + os.sep), f"{tf.name!s}: refusing to extract {m.name!r} outside the "
                                                                                             "target folder")
        members.append(m)
    tf.extractall(dest, members=members)


def prepare(name: str, data_dir: str | os.PathLike[str] | None = None, download: bool = True) -> Path:
    """Make a data set ready to load and return the folder that holds it.

    For a registry data set: if every required file is under
    ``data_dir / info.folder`` it is returned as is (downloaded ``.mat`` files
    are MD5-checked). Otherwise each official file is fetched (or taken from
    ``data_dir`` if it was downloaded by hand), MD5-checked, and archives are
    extracted into ``data_dir`` and then deleted. Offline, or with
    ``download=False``, raises :class:`UserError` naming the URL to fetch by
    hand and where to put it. For ``folder:`` and ``npz:`` only checks that
    the data is readable (the splits it has are listed, no images are decoded).
    """
    kind, path = _parse_name(name)
    if kind == "folder":
        assert path is not None
        check(path.is_dir(), f"folder:{path}: no such folder; give a folder with one sub-folder of images per class")
        has_splits = any((path / s).is_dir() for s in ("train", "test", "val"))
        for split in SPLITS if has_splits else ("test",):  # a folder without split sub-folders is only a test split
            _folder_index(path, split)
        return path
    if kind == "npz":
        assert path is not None
        with _open_npz(path) as npz:
            for key in ("x_train", "y_train", "x_test", "y_test"):
                _npz_get(npz, key, path)
        return path
    info = DATASETS[kind]
    if info.bundled:
        return _assets_dir()
    ddir = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    root = _registry_root(info, ddir)
    missing = [f for f in info.required if not (root / f).exists()]
    if not missing:
        for remote in info.files:
            if not remote.is_archive:
                _verify_md5(root / remote.filename, remote.md5)
        return root
    if any(r.is_archive for r in info.files) and root.exists():
        raise UserError(f"{root} exists but lacks {', '.join(missing[:3])} (an interrupted extraction?); delete {root} and re-run `nonrobust data "
                        f"prepare {info.name} --data-dir {ddir}`")
    for remote in info.files:
        dest = ddir / remote.filename if remote.is_archive else root / remote.filename
        if dest.exists():
            _verify_md5(dest, remote.md5)  # fetched by hand or by an earlier run
        elif not download:
            raise UserError(f"{info.name} is not in {root}; download {remote.url} to {dest} and re-run `nonrobust data prepare {info.name} --data-dir {ddir}`")
        else:
            _download(remote, dest, info.name, ddir)
        if remote.is_archive:
            log.info("extracting %s into %s", dest, ddir)
            _extract(dest, ddir)
            dest.unlink()
    still = [f for f in info.required if not (root / f).exists()]
    check(not still, f"{info.name}: after preparing, {root} still lacks {', '.join(still[:3])}; the download is not the expected release")
    return root


# --------------------------------------------------------------------------- augmentation


def augment(x: torch.Tensor, generator: torch.Generator | None = None, pad: int = 4, flip: bool = True) -> torch.Tensor:
    """Random crop with zero padding plus random horizontal flip, per image, in one vectorised step.

    Args:
        x: images ``[B, C, H, W]`` (any dtype, any device).
        generator: source of randomness (drawn on its own device); the global RNG when ``None``.
        pad: zero padding on each side before cropping back to ``H×W``; 0 disables cropping.
        flip: flip each image left-right with probability 1/2.

    Returns:
        A new tensor like ``x`` (same shape, dtype and device); gradients flow to ``x``.
    """
    check(x.dim() == 4, f"augment expects images [B, C, H, W], got shape {tuple(x.shape)}")
    check(int(pad) >= 0, f"pad must be 0 or more pixels, got {pad}")
    b, c, h, w = x.shape
    gen_device = generator.device if generator is not None else x.device
    offsets = torch.randint(0, 2 * pad + 1, (2, b), generator=generator, device=gen_device).to(x.device)
    flips = torch.rand(b, generator=generator, device=gen_device).to(x.device) < 0.5 if flip else torch.zeros(b, dtype=torch.bool, device=x.device)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad)) if pad else x
    rows = offsets[0, :, None] + torch.arange(h, device=x.device)  # [B, H]
    cols = torch.arange(w, device=x.device).expand(b, w)
    cols = offsets[1, :, None] + torch.where(flips[:, None], (w - 1) - cols, cols)  # [B, W]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]
