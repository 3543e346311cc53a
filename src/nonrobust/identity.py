"""What a result was made from: the one work key of every cache and resume, and the provenance of every output.

Everything nonrobust stores for later (a report step, a streamed attack or split file, a training run's
state) is keyed by :func:`work_key`, built from

- the **content** of the model (:func:`model_digest`: its weights and buffers and its architecture
  record, never the path it was read from: a checkpoint overwritten in place is another model);
- the **data actually used** (:func:`data_digest`: the images, labels and source indices);
- the full settings of the work;
- :data:`SCHEMA`, bumped whenever the meaning of a stored result changes.

Nothing else is ever put together by hand as a key, so no part can be left out. Every JSON a command
writes carries :func:`provenance` (which model, which data and images, versions, device, seeds,
settings, the command line); ``nonrobust inspect FILE`` prints it back.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import platform
import sys
from typing import TYPE_CHECKING, Any, Callable, Sequence, cast

import torch
from torch import nn

from .io import digest

if TYPE_CHECKING:
    from .data import ImageDataset

__all__ = ["SCHEMA", "COMMAND", "model_digest", "data_digest", "work_key", "provenance", "model_record", "data_record", "index_runs",
           "expand_runs", "find_provenance", "read_provenance", "describe_provenance"]

SCHEMA = 2
"""Version of the meaning of stored results: part of every :func:`work_key` (1 was nonrobust ≤ 0.1.3's hand-made keys)."""

COMMAND: contextvars.ContextVar[Sequence[str] | None] = contextvars.ContextVar("nonrobust_command", default=None)
"""The command line being run (set by ``nonrobust.cli.main``); provenance falls back to ``sys.argv``."""


def _tensor_hash(h: "hashlib._Hash", name: str, t: torch.Tensor) -> None:
    t = t.detach()
    h.update(f"{name}|{str(t.dtype).removeprefix('torch.')}|{list(t.shape)}".encode())
    h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def _memo(obj: object, attr: str, version: tuple[Any, ...], compute: Callable[[], str]) -> str:
    """``compute()``, remembered on ``obj`` while ``version`` (data pointers and in-place version counters) is unchanged."""
    cached = getattr(obj, attr, None)
    if cached is not None and cached[0] == version:
        return cast(str, cached[1])
    value = compute()
    try:
        object.__setattr__(obj, attr, (version, value))
    except (AttributeError, TypeError):  # an object that takes no attributes is simply hashed again next time
        pass
    return value


def architecture(model: nn.Module) -> dict[str, Any]:
    """The architecture record of ``model``: its class and its module structure (``repr``), plus nonrobust's build record."""
    from .models import unwrap

    model = unwrap(model)
    record: dict[str, Any] = {"class": f"{type(model).__module__}.{type(model).__qualname__}",
                              "structure": hashlib.sha256(repr(model).encode()).hexdigest()}
    build = getattr(model, "nonrobust_build", None)
    if build is not None:
        record["build"] = {"arch": build.arch, "options": build.options, "num_classes": build.num_classes}
    return record


def model_digest(model: nn.Module) -> str:
    """SHA-256 (hex) of a model's content: every parameter and buffer (name, dtype, shape, bytes) and :func:`architecture`.

    Two models with the same digest compute the same function (up to code outside the module's
    structure). Remembered on the model until a tensor is replaced or changed in place.
    """
    from .models import unwrap

    plain = unwrap(model)
    state = plain.state_dict(keep_vars=True)
    version = tuple((k, v.data_ptr(), v._version, v.dtype, v.device) for k, v in state.items())

    def compute() -> str:
        h = hashlib.sha256(json.dumps(architecture(plain), sort_keys=True).encode())
        for name, t in state.items():
            _tensor_hash(h, name, t)
        return h.hexdigest()

    return _memo(plain, "_nonrobust_digest", version, compute)


def data_digest(ds: "ImageDataset") -> str:
    """SHA-256 (hex) of the images, labels and source indices of a data set (its content, not its name or path)."""
    assert ds.indices is not None  # set by ImageDataset.__post_init__
    tensors = {"images": ds.images, "labels": ds.labels, "indices": ds.indices}
    version = tuple((k, v.data_ptr(), v._version, tuple(v.shape)) for k, v in tensors.items())

    def compute() -> str:
        h = hashlib.sha256()
        for name, t in tensors.items():
            _tensor_hash(h, name, t)
        return h.hexdigest()

    return _memo(ds, "_nonrobust_digest", version, compute)


def work_key(kind: str, *, model: nn.Module | str | None, data: "ImageDataset | str | None", settings: Any) -> str:
    """The key under which a piece of work is stored and resumed: SHA-256 of :data:`SCHEMA`, ``kind``, the model's and the
    data's content (a model or data set, or a digest already taken of one) and the full ``settings`` (JSON-able)."""
    m = model if isinstance(model, str) or model is None else model_digest(model)
    d = data if isinstance(data, str) or data is None else data_digest(data)
    return digest({"schema": SCHEMA, "kind": kind, "model": m, "data": d, "settings": settings})


# --------------------------------------------------------------------------- provenance
def index_runs(indices: torch.Tensor | Sequence[int]) -> list[list[int]]:
    """``indices`` as runs ``[start, count, step]`` of arithmetic progressions (exact; :func:`expand_runs` inverts it).

    ``0 … 999`` is ``[[0, 1000, 1]]``; the first 20 of a class-sorted 10,000-image split read round-robin is
    ``[[0, 10, 1000], [1, 10, 1000]]``.
    """
    values = [int(v) for v in (indices.tolist() if isinstance(indices, torch.Tensor) else indices)]
    runs: list[list[int]] = []
    i = 0
    while i < len(values):
        if i + 1 == len(values):
            runs.append([values[i], 1, 1])
            break
        step = values[i + 1] - values[i]
        j = i + 1
        while j + 1 < len(values) and values[j + 1] - values[j] == step:
            j += 1
        runs.append([values[i], j - i + 1, step])
        i = j + 1
    return runs


def expand_runs(runs: Sequence[Sequence[int]]) -> list[int]:
    """The indices :func:`index_runs` describes."""
    return [start + k * step for start, count, step in runs for k in range(count)]


def data_record(ds: "ImageDataset") -> dict[str, Any]:
    """Which images a result was made from: digest, name, split, order, count, source indices (as :func:`index_runs`)."""
    assert ds.indices is not None  # set by ImageDataset.__post_init__
    return {"digest": data_digest(ds), "name": ds.name, "split": ds.split, "order": ds.order, "n": len(ds),
            "input_shape": list(ds.input_shape), "indices": index_runs(ds.indices), "source_note": ds.provenance}


def model_record(model: nn.Module) -> dict[str, Any]:
    """Which model a result was made with: digest, the name or path it was given as, its architecture, dtype and device."""
    from .models import unwrap

    plain = unwrap(model)
    meta = getattr(plain, "nonrobust_meta", None)
    first = next(iter(plain.parameters()), None)
    return {"digest": model_digest(plain), "source": getattr(plain, "nonrobust_source", None),
            "arch": getattr(meta, "arch", type(plain).__qualname__),
            "dtype": str(first.dtype).removeprefix("torch.") if first is not None else None,
            "device": str(first.device) if first is not None else None}


def provenance(*, model: nn.Module | None, data: "ImageDataset | None", settings: Any, seeds: dict[str, Any] | None = None,
               key: str | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``provenance`` block of an output: everything needed to tell what made it.

    Returns ``{"schema", "key", "model", "data", "versions", "seeds", "settings", "command"}``: ``model`` as
    :func:`model_record` (digest, source, arch, dtype, device), ``data`` as :func:`data_record` (digest, name, split,
    order, indices), the nonrobust / torch / Python versions and the platform, ``seeds`` (name -> seed), the full
    ``settings`` and the command line (:data:`COMMAND`, else ``sys.argv``).
    """
    from ._version import __version__

    out: dict[str, Any] = {
        "schema": SCHEMA, "key": key,
        "model": model_record(model) if model is not None else None,
        "data": data_record(data) if data is not None else None,
        "versions": {"nonrobust": __version__, "torch": torch.__version__, "python": platform.python_version(),
                     "platform": platform.platform()},
        "seeds": dict(seeds or {}),
        "settings": settings,
        "command": list(COMMAND.get() or sys.argv),
    }
    out.update(extra or {})
    return out


# --------------------------------------------------------------------------- reading it back
def find_provenance(obj: Any) -> dict[str, Any] | None:
    """The provenance block inside a result (results.json, a summary, a file header, a checkpoint's metadata), or ``None``."""
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("provenance"), dict) and obj["provenance"]:
        return cast("dict[str, Any]", obj["provenance"])
    if isinstance(obj.get("extra"), dict):  # a population split (IBResult) keeps it among its extras
        return find_provenance(obj["extra"])
    if "schema" in obj and "command" in obj and "model" in obj:  # a bare block (a training run's provenance.json)
        return obj
    return None


def read_provenance(path: str | Any) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """``(provenance, record)`` of any output of nonrobust: a ``.json`` file, a ``.safetensors`` file (adversarial examples, a split,
    a checkpoint: its header only, no tensor is read) or a training run folder (its ``provenance.json``). ``record`` is the
    whole JSON or header; ``provenance`` is ``None`` when the output has none (written before nonrobust 0.2)."""
    from pathlib import Path

    from .errors import UserError
    from .io import load_tensors, read_json

    p = Path(path)
    if p.is_dir():
        for name in ("provenance.json", "results.json"):
            if (p / name).is_file():
                p = p / name
                break
        else:
            raise UserError(f"{p}: a folder with neither provenance.json (a training run) nor results.json (a report)")
    if p.suffix == ".json" or p.name.endswith(".jsonl"):
        record = read_json(p)
    else:
        _, record = load_tensors(p, keys=())
    return find_provenance(record), record


def describe_provenance(block: dict[str, Any]) -> list[str]:
    """Lines that say what made a result, from its provenance block (``nonrobust inspect``)."""
    lines = [f"work key    {block.get('key') or '-'} (schema {block.get('schema')})"]
    m = block.get("model") or {}
    if m:
        lines.append(f"model       {m.get('source') or m.get('arch')} ({m.get('arch')}, {m.get('dtype')} on {m.get('device')}), "
                     f"content digest {m.get('digest')}")
    d = block.get("data") or {}
    if d:
        runs = d.get("indices") or []
        first = expand_runs(runs[:3])[:8]
        shown = ", ".join(map(str, first)) + (", …" if d.get("n", 0) > len(first) else "")
        lines.append(f"data        {d.get('name')} [{d.get('split')}], {d.get('n')} images of {'×'.join(map(str, d.get('input_shape') or []))} "
                     f"in {d.get('order')} order, content digest {d.get('digest')}")
        lines.append(f"images      source indices {shown} ({len(runs)} run{'' if len(runs) == 1 else 's'} of [start, count, step] in the JSON)")
        if d.get("source_note"):
            lines.append(f"            {d['source_note']}")
    held = block.get("held_out")
    if held:
        lines.append(f"held out    {held.get('name')} [{held.get('split')}], {held.get('n')} images, content digest {held.get('digest')}")
    v = block.get("versions") or {}
    lines.append(f"versions    nonrobust {v.get('nonrobust')}, torch {v.get('torch')}, Python {v.get('python')} on {v.get('platform')}")
    lines.append(f"seeds       {json.dumps(block.get('seeds') or {}, sort_keys=True)}")
    lines.append(f"settings    {json.dumps(block.get('settings'), sort_keys=True, ensure_ascii=False, default=str)}")
    lines.append(f"command     {' '.join(map(str, block.get('command') or []))}")
    return lines
