"""Checkpoints: one safetensors file of weights and :class:`CheckpointMeta`, saved with a digest of its tensors that loading checks."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Sequence, cast

import torch
from torch import nn

from .. import architectures as arch_lib
from .._version import __version__
from ..errors import UserError
from ..io import load_tensors, save_tensors
from ..runtime import resolve_device
from .registry import BuildRecord, arch_spec, build

log = logging.getLogger(__name__)


CHECKPOINT_FORMAT = "nonrobust-checkpoint"
CHECKPOINT_VERSION = 1
# --------------------------------------------------------------------------- checkpoint metadata


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(kw_only=True)
class CheckpointMeta:
    """Everything a checkpoint's JSON metadata holds.

    Attributes:
        format, version: identify the file as a nonrobust checkpoint of this layout.
        arch: a name in :data:`ARCHITECTURES`; arch_options: its options (all of them, defaults filled in).
        num_classes: number of logits; classes: their names (``num_classes`` of them), if known.
        input_shape: ``(C, H, W)`` of the images the model was trained on.
        mean, std: the model's normalisation (``C`` values each; the same as its buffers).
        split_layer: the layer ``l`` used to split ``f = f_l+ ∘ f_l`` for this model.
        dataset: the training data set's name, if any.
        recipe: how it was trained (free-form JSON); metrics: what it scored (free-form JSON).
        created: UTC time, ISO 8601; nonrobust_version, torch_version: versions that wrote it.
        tensors_sha256: :func:`tensors_digest` of the stored tensors, written by :func:`save` and checked by
            :func:`load_with_meta` (corrupted bytes are refused); ``None`` in files written before 0.2.
        provenance: how the figures in ``metrics`` were made (:func:`nonrobust.identity.provenance`), if recorded.
    """

    format: str = CHECKPOINT_FORMAT
    version: int = CHECKPOINT_VERSION
    arch: str
    arch_options: dict[str, Any] = field(default_factory=dict)
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: list[float]
    std: list[float]
    split_layer: str
    dataset: str | None = None
    classes: list[str] | None = None
    recipe: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=_utc_now)
    nonrobust_version: str = __version__
    torch_version: str = torch.__version__
    tensors_sha256: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "checkpoint metadata") -> CheckpointMeta:
        """Validate ``data`` (e.g. parsed JSON) and build a :class:`CheckpointMeta`.

        Unknown keys are ignored (files from newer minor versions stay readable).
        Raises :class:`UserError` (prefixed with ``source``) for anything else wrong.
        """
        if not isinstance(data, Mapping) or data.get("format") != CHECKPOINT_FORMAT:
            raise UserError(f"{source}: not a nonrobust checkpoint (its metadata has no format {CHECKPOINT_FORMAT!r}): pass a model checkpoint file")
        version = data.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise UserError(f"{source}: bad checkpoint metadata: version must be a positive integer, got {version!r}")
        if version > CHECKPOINT_VERSION:
            raise UserError(f"{source}: checkpoint format version {version} is newer than this nonrobust {__version__} can read (up to "
                            f"{CHECKPOINT_VERSION}): upgrade nonrobust")
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise UserError(f"{source}: corrupt checkpoint metadata: no {missing[0]!r} field")
        ignored = sorted(set(data) - names)
        if ignored:
            log.debug("%s: ignoring unknown metadata fields %s", source, ignored)
        values = {k: data[k] for k in names if k in data}
        if isinstance(values.get("input_shape"), (list, tuple)):
            values["input_shape"] = tuple(values["input_shape"])
        for key in ("mean", "std", "classes"):
            if isinstance(values.get(key), tuple):
                values[key] = list(values[key])
        meta = cls(**values)
        problem = meta._problem()
        if problem:
            raise UserError(f"{source}: bad checkpoint metadata: {problem}")
        return meta

    def _problem(self) -> str | None:
        """The first thing wrong with the field types/values, or ``None``."""

        def positive_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and v >= 1

        def numbers(v: Any) -> bool:
            return isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)

        rules: list[tuple[str, bool, str]] = [
            ("arch", isinstance(self.arch, str), "a string"),
            ("arch_options", isinstance(self.arch_options, dict), "a JSON object"),
            ("num_classes", positive_int(self.num_classes), "a positive integer"),
            ("input_shape", isinstance(self.input_shape, tuple) and len(self.input_shape) == 3
             and all(map(positive_int, self.input_shape)), "[C, H, W], positive integers"),
            ("mean", numbers(self.mean), "a list of numbers"),
            ("std", numbers(self.std), "a list of numbers"),
            ("split_layer", isinstance(self.split_layer, str) and bool(self.split_layer), "a layer name"),
            ("dataset", self.dataset is None or isinstance(self.dataset, str), "a string or null"),
            ("classes", self.classes is None or (isinstance(self.classes, list) and all(isinstance(c, str) for c in self.classes)),
             "a list of strings or null"),
            ("recipe", isinstance(self.recipe, dict), "a JSON object"),
            ("metrics", isinstance(self.metrics, dict), "a JSON object"),
        ]
        for name, ok, expected in rules:
            if not ok:
                return f"{name} must be {expected}, got {getattr(self, name)!r}"
        channels = self.input_shape[0]
        if len(self.mean) != channels or len(self.std) != channels:
            return f"mean and std need {channels} values each (input_shape {list(self.input_shape)}), got {len(self.mean)} and {len(self.std)}"
        if self.classes is not None and len(self.classes) != self.num_classes:
            return f"{len(self.classes)} class names for {self.num_classes} classes"
        return None

    def describe(self) -> str:
        """One line: arch, options, classes, input shape."""
        opts = f" ({', '.join(f'{k}={v}' for k, v in self.arch_options.items())})" if self.arch_options else ""
        return f"arch {self.arch}{opts} with {self.num_classes} classes and {self.input_shape[0]}-channel input"


def attach(model: nn.Module, meta: CheckpointMeta | None, source: str | None = None) -> nn.Module:
    """Record on ``model`` what it is: ``model.nonrobust_meta = meta`` (when given) and ``nonrobust_source``, the name or
    path it was given as (when known). The one place that sets them; returns ``model``."""
    plain = unwrap(model)
    if meta is not None:
        object.__setattr__(plain, "nonrobust_meta", meta)  # plain attributes, not submodules or buffers
    if source is not None:
        object.__setattr__(plain, "nonrobust_source", source)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DataParallel / DistributedDataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = cast(nn.Module, model._orig_mod)
        else:
            return model


def make_meta(model_or_arch: nn.Module | str, **fields: Any) -> CheckpointMeta:
    """Fill a :class:`CheckpointMeta` for ``model_or_arch``; versions and time are filled in.

    Args:
        model_or_arch: a model made by :func:`build` or :func:`load` (possibly
            wrapped in DataParallel/DDP/``torch.compile``) — its arch, options,
            classes and normalisation are read from it and must not be passed —
            or an architecture name, with ``num_classes`` (default 10),
            ``arch_options``, ``mean``/``std`` (defaults 0.5/0.25) given as fields.
        **fields: any other :class:`CheckpointMeta` field. ``split_layer``
            defaults to the arch's default layer; ``input_shape`` to
            ``(C, input_size, input_size)``.

    Raises:
        UserError: an unknown field, a field contradicting the model, or invalid values.
    """
    valid = {f.name for f in dataclasses.fields(CheckpointMeta)} - {"format", "version"}
    unknown = sorted(set(fields) - valid)
    if unknown:
        raise UserError(f"make_meta: unknown field {unknown[0]!r}: fields are {', '.join(sorted(valid))}")
    if isinstance(model_or_arch, nn.Module) and _python_arch(getattr(unwrap(model_or_arch), "nonrobust_meta", None)):
        own = cast(CheckpointMeta, unwrap(model_or_arch).nonrobust_meta)  # a user's factory: what it is comes from its meta
        kept = ("format", "version", "arch", "arch_options", "num_classes", "input_shape", "mean", "std", "split_layer", "recipe")
        return CheckpointMeta.from_dict({**{k: getattr(own, k) for k in kept}, **fields}, source="make_meta")
    if isinstance(model_or_arch, nn.Module):
        model = unwrap(model_or_arch)
        record = getattr(model, "nonrobust_build", None)
        if not isinstance(record, BuildRecord):
            raise UserError("make_meta: this model was not made by nonrobust.models.build or load: pass the arch name instead, e.g. "
                            "make_meta('vgg16', num_classes=10)")
        given = sorted({"arch", "arch_options", "num_classes", "mean", "std"} & set(fields))
        if given:
            raise UserError(f"make_meta: {given[0]} comes from the model: do not pass it with a model")
        record_arch, options, num_classes, norm = record.arch, dict(record.options), record.num_classes, cast(arch_lib.Normalize, model.normalize)
    else:
        record_arch, num_classes = arch_spec(model_or_arch).name, fields.pop("num_classes", 10)
        options = {**arch_spec(record_arch).options, **fields.pop("arch_options", {})}
        mean, std = fields.pop("mean", None), fields.pop("std", None)
        channels = fields["input_shape"][0] if "input_shape" in fields else len(mean) if isinstance(mean, (list, tuple)) else 3
        norm = arch_lib.Normalize(mean, std, channels)
    derived: dict[str, Any] = {
        "arch": record_arch,
        "arch_options": options,
        "num_classes": num_classes,
        "mean": norm.mean.flatten().tolist(),
        "std": norm.std.flatten().tolist(),
    }
    spec = arch_spec(derived["arch"])
    derived["input_shape"] = fields.pop("input_shape", (len(derived["mean"]), spec.input_size, spec.input_size))
    derived["split_layer"] = fields.pop("split_layer", spec.default_layer)
    data = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **derived, **fields}
    return CheckpointMeta.from_dict(data, source="make_meta")


# --------------------------------------------------------------------------- save / load


PYTHON_SPEC = re.compile(r"^(?P<file>.+\.py):(?P<func>[A-Za-z_]\w*)$")
"""A factory of a user's model in a Python file, ``path/to/file.py:function``: the ``--model`` route and a checkpoint's ``arch``."""


def _python_arch(meta: Any) -> bool:
    """Whether ``meta`` (a :class:`CheckpointMeta` or anything) describes a model of a user's Python factory
    (``arch`` = ``path/to/file.py:function``), whose skeleton only that file can build."""
    return isinstance(meta, CheckpointMeta) and bool(PYTHON_SPEC.match(meta.arch))


def _skeleton(meta: CheckpointMeta) -> nn.Module:
    """The model ``meta`` describes, built on the meta device (no memory, no initialisation cost)."""
    if _python_arch(meta):
        raise UserError(f"its architecture is the Python factory {meta.arch}: load it with --model PATH (nonrobust.loading.resolve), "
                        "which runs that file to build the model")
    with torch.device("meta"):
        return build(meta.arch, meta.num_classes, meta.input_shape[0], meta.mean, meta.std, **meta.arch_options)


def weight_mismatch(expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor], meta: CheckpointMeta) -> str | None:
    """A one-line account of how the tensors ``got`` differ from a model's ``expected`` state dict, or ``None``."""
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    wrong = [k for k in expected if k in got and tuple(got[k].shape) != tuple(expected[k].shape)]
    if not (missing or unexpected or wrong):
        return None
    if missing:
        first = f"missing {missing[0]}"
    elif unexpected:
        first = f"unexpected {unexpected[0]}"
    else:
        first = f"{wrong[0]} has shape {list(got[wrong[0]].shape)}, expected {list(expected[wrong[0]].shape)}"
    return f"weights do not match {meta.describe()}: {len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} of wrong shape; first: {first}"


def save(model: nn.Module, path: str | os.PathLike[str], meta: CheckpointMeta, *, dtype: torch.dtype | None = None) -> None:
    """Write ``model``'s weights and ``meta`` as a safetensors checkpoint at ``path``, atomically.

    The weights are ``model.state_dict()`` (moved to CPU, contiguous); wrappers
    (DataParallel, DDP, ``torch.compile``) are looked through. ``meta`` is
    checked against the model first (use :func:`make_meta` to fill it).

    Args:
        dtype: store the floating-point weights in this precision (e.g.
            ``torch.float16``, half the file size); the normalisation buffers
            stay exact. :func:`load` always rebuilds the model in its own
            precision (float32), so the stored values are rounded once. Measure
            what the rounding costs before shipping such a file.

    Raises:
        UserError: ``meta`` is invalid or does not describe ``model`` (arch,
            options, classes, normalisation or split layer), or ``dtype`` is not
            a floating-point type.
    """
    if dtype is not None and not dtype.is_floating_point:
        raise UserError(f"save: dtype must be a floating-point type (e.g. torch.float16), got {dtype}")
    meta = CheckpointMeta.from_dict(asdict(meta), source="save")
    model = unwrap(model)
    state = model.state_dict()
    if _python_arch(meta):  # a user's factory: the model is its own reference (no registry skeleton exists)
        own = getattr(model, "nonrobust_meta", None)
        if not (isinstance(own, CheckpointMeta) and own.arch == meta.arch):
            raise UserError(f"save: meta describes the Python factory {meta.arch}, the model does not come from it: "
                            "make the metadata with make_meta(model)")
    skeleton = model if _python_arch(meta) else _skeleton(meta)
    problem = weight_mismatch(skeleton.state_dict(), state, meta)
    if problem:
        raise UserError(f"save: the model's {problem}: make the metadata with make_meta(model)")
    if meta.split_layer not in dict(skeleton.named_modules()):
        raise UserError(f"save: split_layer {meta.split_layer!r} is not a layer of {meta.arch}: see nonrobust.models.ARCHITECTURES")
    for key in ("mean", "std") if "normalize.mean" in state else ():  # a user's model normalises its own way
        buffer = state[f"normalize.{key}"].detach().cpu().flatten()
        if not torch.allclose(buffer, torch.tensor(getattr(meta, key), dtype=buffer.dtype, device="cpu")):
            raise UserError(f"save: meta.{key} {getattr(meta, key)} differs from the model's normalisation {buffer.tolist()}: make the metadata with "
                            "make_meta(model)")
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() and not k.startswith("normalize.") else v for k, v in state.items()}
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    save_tensors(path, state, {**asdict(meta), "tensors_sha256": tensors_digest(state)})
    log.debug("saved %s to %s", meta.describe(), path)


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 (hex) of named tensors as stored (sorted names, dtypes, shapes, bytes): what :func:`save` records and
    :func:`load_with_meta` checks."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach()
        h.update(f"{name}|{str(t.dtype).removeprefix('torch.')}|{list(t.shape)}".encode())
        h.update(t.contiguous().reshape(-1).view(torch.uint8).cpu().numpy().tobytes())
    return h.hexdigest()


def _zip_names(path: str | os.PathLike[str]) -> list[str]:
    """The member names of the zip archive at ``path`` (its directory only: nothing is extracted), or ``[]``."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return []


def _looks_pickled(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a torch.save zip archive (it has a ``data.pkl`` member) or a raw pickle (first byte 0x80).

    Only the first bytes and, for a zip, its directory are read; nothing is unpickled.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    if head.startswith(b"PK\x03\x04"):
        return any(name == "data.pkl" or name.endswith("/data.pkl") for name in _zip_names(path))
    return head[:1] == b"\x80"


def _looks_like_npz(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a zip of ``.npy`` arrays (a NumPy ``.npz``: a data set, not a model)."""
    names = _zip_names(path)
    return bool(names) and all(name.endswith(".npy") for name in names)


def load_with_meta(path: str | os.PathLike[str], device: str | torch.device = "cpu",
                   factory: Callable[[CheckpointMeta], nn.Module] | None = None) -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild the model saved at ``path``; return it (eval mode, on ``device``) and its metadata.

    The weights go into the model the architecture registry builds; for a model trained from a user's Python
    factory (``arch`` = ``path/to/file.py:function``) into ``factory(meta)``, which
    :func:`nonrobust.loading.resolve` passes (it runs that file); without one such a checkpoint is refused.

    ``device`` is anything :func:`nonrobust.runtime.resolve_device` accepts
    (``"cpu"``, ``"cuda:1"``, ``"auto"``). The weights are loaded strictly;
    ``model.nonrobust_meta`` is set to the metadata. Nothing is unpickled.

    Raises:
        UserError: missing, truncated or foreign file (pickled ``.pt`` files
            included), metadata that is not a nonrobust checkpoint's, an unknown
            arch, or weights that do not match the arch.
    """
    device = resolve_device(device)
    try:
        tensors, raw = load_tensors(path, device="cpu")
    except UserError as exc:
        if _looks_pickled(path):
            raise UserError(f"{exc}; it looks like a pickled PyTorch file: if it is a state dict, pass it as ARCH={path} "
                            "(e.g. preact_resnet18=PATH, read without running code) or convert it once with "
                            "`nonrobust models convert PATH --arch ARCH --out MODEL.safetensors`") from None
        if "no 'nonrobust' metadata" in str(exc):
            raise UserError(f"{exc}: if it holds a state dict, pass it as ARCH={path} (e.g. preact_resnet18={path})") from None
        if _looks_like_npz(path):
            raise UserError(f"{path}: a NumPy .npz file (a data set?), not a model checkpoint: pass a .safetensors checkpoint "
                            f"written by nonrobust as the model, and the .npz as --data npz:{path}") from None
        raise
    meta = CheckpointMeta.from_dict(raw, source=str(path))
    if meta.tensors_sha256 is not None and tensors_digest(tensors) != meta.tensors_sha256:
        raise UserError(f"{path}: its tensors do not match the digest stored with them (the file is corrupted): "
                        "copy, download or write it again")
    try:
        model = factory(meta) if factory is not None and _python_arch(meta) else _skeleton(meta)
    except UserError as exc:
        raise UserError(f"{path}: cannot rebuild the model: {exc}") from None
    expected = model.state_dict()
    problem = weight_mismatch(expected, tensors, meta)
    if problem:
        raise UserError(f"{path}: checkpoint {problem}")
    if meta.split_layer not in dict(model.named_modules()):
        log.warning("%s: split_layer %r is not a layer of %s", path, meta.split_layer, meta.arch)
    tensors = {k: v.to(expected[k].dtype) for k, v in tensors.items()}
    model.load_state_dict(tensors, strict=True, assign=True)
    model.eval().to(device)
    for key in ("mean", "std") if hasattr(model, "normalize") else ():  # a user's model normalises its own way
        if not torch.allclose(getattr(model.normalize, key).flatten().cpu(), torch.tensor(getattr(meta, key), device="cpu")):
            log.warning("%s: normalisation %s in the weights differs from the metadata; the weights' values are used", path, key)
    attach(model, meta)
    log.debug("loaded %s from %s onto %s", meta.describe(), path, device)
    return model, meta


def load(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> nn.Module:
    """:func:`load_with_meta` without the metadata (it is still on ``model.nonrobust_meta``)."""
    return load_with_meta(path, device)[0]


def check_compatible(model: nn.Module, meta: CheckpointMeta, input_shape: tuple[int, int, int], num_classes: int,
                     device: str | torch.device = "cpu", classes: Sequence[str] | None = None) -> None:
    """Raise :class:`UserError` unless ``model`` can classify images of ``input_shape`` into ``num_classes``.

    Checks the channel count, that the data's labels fit the model's logits, and
    runs one blank image through the model (so other image sizes work where the
    architecture allows them). Warns (``UserWarning``) when the data differs from what the
    model was trained on in a way that runs but misleads: another image size, or classes
    (``classes``, the data's names) that are not the model's in the model's order, since
    labels are compared with the model's outputs by index. (A class count that differs from
    the model's is one of :func:`nonrobust.checks.model_warnings`.)
    """
    trained = tuple(meta.input_shape[1:])
    if tuple(input_shape[1:]) != trained:
        warnings.warn(f"the model was trained on {trained[0]}×{trained[1]} images, the data's are {input_shape[1]}×{input_shape[2]}: "
                      f"resize them with --image-size {trained[0]} (at another size the model is not the one that was trained)",
                      stacklevel=2)
    if classes is not None and meta.classes is not None:
        if list(classes) != list(meta.classes)[:len(classes)]:
            shown: Callable[[Sequence[str]], str] = lambda names: ", ".join(list(names)[:4]) + (", …" if len(names) > 4 else "")  # noqa: E731
            warnings.warn(f"the data's classes ({shown(classes)}) are not the model's ({shown(meta.classes)}) in its order: labels are "
                          "compared with the model's outputs by index, so the accuracies are only meaningful for data in the model's "
                          "class order", stacklevel=2)
    if input_shape[0] != meta.input_shape[0]:
        raise UserError(f"the model takes {meta.input_shape[0]}-channel images, the data has {input_shape[0]} channels: use a matching model or data set")
    if num_classes > meta.num_classes:
        raise UserError(f"the data has {num_classes} classes, the model predicts {meta.num_classes}: use a model trained on this data set")
    with torch.no_grad():
        try:
            out = model(torch.zeros(1, *input_shape, device=device))
        except Exception as exc:
            raise UserError(f"the model cannot process {input_shape[1]}×{input_shape[2]} images ({type(exc).__name__}): resize them with "
                            f"--image-size {meta.input_shape[1]}") from None
    if out.shape[-1] != meta.num_classes:
        raise UserError(f"the model returns {out.shape[-1]} logits but its metadata says {meta.num_classes} classes")
