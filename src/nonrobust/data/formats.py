"""Readers of each on-disk format: CIFAR pickles (through a restricted unpickler), SVHN ``.mat``, Tiny-ImageNet, image folders and ``.npz``."""

from __future__ import annotations

import logging
import pickle
import warnings
from pathlib import Path
from typing import IO, Any, Callable, Sequence, cast

import numpy as np
from tqdm.auto import tqdm

from ..errors import UserError, check
from .dataset import IMAGE_SUFFIXES, SPLITS

log = logging.getLogger(__name__)


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


def _load_bundled(path: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str], str | None]:
    """A data slice shipped as safetensors (``images`` uint8 N×C×H×W, ``labels``; class names and provenance
    (``source``) in the metadata)."""
    from ..io import load_tensors

    check(split == "test", f"{path.name} holds test images only: use --split test")
    if not path.is_file():
        raise FileNotFoundError(path)
    t, meta = load_tensors(path)
    return t["images"].cpu().numpy(), t["labels"].cpu().numpy(), list(meta["classes"]), meta.get("source")


