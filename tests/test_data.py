"""Tests of nonrobust.data: every released format written small into tmp_path and read back."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pickle
import struct
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from nonrobust import data
from nonrobust.data import (
    DATA_CHOICES_HELP,
    DATASETS,
    DEFAULT_DATA_ENV,
    ImageDataset,
    RemoteFile,
    augment,
    default_data_dir,
    load_dataset,
    prepare,
)
from nonrobust.errors import UserError

# --------------------------------------------------------------------------- writers of the real formats


class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` opcodes (SHORT_BINSTRING/BINSTRING), as the released CIFAR files do."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_bytes(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def _dump_py2(path: Path, obj: object) -> None:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    path.write_bytes(buf.getvalue())


def _rng_images(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _write_cifar10(root: Path, per_batch: int = 3, suffix: str = ".png") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """CIFAR-10 python release in genuine Python-2 pickle form; returns the expected (images NCHW, labels)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    _dump_py2(folder / "batches.meta", {b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_vis": 3072, b"num_cases_per_batch": per_batch})
    expected: dict[str, tuple[list, list]] = {"train": ([], []), "test": ([], [])}
    names = [(f"data_batch_{i}", "train") for i in range(1, 6)] + [("test_batch", "test")]
    for seed, (fname, split) in enumerate(names):
        rows = _rng_images(seed, (per_batch, 3072))
        labels = [(seed + k) % 10 for k in range(per_batch)]
        names = [f"x{k}{suffix}".encode() for k in range(per_batch)]
        _dump_py2(folder / fname, {b"batch_label": fname.encode(), b"labels": labels, b"data": rows, b"filenames": names})
        expected[split][0].append(rows.reshape(-1, 3, 32, 32))
        expected[split][1].extend(labels)
    return {s: (np.concatenate(x), np.asarray(y)) for s, (x, y) in expected.items()}


@pytest.fixture
def cifar10_dir(tmp_path: Path) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    return tmp_path, _write_cifar10(tmp_path)


def test_cifar_provenance_tells_a_jpeg_copy_from_the_official_files(tmp_path):
    """The official batches name .png images; a copy re-encoded as JPEG (shared/data's) names .jpg: the report says so."""
    from nonrobust.data import JPEG_COPY

    _write_cifar10(tmp_path / "official")
    _write_cifar10(tmp_path / "jpeg", suffix=".jpg")
    assert load_dataset("cifar10", "test", data_dir=tmp_path / "official").provenance is None
    jpeg = load_dataset("cifar10", "test", data_dir=tmp_path / "jpeg")
    assert jpeg.provenance == JPEG_COPY and jpeg.first(2).provenance == JPEG_COPY  # kept by every derived set
    assert "JPEG" in load_dataset("cifar10-slice", n=4).provenance


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


# --------------------------------------------------------------------------- registry formats


def test_cifar10_python2_pickles_read_exactly(cifar10_dir):
    root, expected = cifar10_dir
    for split, n in (("train", 15), ("test", 3)):
        ds = load_dataset("cifar10", split, data_dir=root)
        assert (ds.name, ds.split, len(ds), ds.input_shape, ds.num_classes) == ("cifar10", split, n, (3, 32, 32), 10)
        assert ds.images.dtype == torch.uint8 and ds.labels.dtype == torch.int64
        assert np.array_equal(ds.images.numpy(), expected[split][0])
        assert np.array_equal(ds.labels.numpy(), expected[split][1])
        assert ds.classes == CIFAR10_CLASSES


def test_cifar10_data_dir_may_be_the_release_folder_itself(cifar10_dir):
    root, expected = cifar10_dir
    ds = load_dataset("cifar10", "test", data_dir=root / "cifar-10-batches-py")
    assert np.array_equal(ds.labels.numpy(), expected["test"][1])


def test_cifar10_from_env_data_dir(cifar10_dir, monkeypatch):
    root, _ = cifar10_dir
    monkeypatch.setenv(DEFAULT_DATA_ENV, str(root))
    assert default_data_dir() == root
    assert len(load_dataset("cifar10")) == 3
    monkeypatch.delenv(DEFAULT_DATA_ENV)
    assert default_data_dir() == Path.home() / ".cache" / "nonrobust" / "data"


def test_cifar100_python3_protocol2_pickles(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    fine = [f"class_{i:02d}" for i in range(100)]
    with open(folder / "meta", "wb") as fh:  # Python 3 protocol 2: bytes become _codecs.encode(str, "latin1")
        pickle.dump({b"fine_label_names": [c.encode() for c in fine], b"coarse_label_names": [b"c"] * 20}, fh, protocol=2)
    expected = {}
    for seed, split in enumerate(("train", "test")):
        rows = _rng_images(10 + seed, (4, 3072))
        fine_labels = [99, 0, 42, 7][: len(rows)]
        with open(folder / split, "wb") as fh:
            pickle.dump({b"data": rows, b"fine_labels": fine_labels, b"coarse_labels": [0] * 4}, fh, protocol=2)
        expected[split] = (rows.reshape(-1, 3, 32, 32), fine_labels)
    for split in ("train", "test"):
        ds = load_dataset("cifar100", split, data_dir=tmp_path)
        assert ds.num_classes == 100 and ds.classes == fine
        assert np.array_equal(ds.images.numpy(), expected[split][0])
        assert ds.labels.tolist() == expected[split][1]


def test_svhn_mat_files(tmp_path):
    folder = tmp_path / "svhn"
    folder.mkdir()
    expected = {}
    for seed, split in enumerate(("train", "test")):
        x = _rng_images(20 + seed, (32, 32, 3, 5))  # H×W×C×N as released
        y = np.array([[10], [1], [9], [10], [5]], dtype=np.uint8)  # N×1, 10 means digit 0
        scipy.io.savemat(folder / f"{split}_32x32.mat", {"X": x, "y": y})
        expected[split] = x
    for split in ("train", "test"):
        ds = load_dataset("svhn", split, data_dir=tmp_path)
        assert ds.input_shape == (3, 32, 32) and len(ds) == 5
        assert ds.labels.tolist() == [0, 1, 9, 0, 5]
        assert ds.classes == [str(d) for d in range(10)]
        for i in range(5):
            assert np.array_equal(ds.images[i].numpy(), expected[split][..., i].transpose(2, 0, 1))
    assert DATASETS["svhn"].flip is False


def _write_tiny_imagenet(root: Path, size: int = 8) -> list[str]:
    folder = root / "tiny-imagenet-200"
    wnids = ["n01443537", "n01629819", "n01641577"]
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (folder / "words.txt").write_text("n01443537\tgoldfish, Carassius auratus\nn01629819\tEuropean fire salamander\nn99999999\tunused\n")
    rng = np.random.default_rng(0)
    for c, w in enumerate(wnids):
        for k in range(2):
            path = folder / "train" / w / "images" / f"{w}_{k}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            if c == 1 and k == 0:  # the release has some greyscale JPEGs
                Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), mode="L").save(path, "JPEG")
            else:
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, "JPEG")
        (folder / "train" / w / f"{w}_boxes.txt").write_text("")
    val = [("val_0.JPEG", wnids[2]), ("val_1.JPEG", wnids[0]), ("val_2.JPEG", wnids[2]), ("val_3.JPEG", wnids[1])]
    for i, (fname, _) in enumerate(val):
        mode_grey = i == 3
        arr = rng.integers(0, 256, (size, size) if mode_grey else (size, size, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / "val" / "images" / fname, "JPEG")
    (folder / "val" / "val_annotations.txt").write_text("".join(f"{f}\t{w}\t0\t1\t7\t7\n" for f, w in val))
    return wnids


def test_tiny_imagenet_layout(tmp_path):
    _write_tiny_imagenet(tmp_path)
    train = load_dataset("tiny-imagenet", "train", data_dir=tmp_path)
    assert train.images.shape == (6, 3, 8, 8)
    assert train.labels.tolist() == [0, 1, 2, 0, 1, 2]  # round-robin over classes
    assert train.classes == ["goldfish", "European fire salamander", "n01641577"]
    test = load_dataset("tiny-imagenet", "test", data_dir=tmp_path)
    assert test.images.shape == (4, 3, 8, 8)  # greyscale val image converted to RGB
    assert test.labels.tolist() == [2, 0, 2, 1]  # from val_annotations.txt, in file order
    small = load_dataset("tiny-imagenet", "test", data_dir=tmp_path, n=2, image_size=16)
    assert small.images.shape == (2, 3, 16, 16) and small.labels.tolist() == [2, 0]


def test_tiny_imagenet_bad_annotation(tmp_path):
    _write_tiny_imagenet(tmp_path)
    ann = tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    ann.write_text("val_0.JPEG\tn00000000\t0\t0\t1\t1\n")
    with pytest.raises(UserError, match="wnid"):
        load_dataset("tiny-imagenet", "test", data_dir=tmp_path)


def test_registry_metadata():
    assert set(DATASETS) == {"cifar10", "cifar100", "svhn", "tiny-imagenet", "cifar10-slice"}
    for key, info in DATASETS.items():
        assert info.name == key
        assert len(info.mean) == len(info.std) == info.input_shape[0] == 3
        assert info.bundled or (info.files and all(len(f.md5) == 32 and f.url.startswith("http") for f in info.files))
        assert info.notes
    assert DATASETS["cifar10"].files[0].md5 == "c58f30108f718f92721af3b95e74349a"
    assert DATASETS["tiny-imagenet"].num_classes == 200 and DATASETS["cifar100"].num_classes == 100
    for form in ("cifar10", "svhn", "tiny-imagenet", "folder:PATH", "npz:PATH"):
        assert form in DATA_CHOICES_HELP


# --------------------------------------------------------------------------- security


class _Evil:
    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch {self.sentinel}",)


def test_malicious_pickle_is_refused(cifar10_dir, monkeypatch):
    root, _ = cifar10_dir
    monkeypatch.chdir(root)
    sentinel = root / "SENTINEL"
    batch = root / "cifar-10-batches-py" / "data_batch_1"
    with open(batch, "wb") as fh:
        pickle.dump({b"data": _Evil(sentinel), b"labels": [0]}, fh, protocol=2)
    with pytest.raises(UserError, match=r"refusing to unpickle (os|posix)\.system from .*data_batch_1: not a CIFAR batch"):
        load_dataset("cifar10", "train", data_dir=root)
    assert not sentinel.exists()


@pytest.mark.parametrize("target", [("builtins", "eval"), ("subprocess", "Popen"), ("numpy", "load")])
def test_unpickler_allows_only_array_building(tmp_path, target):
    path = tmp_path / "batch"
    path.write_bytes(b"\x80\x02c" + f"{target[0]}\n{target[1]}\n".encode() + b")R.")
    with pytest.raises(UserError, match=f"refusing to unpickle {target[0]}.{target[1]}"):
        data.formats._read_cifar_pickle(path)


def test_codecs_encode_only_latin1(tmp_path):
    path = tmp_path / "batch"
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x06\x00\x00\x00base64\x86R.")
    with pytest.raises(UserError, match="corrupt"):
        data.formats._read_cifar_pickle(path)


# --------------------------------------------------------------------------- folder: and npz:


def test_folder_of_pngs_exact(tmp_path):
    rng = np.random.default_rng(1)
    expected = {}
    for cls, count in (("dog", 3), ("cat", 2)):
        for k in range(count):
            arr = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
            _write_png(tmp_path / "set" / cls / f"{k:03d}.png", arr)
            expected[(cls, k)] = arr
    (tmp_path / "set" / "dog" / "notes.txt").write_text("not an image")
    with pytest.raises(UserError, match="no train/ sub-folder.*read as the test split"):  # no split sub-folders: only test
        load_dataset(f"folder:{tmp_path / 'set'}", "train")
    for split in ("test",):
        ds = load_dataset(f"folder:{tmp_path / 'set'}", split)
        assert ds.name == f"folder:{(tmp_path / 'set').resolve()}"
        assert ds.classes == ["cat", "dog"]
        assert ds.labels.tolist() == [0, 1, 0, 1, 1]  # round-robin over sorted classes
        order = [("cat", 0), ("dog", 0), ("cat", 1), ("dog", 1), ("dog", 2)]
        for i, key in enumerate(order):
            assert np.array_equal(ds.images[i].numpy(), expected[key].transpose(2, 0, 1))
    first = load_dataset(f"folder:{tmp_path / 'set'}", n=2)
    assert first.labels.tolist() == [0, 1] and first.num_classes == 2


def test_folder_train_test_subfolders_share_classes(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    _write_png(tmp_path / "train" / "a" / "0.png", grey)
    _write_png(tmp_path / "train" / "b" / "0.png", grey + 100)
    _write_png(tmp_path / "val" / "b" / "0.png", grey + 50)  # val/ serves as the test split
    train = load_dataset(f"folder:{tmp_path}", "train")
    with pytest.warns(UserWarning, match="no images for class"):
        test = load_dataset(f"folder:{tmp_path}", "test")
    assert train.classes == test.classes == ["a", "b"]
    assert test.labels.tolist() == [1]
    assert train.input_shape == (1, 3, 4)  # all-grey folder stays one channel
    assert np.array_equal(test.images[0, 0].numpy(), grey + 50)


def test_folder_mixed_sizes_needs_image_size(tmp_path):
    _write_png(tmp_path / "a" / "0.png", np.zeros((8, 8, 3), np.uint8))
    _write_png(tmp_path / "a" / "1.png", np.zeros((6, 9, 3), np.uint8))
    _write_png(tmp_path / "b" / "0.png", np.full((6, 6), 200, np.uint8))  # grey mixed with colour -> RGB
    with pytest.raises(UserError, match=r"b/0\.png is 6x6 but .*a/0\.png is 8x8: pass --image-size"):
        load_dataset(f"folder:{tmp_path}")
    ds = load_dataset(f"folder:{tmp_path}", image_size=4)
    assert ds.images.shape == (3, 3, 4, 4)
    assert torch.all(ds.images[1] == 200)  # class b's grey image broadcast to RGB


def test_folder_errors(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        load_dataset(f"folder:{tmp_path / 'nope'}")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(UserError, match="no images"):
        load_dataset(f"folder:{tmp_path / 'empty'}")
    (tmp_path / "flat").mkdir()
    _write_png(tmp_path / "flat" / "0.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(UserError, match="no class sub-folders"):
        load_dataset(f"folder:{tmp_path / 'flat'}")
    _write_png(tmp_path / "only_train" / "train" / "a" / "0.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(UserError, match="test"):
        load_dataset(f"folder:{tmp_path / 'only_train'}", "test")
    (tmp_path / "broken" / "a").mkdir(parents=True)
    (tmp_path / "broken" / "a" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(UserError, match="not a readable image"):
        load_dataset(f"folder:{tmp_path / 'broken'}")


def test_npz_grey_and_colour(tmp_path):
    grey_train, grey_test = _rng_images(2, (4, 5, 6)), _rng_images(3, (2, 5, 6))
    np.savez(tmp_path / "grey.npz", x_train=grey_train, y_train=np.array([0, 1, 2, 1]), x_test=grey_test, y_test=np.array([[4], [0]]))
    ds = load_dataset(f"npz:{tmp_path / 'grey.npz'}", "train")
    assert ds.input_shape == (1, 5, 6) and ds.num_classes == 5  # largest label over both splits
    assert np.array_equal(ds.images[:, 0].numpy(), grey_train)
    assert load_dataset(f"npz:{tmp_path / 'grey.npz'}", "test").labels.tolist() == [4, 0]

    colour = _rng_images(4, (3, 5, 6, 3))
    np.savez(tmp_path / "colour.npz", x_train=colour, y_train=np.array([2, 0, 1], np.uint8), x_test=colour[:1], y_test=np.array([2]),
             classes=np.array(["r", "g", "b"]))
    ds = load_dataset(f"npz:{tmp_path / 'colour.npz'}", "train")
    assert ds.input_shape == (3, 5, 6) and ds.classes == ["r", "g", "b"]
    assert np.array_equal(ds.images.numpy(), colour.transpose(0, 3, 1, 2))
    assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == [2, 0, 1]


@pytest.mark.parametrize(
    ("arrays", "word"),
    [
        ({"x_train": np.zeros((2, 4, 4), np.uint8), "y_train": np.zeros(2, int)}, "x_test"),
        ({"x_test": np.zeros((2, 4), np.uint8), "y_test": np.zeros(2, int)}, "N×H×W"),
        ({"x_test": np.zeros((2, 4, 4, 4), np.uint8), "y_test": np.zeros(2, int)}, "channels"),
        ({"x_test": np.zeros((2, 4, 4), np.float32), "y_test": np.zeros(2, int)}, "uint8"),
        ({"x_test": np.zeros((2, 4, 4), np.uint8), "y_test": np.zeros(3, int)}, "3 labels for 2 images"),
        ({"x_test": np.zeros((2, 4, 4), np.uint8), "y_test": np.array([0, -1])}, "negative"),
        ({"x_test": np.zeros((2, 4, 4), np.uint8), "y_test": np.array([0, 5]), "classes": np.array(["a", "b"])}, "out of range"),
        ({"x_test": np.zeros((2, 4, 4), np.uint8), "y_test": np.array([0.0, 1.0])}, "integers"),
        ({"x_test": np.zeros((0, 4, 4), np.uint8), "y_test": np.zeros(0, int)}, "empty"),
    ],
)
def test_npz_errors(tmp_path, arrays, word):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(UserError, match=word):
        load_dataset(f"npz:{tmp_path / 'd.npz'}", "test")


def test_npz_refuses_pickled_objects_and_garbage(tmp_path):
    np.savez(tmp_path / "obj.npz", x_test=np.array([object()], dtype=object), y_test=np.zeros(1, int))
    with pytest.raises(UserError, match="x_test"):
        load_dataset(f"npz:{tmp_path / 'obj.npz'}", "test")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not a readable .npz"):
        load_dataset(f"npz:{tmp_path / 'junk.npz'}")
    with pytest.raises(UserError, match="no such file"):
        load_dataset(f"npz:{tmp_path / 'missing.npz'}")


# --------------------------------------------------------------------------- registry errors


def test_missing_registry_data_says_how_to_prepare(tmp_path, cifar10_dir):
    with pytest.raises(UserError, match=f"nonrobust data prepare svhn --data-dir {tmp_path}"):
        load_dataset("svhn", data_dir=tmp_path)
    root, _ = cifar10_dir
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(UserError, match=r"data_batch_3 not found; run `nonrobust data prepare cifar10"):
        load_dataset("cifar10", "train", data_dir=root)


def test_truncated_and_inconsistent_cifar(cifar10_dir):
    root, _ = cifar10_dir
    batch = root / "cifar-10-batches-py" / "test_batch"
    full = batch.read_bytes()
    batch.write_bytes(full[: len(full) // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_dataset("cifar10", "test", data_dir=root)
    _dump_py2(batch, {b"data": _rng_images(0, (3, 3072)), b"labels": [1, 2]})
    with pytest.raises(UserError, match="2 labels for 3 images"):
        load_dataset("cifar10", "test", data_dir=root)
    _dump_py2(batch, {b"data": _rng_images(0, (2, 3072)), b"labels": [1, 10]})
    with pytest.raises(UserError, match="out of range"):
        load_dataset("cifar10", "test", data_dir=root)
    _dump_py2(batch, {b"data": _rng_images(0, (2, 100)), b"labels": [1, 1]})
    with pytest.raises(UserError, match="3072"):
        load_dataset("cifar10", "test", data_dir=root)


def test_bad_names_and_arguments(cifar10_dir):
    root, _ = cifar10_dir
    with pytest.raises(UserError, match="unknown data set 'imagenet'.*cifar10, cifar100, svhn, tiny-imagenet"):
        load_dataset("imagenet", data_dir=root)
    with pytest.raises(UserError, match="unknown split 'val'"):
        load_dataset("cifar10", "val", data_dir=root)
    with pytest.raises(UserError, match="path after"):
        load_dataset("folder:")
    with pytest.raises(UserError, match="n must be"):
        load_dataset("cifar10", data_dir=root, n=0)


def test_image_dataset_checks_its_fields():
    good = dict(name="t", split="test", images=torch.zeros(2, 3, 4, 4, dtype=torch.uint8), labels=torch.tensor([0, 1], dtype=torch.int32), classes=["a", "b"])
    ds = ImageDataset(**good)
    assert ds.labels.dtype == torch.int64 and len(ds) == 2
    assert "n=2" in repr(ds) and "tensor" not in repr(ds)
    for change, word in (
        ({"images": torch.zeros(2, 3, 4, 4)}, "uint8"),
        ({"images": torch.zeros(2, 2, 4, 4, dtype=torch.uint8)}, "C 1 or 3"),
        ({"labels": torch.tensor([0.0, 1.0])}, "integer"),
        ({"labels": torch.tensor([0, 1, 1])}, "3 labels for 2 images"),
        ({"labels": torch.tensor([0, 2])}, "out of range"),
    ):
        with pytest.raises(UserError, match=word):
            ImageDataset(**{**good, **change})


# --------------------------------------------------------------------------- ImageDataset use


def _indexed_dataset(n: int) -> ImageDataset:
    """Image i is filled with the value i, so batches reveal which images they hold."""
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 2, 2).contiguous()
    return ImageDataset("idx", "test", images, torch.arange(n) % 7, [str(c) for c in range(7)])


def test_first_and_tensors():
    ds = _indexed_dataset(10)
    assert ds.first(None) is ds
    head = ds.first(4)
    assert len(head) == 4 and head.labels.tolist() == [0, 1, 2, 3]
    with pytest.warns(UserWarning, match="only 10 images"):
        assert len(ds.first(50)) == 10
    x, y = ds.tensors()
    assert x.dtype == torch.float32 and x.shape == (10, 3, 2, 2) and float(x.max()) == pytest.approx(9 / 255)
    assert y.dtype == torch.int64


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), batch_size=st.integers(1, 12), shuffle=st.booleans(), seed=st.integers(0, 2**31), data=st.data())
def test_batches_cover_everything_once_and_resume(n, batch_size, shuffle, seed, data):
    ds = _indexed_dataset(n)

    def run(start: int) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        return list(ds.batches(batch_size, shuffle=shuffle, generator=gen, start=start))

    full = run(0)
    ids = torch.cat([(x[:, 0, 0, 0] * 255).round().long() for x, _ in full])
    assert sorted(ids.tolist()) == list(range(n))
    assert all(len(x) == batch_size for x, _ in full[:-1])
    for x, y in full:
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and 0 <= float(x.min()) and float(x.max()) <= 1
        assert torch.equal(y, (x[:, 0, 0, 0] * 255).round().long() % 7)
    if not shuffle:
        assert ids.tolist() == list(range(n))
    k = data.draw(st.integers(0, len(full)))
    resumed = run(k * batch_size)
    assert len(resumed) == len(full) - k
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(resumed, full[k:], strict=False))


def test_batches_start_not_on_batch_boundary_and_bad_values():
    ds = _indexed_dataset(10)
    ys = [y.tolist() for _, y in ds.batches(4, start=3)]
    assert ys == [[3, 4, 5, 6], [0, 1, 2]]
    assert list(ds.batches(4, start=12)) == []  # resuming a finished run
    with pytest.raises(UserError, match="start"):
        next(ds.batches(4, start=-1))
    with pytest.raises(UserError, match="batch size"):
        next(ds.batches(0))


# --------------------------------------------------------------------------- augment


def _random_batch(b: int = 16, c: int = 3, h: int = 5, w: int = 6) -> torch.Tensor:
    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(0)) + 0.5  # no zeros in the input


def test_augment_identity_without_pad_and_flip():
    x = _random_batch()
    assert torch.equal(augment(x, torch.Generator().manual_seed(1), pad=0, flip=False), x)


def test_augment_flip_only():
    x = _random_batch(b=64)
    out = augment(x, torch.Generator().manual_seed(2), pad=0, flip=True)
    same = (out == x).flatten(1).all(1)
    flipped = (out == torch.flip(x, dims=[3])).flatten(1).all(1)
    assert bool((same | flipped).all())
    assert 10 < int(flipped.sum()) < 54  # both cases happen


def test_augment_values_come_from_the_padded_input():
    pad = 2
    x = _random_batch(b=24)
    out = augment(x, torch.Generator().manual_seed(3), pad=pad, flip=True)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    h, w = x.shape[2:]
    for i in range(len(x)):
        crops = [padded[i, :, dy : dy + h, dx : dx + w] for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]
        assert any(torch.equal(out[i], c) or torch.equal(out[i], torch.flip(c, dims=[2])) for c in crops), i
    assert bool((out == 0).any())  # some crops reach into the zero padding


def test_augment_is_reproducible_and_keeps_gradients():
    x = _random_batch().requires_grad_()
    a = augment(x, torch.Generator().manual_seed(4))
    b = augment(x, torch.Generator().manual_seed(4))
    c = augment(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, c)
    a.sum().backward()
    assert x.grad is not None
    with pytest.raises(UserError, match="pad"):
        augment(x, pad=-1)
    with pytest.raises(UserError, match=r"\[B, C, H, W\]"):
        augment(x[0])


# --------------------------------------------------------------------------- prepare / download


def test_verify_md5(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"hello")
    data.download._verify_md5(path, hashlib.md5(b"hello").hexdigest())
    assert path.exists()
    with pytest.raises(UserError, match="MD5"):
        data.download._verify_md5(path, "0" * 32)
    assert not path.exists()


def test_prepare_offline_names_the_url(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(UserError, match=r"could not download https://www\.cs\.toronto\.edu/~kriz/cifar-10-python\.tar\.gz.*by hand to "
                                        r".*cifar-10-python\.tar\.gz"):
        prepare("cifar10", tmp_path)
    with pytest.raises(UserError, match=r"train_32x32\.mat.*by hand to .*svhn"):
        prepare("svhn", tmp_path)
    with pytest.raises(UserError, match="download http://cs231n"):
        prepare("tiny-imagenet", tmp_path, download=False)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))  # nothing half-written


def _cifar10_archive(tmp_path: Path) -> bytes:
    src = tmp_path / "src"
    _write_cifar10(src, per_batch=1)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return buf.getvalue()


class _FakeResponse(io.BytesIO):
    def __init__(self, payload: bytes) -> None:
        super().__init__(payload)
        self.headers = {"Content-Length": str(len(payload))}


def test_prepare_downloads_checks_and_extracts(tmp_path, monkeypatch):
    payload = _cifar10_archive(tmp_path)
    info = DATASETS["cifar10"]
    remote = RemoteFile(info.files[0].url, info.files[0].filename, hashlib.md5(payload).hexdigest())
    monkeypatch.setitem(DATASETS, "cifar10", dataclasses.replace(info, files=(remote,)))
    served = []
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: served.append(url) or _FakeResponse(payload))
    ddir = tmp_path / "data"
    root = prepare("cifar10", ddir)
    assert root == ddir / "cifar-10-batches-py" and served == [remote.url]
    assert not (ddir / remote.filename).exists()  # archive removed after extraction
    assert len(load_dataset("cifar10", "train", data_dir=ddir)) == 5
    assert prepare("cifar10", ddir) == root and served == [remote.url]  # already there: no download


def test_prepare_rejects_a_bad_download(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: _FakeResponse(b"<html>captive portal</html>"))
    with pytest.raises(UserError, match="MD5"):
        prepare("cifar10", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_prepare_uses_a_hand_downloaded_archive(tmp_path, monkeypatch):
    payload = _cifar10_archive(tmp_path)
    info = DATASETS["cifar10"]
    remote = dataclasses.replace(info, files=(info.files[0]._replace(md5=hashlib.md5(payload).hexdigest()),))
    monkeypatch.setitem(DATASETS, "cifar10", remote)
    ddir = tmp_path / "data"
    ddir.mkdir()
    (ddir / "cifar-10-python.tar.gz").write_bytes(payload)
    assert prepare("cifar10", ddir, download=False) == ddir / "cifar-10-batches-py"
    assert len(load_dataset("cifar10", data_dir=ddir)) == 1


def test_prepare_validates_folder_and_npz(tmp_path):
    _write_png(tmp_path / "set" / "a" / "0.png", np.zeros((2, 2), np.uint8))
    assert prepare(f"folder:{tmp_path / 'set'}") == (tmp_path / "set").resolve()
    np.savez(tmp_path / "d.npz", x_train=np.zeros((1, 2, 2), np.uint8), y_train=np.zeros(1, int))
    with pytest.raises(UserError, match="x_test"):
        prepare(f"npz:{tmp_path / 'd.npz'}")


# --------------------------------------------------------------------------- the real CIFAR-10


@pytest.mark.realdata
def test_real_cifar10():
    env = os.environ.get(DEFAULT_DATA_ENV)
    if not env or not (Path(env) / "cifar-10-batches-py").is_dir():
        pytest.skip(f"real CIFAR-10 not found: set {DEFAULT_DATA_ENV} to a folder containing cifar-10-batches-py")
    for split, total, per_class in (("train", 50_000, 5_000), ("test", 10_000, 1_000)):
        ds = load_dataset("cifar10", split, data_dir=env)
        assert len(ds) == total and ds.input_shape == (3, 32, 32) and ds.num_classes == 10
        assert torch.bincount(ds.labels, minlength=10).tolist() == [per_class] * 10
        assert ds.classes[0] == "airplane" and ds.classes[9] == "truck"


def test_class_sorted_splits_are_read_round_robin_and_unsorted_ones_keep_their_order(tmp_path):
    from nonrobust.data import load_dataset

    x = np.arange(9, dtype=np.uint8).reshape(9, 1, 1).repeat(2, 1).repeat(2, 2)
    sorted_y = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    mixed_y = np.array([2, 0, 1, 1, 0, 2, 0, 2, 1])
    np.savez(tmp_path / "s.npz", x_train=x, y_train=mixed_y, x_test=x, y_test=sorted_y)
    test = load_dataset(f"npz:{tmp_path / 's.npz'}", "test")
    assert test.labels.tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2]
    assert test.images[:, 0, 0, 0].tolist() == [0, 3, 6, 1, 4, 7, 2, 5, 8]  # images follow their labels
    assert load_dataset(f"npz:{tmp_path / 's.npz'}", "test", n=3).labels.tolist() == [0, 1, 2]
    train = load_dataset(f"npz:{tmp_path / 's.npz'}", "train")
    assert train.labels.tolist() == mixed_y.tolist()


def test_bundled_cifar10_slice_needs_no_download(tmp_path, monkeypatch):
    from nonrobust.data import load_dataset, prepare

    monkeypatch.setenv("NONROBUST_DATA", str(tmp_path / "empty"))
    ds = load_dataset("cifar10-slice")
    assert len(ds) == 1000 and ds.input_shape == (3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.labels.bincount(minlength=10).tolist() == [100] * 10
    assert ds.classes[0] == "airplane"
    assert prepare("cifar10-slice").is_dir()
    with pytest.raises(UserError, match="test images only"):
        load_dataset("cifar10-slice", "train")


@pytest.mark.realdata
def test_bundled_slice_is_the_first_thousand_of_the_prepared_copy():
    import os

    from nonrobust.data import load_dataset

    root = os.environ.get("NONROBUST_DATA")
    if not root or not os.path.isdir(os.path.join(root, "cifar-10-batches-py")):
        pytest.skip("real CIFAR-10 not found: set NONROBUST_DATA to a folder containing cifar-10-batches-py")
    full = load_dataset("cifar10", "test", n=1000)
    bundled = load_dataset("cifar10-slice")
    assert torch.equal(full.images, bundled.images) and torch.equal(full.labels, bundled.labels)
