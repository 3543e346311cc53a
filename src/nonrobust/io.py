"""Atomic file writing and safe reading of JSON and safetensors files.

Every file the toolkit writes goes through :func:`atomic_write`: the data is
written to a temporary file in the same folder, flushed to disk, then renamed
over the target. A run killed at any point leaves either the old file or the
new one, never half of one.

Why one module: every file nonrobust writes goes through these few primitives (atomic writes, locks,
safetensors with metadata, the streaming file and its two writer modes); they share one set of rules
(write beside, fsync, rename) that is easiest to check in one place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Sequence, cast

import torch

from .errors import UserError

log = logging.getLogger(__name__)

__all__ = [
    "atomic_write",
    "write_json",
    "read_json",
    "save_tensors",
    "load_tensors",
    "check_output_path",
    "check_output_folder",
    "digest",
    "assets_dir",
    "tensor_fingerprint",
    "exclusive",
]


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path`` (text modes write UTF-8); rename it over ``path`` on success.

    On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = _not_a_folder(Path(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc} ({exc.filename or path.parent}); choose another output path") from None
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as fh:  # text is UTF-8 on every locale
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private; give them the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default, ensure_ascii=False) + "\n"  # β, not \u03b2
    with atomic_write(path, "w") as fh:
        fh.write(text)


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file, raising :class:`UserError` if it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None


def save_tensors(path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], metadata: dict[str, Any] | None = None) -> None:
    """Save tensors as safetensors, atomically; ``metadata`` is stored as JSON in the header."""
    from safetensors.torch import save

    meta = {"nonrobust": json.dumps(metadata or {}, default=_json_default)}
    blob = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=meta)
    with atomic_write(path, "wb") as fh:
        fh.write(blob)


def load_tensors(path: str | os.PathLike[str], device: str | torch.device = "cpu",
                 keys: Sequence[str] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a safetensors file written by :func:`save_tensors` (or ``keys`` of it only).

    Returns ``(tensors, metadata)``. Raises :class:`UserError` for a missing,
    truncated or foreign file. Never unpickles anything.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as fh:
            raw = (fh.metadata() or {}).get("nonrobust")
            names = list(fh.keys()) if keys is None else list(keys)
            missing = sorted(set(names) - set(fh.keys()))
            if missing:
                raise UserError(f"{path}: lacks tensor(s) {', '.join(missing)}")
            tensors = {k: fh.get_tensor(k) for k in names}
    except UserError:
        raise
    except Exception as exc:  # safetensors raises several types for bad headers
        raise UserError(f"{path}: not a readable safetensors file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if raw is None:
        raise UserError(f"{path}: a safetensors file, but not one written by nonrobust (no 'nonrobust' metadata)")
    try:
        metadata = json.loads(raw)
    except json.JSONDecodeError:
        raise UserError(f"{path}: corrupt nonrobust metadata") from None
    return tensors, metadata


def check_output_path(path: str | os.PathLike[str]) -> Path:
    """``path`` as a :class:`Path`, checked as the output of a command that writes ``path`` and a ``.json`` summary beside it.

    Raises :class:`UserError` when ``path`` is a folder, or ends in ``.json`` (the
    summary would overwrite the results).
    """
    path = _not_a_folder(Path(path))
    if path.suffix.lower() == ".json":
        raise UserError(f"{path}: the JSON summary is written beside the output as {path.with_suffix('.json').name}, "
                        f"so the output itself cannot end in .json: use {path.with_suffix('.safetensors')}")
    return path


def check_output_folder(path: str | os.PathLike[str]) -> Path:
    """``path`` as a :class:`Path`, checked as an output folder: :class:`UserError` when it is an existing file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} is a file, not a folder: pass a folder to --out")
    return path


def _not_a_folder(path: Path) -> Path:
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a file: give a file path such as {path / 'out.safetensors'}")
    return path


def assets_dir() -> Path:
    """The folder of files shipped inside the package (``nonrobust/assets``: pretrained models, the CIFAR-10 slice)."""
    import importlib.resources

    return Path(str(importlib.resources.files("nonrobust") / "assets"))


def digest(obj: Any) -> str:
    """SHA-256 (hex) of ``obj`` as sorted JSON: the key under which a result of these settings is stored or resumed."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def tensor_fingerprint(tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """SHA-256 (hex) over the names, dtypes and raw bytes of named tensors (model weights, images, masks)."""
    h = hashlib.sha256()
    for name, t in tensors:
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@contextlib.contextmanager
def exclusive(target: str | os.PathLike[str], lock: str | os.PathLike[str] | None = None) -> Iterator[None]:
    """Hold a lock on ``target`` (the file ``lock``, default ``TARGET.lock``) while writing it: one writer at a time.

    A second writer gets a :class:`UserError` naming the process that holds the lock. A lock left by a
    killed process on this machine (its process is gone) is taken over. The lock file is removed on exit.
    """
    target = Path(target)
    path = Path(lock) if lock is not None else target.with_name(target.name + ".lock")
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for _ in range(2):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError as exc:
            if exc.filename != str(path):  # a file where a folder of the path should be
                raise UserError(f"cannot write {target}: {exc.filename} is a file; choose another output path") from None
            try:
                other = json.loads(path.read_text() or "{}")
            except (OSError, json.JSONDecodeError):
                other = {}
            if other.get("host") == me["host"] and not _alive(int(other.get("pid", -1))):
                log.warning("taking over %s left by a stopped run (pid %s)", path, other.get("pid"))
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            raise UserError(f"{target} is being written by another nonrobust process (pid {other.get('pid', '?')} on "
                            f"{other.get('host', '?')} since {other.get('since', '?')}): wait for it, or pass another --out "
                            f"(if that process is gone, delete {path})") from None
        except OSError as exc:
            raise UserError(f"cannot write {target}: {exc.strerror or exc} ({exc.filename or path.parent}); choose another output path") from None
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(me))
        break
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    if isinstance(obj, (torch.device, torch.dtype)):
        return str(obj)
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


_ST_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.int64: "I64", torch.uint8: "U8", torch.float16: "F16", torch.bool: "BOOL", torch.int32: "I32"}


class _OneWriter:
    """One process writes every row, in order; its progress is ``PATH.progress.json`` (rows finished)."""

    def __init__(self, f: "StreamingTensorFile") -> None:
        self.f, self.rows_done = f, 0

    def open(self) -> None:
        """Continue a partial file of this work, or lay out a new one (saying so when one of other work was there)."""
        state = _read_progress(self.f.progress_path)
        if state is not None and self.f.partial.is_file() and state.get("world", 1) == 1 and state.get("fingerprint") == self.f.fingerprint:
            self.rows_done = int(state["rows"])
            return
        self.f._start_over(state)
        self.f._lay_out()
        self.save()

    def save(self) -> None:
        write_json(self.f.progress_path, {"fingerprint": self.f.fingerprint, "rows": self.rows_done, "total": self.f.n_rows})

    def pending_starts(self) -> list[int]:
        return list(range(self.rows_done, self.f.n_rows, self.f.block_rows))

    def expected_start(self) -> int | None:
        return self.rows_done if self.rows_done < self.f.n_rows else None

    def advance(self, start: int, rows: int) -> None:
        self.rows_done = start + rows

    @property
    def rows_written(self) -> int:
        return self.rows_done

    @property
    def own_rows(self) -> int:
        return self.f.n_rows

    def own_files(self) -> tuple[Path, ...]:
        return self.f.progress_path, self.f.partial


class _ShardedWriter:
    """Rank ``r`` of ``W`` writes the blocks ``i`` with ``i % W == r`` into the one shared partial file; its progress is
    ``PATH.progress.rankR-of-W.json`` (blocks finished), and rank 0 keeps ``PATH.progress.json`` (the layout's key)."""

    def __init__(self, f: "StreamingTensorFile") -> None:
        self.f, self.dist, self.blocks_done = f, f.dist, 0
        starts = range(0, f.n_rows, f.block_rows)
        self.starts = [s for i, s in enumerate(starts) if self.dist.owns(i)]

    @property
    def rank_path(self) -> Path:
        return self.f.path.with_name(f"{self.f.path.name}.progress.rank{self.dist.rank}-of-{self.dist.world}.json")

    def open(self) -> None:
        """Rank 0 keeps a partial file of this work and this world size, or lays out a new one; then each rank resumes."""
        f = self.f
        shared = _read_progress(f.progress_path)
        if self.dist.main:
            keep = shared is not None and f.partial.is_file() and shared.get("world") == self.dist.world \
                and shared.get("fingerprint") == f.fingerprint
            if not keep:
                if shared is not None and shared.get("fingerprint") != f.fingerprint:
                    f._start_over(shared)
                for old in f.path.parent.glob(f"{f.path.name}.progress.rank*.json"):
                    old.unlink()
                f._lay_out()
                write_json(f.progress_path, {"fingerprint": f.fingerprint, "world": self.dist.world, "total": f.n_rows})
        self.dist.barrier()  # the file is laid out before any rank writes into it
        state = _read_progress(self.rank_path)
        if state is not None and state.get("fingerprint") == f.fingerprint:
            self.blocks_done = int(state["blocks"])

    def save(self) -> None:
        write_json(self.rank_path, {"fingerprint": self.f.fingerprint, "blocks": self.blocks_done})

    def pending_starts(self) -> list[int]:
        return self.starts[self.blocks_done:]

    def expected_start(self) -> int | None:
        pending = self.pending_starts()
        return pending[0] if pending else None

    def advance(self, start: int, rows: int) -> None:
        self.blocks_done += 1

    def _rows(self, starts: list[int]) -> int:
        return sum(min(self.f.block_rows, self.f.n_rows - s) for s in starts)

    @property
    def rows_written(self) -> int:
        return self._rows(self.starts[:self.blocks_done])

    @property
    def own_rows(self) -> int:
        return self._rows(self.starts)

    def own_files(self) -> tuple[Path, ...]:
        return (self.rank_path,)


def _read_progress(path: Path) -> dict[str, Any] | None:
    """A progress record, or ``None`` when there is none (or it cannot be read: then the file starts over)."""
    if not path.is_file():
        return None
    try:
        return cast("dict[str, Any]", json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, OSError):
        return None


class StreamingTensorFile:
    """Write a safetensors file block of rows by block of rows, so a long run can stream and resume.

    ``specs`` maps each tensor name to ``(dtype, shape)``; every tensor has the same
    number of rows ``shape[0]``. The file is laid out up front as ``PATH.partial``
    (header first, then each tensor's bytes at fixed offsets); :meth:`write` puts
    rows ``[start, start+k)`` of every tensor in place, syncs them, then records
    the progress in ``PATH.progress.json`` (atomically). A new writer with the same
    ``fingerprint`` and ``specs`` continues from there; :meth:`finish` renames the
    completed file to ``PATH``. Memory use does not grow with the number of rows.
    ``PATH`` itself is never half-written.

    Sharded (``dist``, a :class:`nonrobust.runtime.Distributed` of more than one rank, with
    ``block_rows``): the rows come in blocks of ``block_rows`` (the batches), rank ``r`` writes
    the blocks ``i`` with ``i % world == r`` into the one shared ``PATH.partial`` at their own
    offsets, and keeps its own ``PATH.progress.rankR-of-W.json``; rank 0 lays the file out and
    renames it when every rank is done. The file is byte for byte the one a single process writes.
    The layout is this class's; which rows are a writer's and how far it got is its mode's
    (:class:`_OneWriter` or :class:`_ShardedWriter`).

    A partial file left with another ``fingerprint`` (the work key of other work: another model, data or
    setting, see :func:`nonrobust.identity.work_key`) is never continued: it is started over, with a warning.
    """

    def __init__(self, path: str | os.PathLike[str], specs: dict[str, tuple[torch.dtype, tuple[int, ...]]],
                 metadata: dict[str, Any], fingerprint: str, *, dist: Any = None, block_rows: int | None = None) -> None:
        from .runtime import Distributed

        self.path = _not_a_folder(Path(path))
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.progress_path = self.path.with_name(self.path.name + ".progress.json")
        self.dist = dist or Distributed()
        rows = {shape[0] for _, shape in specs.values()}
        if len(rows) != 1:
            raise ValueError("all tensors need the same number of rows")
        self.n_rows = rows.pop()
        if self.dist.world > 1 and not block_rows:
            raise ValueError("a sharded file needs block_rows (the batch size)")
        self.block_rows = block_rows or max(1, self.n_rows)
        header: dict[str, Any] = {"__metadata__": {"nonrobust": json.dumps(metadata, default=_json_default)}}
        self._layout: dict[str, tuple[int, int, torch.dtype]] = {}
        offset = 0
        for name, (dtype, shape) in specs.items():
            row_bytes = int(torch.tensor([], dtype=dtype, device="cpu").element_size() * max(1, int(torch.Size(shape[1:]).numel())))
            header[name] = {"dtype": _ST_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + row_bytes * shape[0]]}
            self._layout[name] = (offset, row_bytes, dtype)
            offset += row_bytes * shape[0]
        blob = json.dumps(header).encode()
        blob += b" " * (-len(blob) % 8)
        # a partial file continues only under the same settings *and* the same layout
        self.fingerprint = hashlib.sha256((fingerprint + json.dumps({k: v for k, v in header.items() if k != "__metadata__"})).encode()).hexdigest()
        self._data_start = 8 + len(blob)
        self._size = offset
        self._blob = blob
        self._mode: _OneWriter | _ShardedWriter = _OneWriter(self) if self.dist.world == 1 else _ShardedWriter(self)
        self._mode.open()

    def _start_over(self, state: dict[str, Any] | None) -> None:
        """Say so when a partial file of other work is left here: it is never continued, only replaced."""
        if state is not None and self.partial.is_file():
            import warnings

            warnings.warn(f"{self.path}: started over: the partial result there was computed for other work (another model, "
                          "other data or another setting), so it is not continued", stacklevel=4)

    def _lay_out(self) -> None:
        with atomic_write(self.partial, "wb") as fh:
            fh.write(len(self._blob).to_bytes(8, "little") + self._blob)
            fh.truncate(self._data_start + self._size)

    @property
    def rows_done(self) -> int:
        """Rows finished by this writer (its shard's, sharded), including those of the run it resumed."""
        return self._mode.rows_written

    def pending_starts(self) -> list[int]:
        """The first rows of the blocks this writer still has to write, in order (all of them alone, its shard sharded)."""
        return self._mode.pending_starts()

    @property
    def resumed_rows(self) -> int:
        """Rows this writer had finished before it was opened, read right after opening (for progress bars and logs)."""
        return self._mode.rows_written

    @property
    def own_rows(self) -> int:
        """Rows this writer writes in all (every row alone; its shard's sharded)."""
        return self._mode.own_rows

    def write(self, start: int, tensors: dict[str, torch.Tensor]) -> None:
        """Store rows ``start … start+k`` of every tensor; blocks must arrive in order (this rank's, sharded)."""
        expected = self._mode.expected_start()
        if start != expected:
            raise ValueError(f"expected rows from {'nowhere (all written)' if expected is None else expected}, got {start}")
        k = None
        with open(self.partial, "r+b") as fh:
            for name, (offset, row_bytes, dtype) in self._layout.items():
                t = tensors[name].detach().to("cpu", dtype).contiguous()
                k = t.shape[0] if k is None else k
                if t.shape[0] != k:
                    raise ValueError("every tensor needs the same number of rows in one block")
                fh.seek(self._data_start + offset + start * row_bytes)
                fh.write(t.cpu().numpy().tobytes() if dtype != torch.bool else t.to(torch.uint8).cpu().numpy().tobytes())
            fh.flush()
            os.fsync(fh.fileno())
        self._mode.advance(start, k or 0)
        self._mode.save()

    @property
    def complete(self) -> bool:
        """Whether this writer has written all its rows."""
        return not self._mode.pending_starts()

    def discard(self) -> None:
        """Remove what a run that failed before finishing any row left (sharded: only this rank's progress record)."""
        for p in self._mode.own_files():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)

    @contextlib.contextmanager
    def guard(self, bar: Any = None) -> Iterator["StreamingTensorFile"]:
        """Wrap the writing loop: a run that fails before finishing its first rows leaves no files.

        ``bar`` (a progress bar) is closed on the way out, before the caller reports an error,
        so the bar does not land on the error's line.
        """
        try:
            yield self
        except BaseException:
            if self._mode.rows_written == 0:  # nothing worth resuming
                self.discard()
            raise
        finally:
            if bar is not None:
                bar.close()

    def finish(self) -> Path:
        """Rename the complete file into place and drop the progress records (sharded: when every rank is done)."""
        if not self.complete:
            raise ValueError(f"only {self._mode.rows_written} of {self.own_rows} rows written")
        self.dist.barrier()  # every rank has written its blocks
        if self.dist.main:
            os.replace(self.partial, self.path)
            for p in (self.progress_path, *self.path.parent.glob(f"{self.path.name}.progress.rank*.json")):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)
        self.dist.barrier()  # the file is in place before any rank reads it
        return self.path
