"""Fetch an official release: download, MD5 check and safe extraction (:func:`prepare`)."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import socket
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import UserError, check
from ..io import assets_dir as _assets_dir
from ..io import atomic_write
from .dataset import SPLITS, default_data_dir
from .formats import _folder_index, _npz_get, _open_npz
from .load import _parse_name, _registry_root
from .registry import DATASETS, RemoteFile

log = logging.getLogger(__name__)


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


