"""The architecture registry, model building, checkpoints and pretrained models.

A checkpoint is one safetensors file: the weights are ``model.state_dict()``
(normalisation buffers included) and the header's JSON metadata is a
:class:`CheckpointMeta` — everything needed to rebuild the model (arch,
options, classes, normalisation) and to know what it is (dataset, split layer,
training recipe, metrics, versions). Nothing is ever unpickled.

Typical use::

    model = build("small_cnn", num_classes=10)
    ...train...
    save(model, "runs/small.safetensors", make_meta(model, dataset="cifar10", metrics={"clean": 0.81}))
    model, meta = resolve("runs/small.safetensors", device="cuda")   # or resolve("cifar10-small-at")
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import re
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, cast

import torch
from torch import nn

from . import __version__
from . import architectures as arch_lib
from .errors import UserError
from .io import assets_dir as _assets_dir, load_tensors, save_tensors
from .runtime import resolve_device

__all__ = [
    "ArchSpec",
    "ARCHITECTURES",
    "arch_spec",
    "build",
    "BuildRecord",
    "CheckpointMeta",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "make_meta",
    "save",
    "load",
    "load_with_meta",
    "PretrainedSpec",
    "PRETRAINED",
    "pretrained",
    "headline",
    "resolve",
    "is_python_spec",
    "load_python_model",
    "check_compatible",
    "unwrap",
    "tensors_digest",
]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "nonrobust-checkpoint"
CHECKPOINT_VERSION = 1

_COMMON_ARGS = ("num_classes", "in_channels", "mean", "std")


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class ArchSpec:
    """A registered architecture.

    Attributes:
        name: registry key.
        factory: ``factory(num_classes, in_channels=3, mean=None, std=None, **options) -> nn.Module``.
        default_layer: module name (``model.named_modules()``) of the default split layer ``l``.
        input_size: native image side in pixels (e.g. 32 for CIFAR).
        notes: channels and spatial shape at ``default_layer`` and where the choice comes from.
        paper: whether the paper (Kim, Lee, Ro 2021) used this architecture.
    """

    name: str
    factory: Callable[..., nn.Module]
    default_layer: str
    input_size: int
    notes: str
    paper: bool

    @property
    def options(self) -> dict[str, Any]:
        """The factory's own keyword options and their defaults (empty if it has none)."""
        params = inspect.signature(self.factory).parameters
        return {k: p.default for k, p in params.items() if k not in _COMMON_ARGS}


ARCHITECTURES: dict[str, ArchSpec] = {
    spec.name: spec
    for spec in (
        ArchSpec(
            "vgg16", arch_lib.vgg16, "features.41", 32,
            "BatchNorm after the 13th conv, before its ReLU: 512 ch, 2x2 at 32 px (index 41, the reference code's VGG split)",
            paper=True,
        ),
        ArchSpec(
            "wrn28_10", arch_lib.wrn28_10, "bn1", 32,
            "final BatchNorm before the last ReLU: 64*widen ch (640), 8x8 at 32 px (the reference code's WRN split)",
            paper=True,
        ),
        ArchSpec(
            "preact_resnet18", arch_lib.preact_resnet18, "bn", 32,
            "final BatchNorm before the last ReLU: 512 ch, 4x4 at 32 px (chosen like the WRN split)",
            paper=False,
        ),
        ArchSpec(
            "small_cnn", arch_lib.small_cnn, "features.23", 32,
            "BatchNorm after the 7th (last) conv, before its ReLU: 8*width ch (256), 2x2 at 32 px; CPU-sized, not from the paper",
            paper=False,
        ),
        ArchSpec(
            "tiny_cnn", arch_lib.tiny_cnn, "features.5", 32,
            "BatchNorm after the 2nd conv, before its ReLU: 16 ch, 16x16 at 32 px; for unit tests only",
            paper=False,
        ),
    )
}


def arch_spec(arch: str) -> ArchSpec:
    """The :class:`ArchSpec` registered as ``arch``; :class:`UserError` listing the names if there is none."""
    if arch not in ARCHITECTURES:
        raise UserError(f"unknown architecture {arch!r}: choose one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch]


@dataclass(frozen=True)
class BuildRecord:
    """How :func:`build` made a model; attached to it as ``model.nonrobust_build`` (read by :func:`make_meta`)."""

    arch: str
    options: dict[str, Any]
    num_classes: int


def build(
    arch: str,
    num_classes: int = 10,
    in_channels: int = 3,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    **options: Any,
) -> nn.Module:
    """A freshly initialised model of a registered architecture, in training mode, on the current default device.

    Args:
        arch: a name in :data:`ARCHITECTURES`.
        num_classes: number of logits.
        in_channels: image channels ``C`` (1 for grey-scale).
        mean, std: per-channel normalisation (one number or ``C`` numbers);
            default 0.5 and 0.25, i.e. ``(x - 0.5) / 0.25``.
        **options: the architecture's own options (``ARCHITECTURES[arch].options``),
            e.g. ``width=32`` for ``small_cnn`` or ``depth=10, widen=1, dropout=0.3`` for ``wrn28_10``.

    Returns:
        A module mapping images ``[N, C, H, W]`` in ``[0, 1]`` to logits ``[N, num_classes]``,
        with ``model.nonrobust_build`` (a :class:`BuildRecord`) set.

    Raises:
        UserError: unknown architecture or option, or an invalid value.
    """
    spec = arch_spec(arch)
    known = spec.options
    unknown = sorted(set(options) - set(known))
    if unknown:
        choices = ", ".join(f"{k}={v!r}" for k, v in known.items()) or "none"
        raise UserError(f"architecture {arch} has no option {unknown[0]!r}: its options are {choices}")
    resolved = {**known, **options}
    model = spec.factory(num_classes, in_channels, mean, std, **resolved)
    model.nonrobust_build = BuildRecord(arch, resolved, num_classes)  # type: ignore[assignment]  # torch types Module.__setattr__'s value as Tensor | Module
    return model


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


def _skeleton(meta: CheckpointMeta) -> nn.Module:
    """The model ``meta`` describes, built on the meta device (no memory, no initialisation cost)."""
    with torch.device("meta"):
        return build(meta.arch, meta.num_classes, meta.input_shape[0], meta.mean, meta.std, **meta.arch_options)


def _mismatch(expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor], meta: CheckpointMeta) -> str | None:
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
    skeleton = _skeleton(meta)
    problem = _mismatch(skeleton.state_dict(), state, meta)
    if problem:
        raise UserError(f"save: the model's {problem}: make the metadata with make_meta(model)")
    if meta.split_layer not in dict(skeleton.named_modules()):
        raise UserError(f"save: split_layer {meta.split_layer!r} is not a layer of {meta.arch}: see nonrobust.models.ARCHITECTURES")
    for key in ("mean", "std"):
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


def load_with_meta(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild the model saved at ``path``; return it (eval mode, on ``device``) and its metadata.

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
        model = _skeleton(meta)
    except UserError as exc:
        raise UserError(f"{path}: cannot rebuild the model: {exc}") from None
    expected = model.state_dict()
    problem = _mismatch(expected, tensors, meta)
    if problem:
        raise UserError(f"{path}: checkpoint {problem}")
    if meta.split_layer not in dict(model.named_modules()):
        log.warning("%s: split_layer %r is not a layer of %s", path, meta.split_layer, meta.arch)
    tensors = {k: v.to(expected[k].dtype) for k, v in tensors.items()}
    model.load_state_dict(tensors, strict=True, assign=True)
    model.eval().to(device)
    for key in ("mean", "std"):
        if not torch.allclose(getattr(model.normalize, key).flatten().cpu(), torch.tensor(getattr(meta, key), device="cpu")):
            log.warning("%s: normalisation %s in the weights differs from the metadata; the weights' values are used", path, key)
    model.nonrobust_meta = meta  # type: ignore[assignment]  # torch types Module.__setattr__'s value as Tensor | Module
    log.debug("loaded %s from %s onto %s", meta.describe(), path, device)
    return model, meta


def load(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> nn.Module:
    """:func:`load_with_meta` without the metadata (it is still on ``model.nonrobust_meta``)."""
    return load_with_meta(path, device)[0]


# --------------------------------------------------------------------------- pretrained models


@dataclass(frozen=True)
class PretrainedSpec:
    """A named checkpoint shipped in ``nonrobust/assets``.

    Attributes:
        name: the name :func:`pretrained` and :func:`resolve` accept.
        asset: the checkpoint's file name in ``nonrobust/assets``.
        description: what it is (arch, data, training).
    """

    name: str
    asset: str
    description: str

    def available(self) -> bool:
        """Whether this build ships the checkpoint."""
        return (_assets_dir() / self.asset).is_file()

    def path(self) -> Path:
        """The shipped checkpoint's file; :class:`UserError` if this build does not ship it."""
        path = _assets_dir() / self.asset
        if not path.is_file():
            raise UserError(f"pretrained model {self.name!r} is registered but its asset {self.asset} is not shipped in this build: "
                            "train one and pass its checkpoint path instead")
        return path

    def meta(self) -> CheckpointMeta:
        """The shipped checkpoint's metadata, read from its header alone (no weights are loaded).

        Raises:
            UserError: the asset is not shipped in this build, or is not a nonrobust checkpoint.
        """
        path = self.path()
        return CheckpointMeta.from_dict(load_tensors(path, keys=())[1], source=str(path))


_HEADLINE_METRICS = (("clean_accuracy", "clean"), ("pgd20_accuracy", "PGD-20"), ("autoattack_accuracy", "AutoAttack"),
                     ("apgd_ce_accuracy", "APGD-CE"))
"""The measured accuracies :func:`headline` names, as (metadata key, label); each entry is ``{"n": images, "value": accuracy}``."""


def headline(meta: CheckpointMeta) -> str:
    """One line of a checkpoint's measured accuracies, e.g. ``clean 72.2% (n=10000), PGD-20 37.7% (n=10000)``; ``""`` if none."""
    parts = []
    for key, label in _HEADLINE_METRICS:
        entry = meta.metrics.get(key)
        if isinstance(entry, Mapping) and isinstance(entry.get("value"), (int, float)):
            parts.append(f"{label} {entry['value']:.1%} (n={entry.get('n', '?')})")
    return ", ".join(parts)


PRETRAINED: dict[str, PretrainedSpec] = {
    spec.name: spec
    for spec in (
        PretrainedSpec("cifar10-small-at", "cifar10-small-at.safetensors", "small_cnn on CIFAR-10, fast adversarial training (L-inf, eps 8/255)"),
        PretrainedSpec("cifar10-small-std", "cifar10-small-std.safetensors", "small_cnn on CIFAR-10, standard training"),
        PretrainedSpec("cifar10-vgg16-at", "cifar10-vgg16-at.safetensors",
                       "the paper's VGG-16-BN on CIFAR-10, fast adversarial training (L-inf, eps 8/255); float16 weights"),
    )
}


def _pretrained_with_meta(name: str, device: str | torch.device) -> tuple[nn.Module, CheckpointMeta]:
    if name not in PRETRAINED:
        raise UserError(f"unknown pretrained model {name!r}: choose one of {', '.join(PRETRAINED) or '(none)'}")
    return load_with_meta(PRETRAINED[name].path(), device)


def pretrained(name: str, device: str | torch.device = "cpu") -> nn.Module:
    """The shipped model ``name`` (a key of :data:`PRETRAINED`), in eval mode on ``device``, with ``nonrobust_meta`` set.

    Raises:
        UserError: unknown name, or its asset is not shipped in this build.
    """
    return _pretrained_with_meta(name, device)[0]


def resolve(model_arg: str | os.PathLike[str], device: str | torch.device = "cpu",
            input_shape: tuple[int, int, int] | None = None, options: Any = None,
            data_dir: str | os.PathLike[str] | None = None) -> tuple[nn.Module, CheckpointMeta]:
    """Turn a command-line model argument into ``(model, meta)``; the model is in eval mode on ``device``.

    ``model_arg`` is one of (tried in this order):

    - a :data:`PRETRAINED` name (it wins over a file of the same name: write ``./name`` for the file);
    - ``robustbench:NAME[:DATASET[:THREAT]]`` (:func:`nonrobust.foreign.load_robustbench`);
    - ``path/to/file.py:function`` for a model the user brings (:func:`load_python_model`; runs
      that file's code, needs ``input_shape``);
    - the path of a nonrobust ``.safetensors`` checkpoint (:func:`load_with_meta`);
    - ``ARCH=weights.pt``, a state dict of a registered architecture
      (:func:`nonrobust.foreign.load_state_dict_model`; nothing in the file runs).

    ``options`` is a :class:`nonrobust.foreign.ModelOptions` (class count, normalisation,
    architecture options, RobustBench folder) for the foreign routes; ``data_dir`` is where the
    RobustBench folder defaults to.

    Raises:
        UserError: none of the above (the message lists the forms), or the route's own errors.
    """
    from . import foreign

    options = options or foreign.ModelOptions()
    arg = str(model_arg)
    route = model_route(arg)
    given = [name for name in ROUTE_OPTIONS if route is not None and getattr(options, name) is not None and route not in ROUTE_OPTIONS[name]]
    if given:
        assert route is not None  # only a route can be given options it does not take
        flag = "--" + given[0].replace("_", "-")
        raise UserError(f"{flag} has no effect on {ROUTE_NAMES[route]} ({arg}): it is for "
                        f"{' and '.join(ROUTE_NAMES[r] for r in sorted(ROUTE_OPTIONS[given[0]]))}; drop it")
    model: nn.Module | None
    meta: CheckpointMeta | None
    if route == "pretrained":
        model, meta = _pretrained_with_meta(arg, device)
    elif route == "robustbench":
        model, meta = foreign.load_robustbench(arg, options, data_dir=data_dir, device=device)
    elif route == "python":
        if input_shape is None:
            raise UserError(f"{arg}: a model from a Python file needs the input shape: pass --input-shape C H W (or --data)")
        model, meta = load_python_model(arg, input_shape, device)
    elif route == "checkpoint":
        model, meta = load_with_meta(arg, device)
    elif route == "state_dict":
        arch, _, path = arg.partition("=")
        model, meta = foreign.load_state_dict_model(path, arch, options, input_shape=input_shape, device=device)
    else:
        model = meta = None
    if model is not None:
        assert meta is not None  # every route returns both
        unwrap(model).nonrobust_source = arg  # type: ignore[assignment]  # the name or path the model was given as, for provenance (identity is its content)
        return model, meta
    names = ", ".join(PRETRAINED) or "(none)"
    raise UserError(f"{arg!r}: no such file, and not a pretrained model name ({names}): pass a nonrobust .safetensors checkpoint, "
                    "one of those names, ARCH=weights.pt, robustbench:NAME or path/to/file.py:function")


ROUTE_NAMES = {"pretrained": "a shipped model", "robustbench": "a RobustBench model", "python": "a model from a Python file",
               "checkpoint": "a nonrobust checkpoint", "state_dict": "an ARCH=weights.pt state dict"}
"""The routes :func:`resolve` takes a model by (:func:`model_route`), as error messages name them."""
ROUTE_OPTIONS: dict[str, set[str]] = {"num_classes": {"state_dict"}, "normalize": {"state_dict"}, "arch_options": {"state_dict"},
                                      "model_dir": {"robustbench"}}
"""The routes on which each :class:`nonrobust.foreign.ModelOptions` field has an effect; elsewhere it is refused."""


def model_route(model_arg: str | os.PathLike[str]) -> str | None:
    """Which route :func:`resolve` takes ``model_arg`` by: a :data:`ROUTE_NAMES` key, or ``None`` for none of them."""
    from . import foreign

    arg = str(model_arg)
    if arg in PRETRAINED:
        return "pretrained"
    if foreign.is_robustbench_spec(arg):
        return "robustbench"
    if is_python_spec(arg):
        return "python"
    if Path(arg).is_file():
        return "checkpoint"
    if foreign.is_state_dict_spec(arg):
        return "state_dict"
    return None


# --------------------------------------------------------------------------- models users bring
_PY_SPEC = re.compile(r"^(?P<file>.+\.py):(?P<func>[A-Za-z_]\w*)$")


def is_python_spec(model_arg: str) -> bool:
    """Whether ``model_arg`` names a factory in a Python file (``path/to/file.py:function``)."""
    return bool(_PY_SPEC.match(str(model_arg)))


def load_python_model(spec: str, input_shape: tuple[int, int, int], device: str | torch.device = "cpu") -> tuple[nn.Module, CheckpointMeta]:
    """Build a model a user brings: ``path/to/file.py:function``.

    Imports the file (this *runs its code*: only for files you trust) and calls
    ``function()``, which must return an ``nn.Module`` mapping images in [0,1] of
    shape ``[B, *input_shape]`` to logits (normalisation inside the module). The
    model may set ``nonrobust_split_layer`` (a module name); otherwise the last
    ``BatchNorm2d`` (else ``Conv2d``) is the default split layer. Returns the model
    in eval mode on ``device`` and metadata describing it (``arch`` is the spec).
    """
    import importlib.util

    m = _PY_SPEC.match(str(spec))
    if m is None:
        raise UserError(f"{spec!r}: expected path/to/file.py:function")
    path = Path(m["file"])
    if not path.is_file():
        raise UserError(f"{path}: no such Python file")
    module_spec = importlib.util.spec_from_file_location(f"nonrobust_user_{path.stem}", path)
    assert module_spec is not None and module_spec.loader is not None  # a .py file always has a spec and a loader
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        raise UserError(f"{path}: importing it failed: {type(exc).__name__}: {exc}") from None
    factory = getattr(module, m["func"], None)
    if not callable(factory):
        raise UserError(f"{path} has no function {m['func']!r}")
    model = factory()
    if not isinstance(model, nn.Module):
        raise UserError(f"{spec}: {m['func']}() returned {type(model).__name__}, not a torch.nn.Module")
    model = model.to(resolve_device(device) if isinstance(device, str) else device).eval()
    layer = getattr(model, "nonrobust_split_layer", None) or _last_feature_layer(model)
    with torch.no_grad():
        try:
            logits = model(torch.zeros(1, *input_shape, device=next(model.parameters(), torch.zeros(0, device="cpu")).device))
        except Exception as exc:
            raise UserError(f"{spec}: the model fails on images of shape {list(input_shape)}: {type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    if not (isinstance(logits, torch.Tensor) and logits.dim() == 2):
        raise UserError(f"{spec}: the model must return logits [B, K], got {type(logits).__name__} {list(getattr(logits, 'shape', []))}")
    c = input_shape[0]
    meta = CheckpointMeta(arch=str(spec), num_classes=int(logits.shape[1]), input_shape=cast("tuple[int, int, int]", tuple(input_shape)),
                          mean=[0.0] * c, std=[1.0] * c, split_layer=layer or "?",
                          recipe={"source": "user-supplied Python factory; normalisation is the model's own"})
    model.nonrobust_meta = meta  # type: ignore[assignment]  # torch types Module.__setattr__'s value as Tensor | Module
    return model, meta


def _last_feature_layer(model: nn.Module) -> str | None:
    names = [n for n, mod in model.named_modules() if isinstance(mod, nn.BatchNorm2d)]
    names = names or [n for n, mod in model.named_modules() if isinstance(mod, nn.Conv2d)]
    return names[-1] if names else None


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
