"""Models from outside nonrobust: PyTorch state dicts, RobustBench, and their conversion to nonrobust checkpoints.

Three routes bring a model that nonrobust did not save (the fourth, ``file.py:function``, is
:func:`nonrobust.loading.load_python_model`):

- ``ARCH=weights.pt`` — a state dict of a registered architecture (:data:`nonrobust.models.ARCHITECTURES`)
  saved by ``torch.save``, read with PyTorch's restricted unpickler (``weights_only=True``: tensors
  and plain containers only, so a file that carries code is refused without running it). Wrappers
  ``{"state_dict"|"model"|"net"|...: ...}`` and ``module.`` / ``model.`` / ``_orig_mod.`` prefixes are
  removed; the class count and input channels are read from the weights; the input normalisation
  comes from the weights when nonrobust's own ``normalize`` buffers are in them, else from
  :attr:`ModelOptions.normalize`. A ``.safetensors`` state dict works the same way.
- ``robustbench:NAME[:DATASET[:THREAT]]`` — RobustBench's own ``load_model``, imported lazily
  (``pip install robustbench``; it needs torchvision).
- :func:`convert` writes either as a nonrobust checkpoint (``nonrobust models convert``), so that
  nothing downstream touches a pickle again.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch
from torch import nn

from . import models
from .data import DATASETS
from .errors import UserError, check
from .fields import setting
from .split import default_layer

if TYPE_CHECKING:
    from .models import CheckpointMeta

log = logging.getLogger(__name__)

__all__ = ["NORMALIZATIONS", "ModelOptions", "parse_normalize", "parse_arch_options", "is_state_dict_spec", "read_state_dict",
           "load_state_dict_model", "is_robustbench_spec", "load_robustbench", "convert"]

NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": (DATASETS["cifar10"].mean, DATASETS["cifar10"].std),
    "cifar100": (DATASETS["cifar100"].mean, DATASETS["cifar100"].std),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "none": ((0.0,), (1.0,)),
}
"""Named input normalisations ``(mean, std)`` per channel (``none``: the weights take images in [0,1] as they are).
``cifar10`` and ``cifar100`` are the training sets' per-channel mean and standard deviation, read from the data sets'
registry (:data:`nonrobust.data.DATASETS`, their one home); some code bases use std (0.2023, 0.1994, 0.2010) for
CIFAR-10 instead: pass those numbers explicitly."""

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "ema")
"""Keys under which training scripts commonly nest the weights, tried in this order."""
PREFIXES = ("module.", "model.", "_orig_mod.")
"""Prefixes that DataParallel, wrapper modules and ``torch.compile`` put before every key; removed while all keys share one."""

ROBUSTBENCH_THREATS = ("Linf", "L2", "corruptions")
_ROBUSTBENCH_DATA = {"cifar10": (10, 32), "cifar100": (100, 32), "imagenet": (1000, 224)}  # classes, image side


@dataclass(frozen=True)
class ModelOptions:
    """What a model from outside nonrobust needs besides its file (ignored for nonrobust checkpoints and shipped names).

    Attributes:
        num_classes: the logits of an ``ARCH=weights.pt`` model (default: read from the weights).
        normalize: the input normalisation its weights expect: a name in :data:`NORMALIZATIONS` or
            ``MEAN,STD`` numbers (two, or one mean and one std per channel); required unless the
            weights carry nonrobust's ``normalize`` buffers.
        arch_options: the architecture's options as ``key=value,…`` (e.g. ``depth=34,widen=10`` for ``wrn28_10``).
        model_dir: where RobustBench models are kept (default: ``robustbench`` in the data directory).
    """

    num_classes: int | None = setting(None, "classes of an ARCH=weights.pt model (default: read from the weights)", "positive_int")
    normalize: str | None = setting(None, "input normalisation an ARCH=weights.pt model expects: cifar10, cifar100, imagenet, none "
                                    "or MEAN,STD numbers (default: the weights' own nonrobust normalisation buffers)")
    arch_options: str | None = setting(None, "options of the architecture of ARCH=weights.pt, key=value,… (e.g. depth=34,widen=10)")
    model_dir: str | None = setting(None, "where RobustBench models are kept (default: DATA_DIR/robustbench)")

    def __post_init__(self) -> None:
        if self.normalize is not None:  # a misspelt name is refused here, before any model is read
            name = self.normalize.strip().lower()
            try:
                numbers = [float(v) for v in name.split(",")] if name not in NORMALIZATIONS else []
            except ValueError:
                numbers = None
            check(name in NORMALIZATIONS or numbers is not None,
                  f"--normalize {self.normalize!r}: use one of {', '.join(NORMALIZATIONS)} or MEAN,STD numbers")


# --------------------------------------------------------------------------- option parsing
def parse_normalize(text: str, channels: int) -> tuple[list[float], list[float]]:
    """``(mean, std)`` with ``channels`` values each, from a :data:`NORMALIZATIONS` name or ``MEAN,STD`` numbers.

    ``MEAN,STD`` is two numbers (the same for every channel) or ``2·channels`` numbers (the means, then the stds).
    Raises :class:`UserError` for anything else, or a named normalisation made for another channel count.
    """
    name = text.strip().lower()
    if name in NORMALIZATIONS:
        named_mean, named_std = NORMALIZATIONS[name]
        if len(named_mean) == 1:
            return [named_mean[0]] * channels, [named_std[0]] * channels
        check(len(named_mean) == channels,
              f"--normalize {name} is for {len(named_mean)}-channel images, the model takes {channels}: pass MEAN,STD numbers")
        return list(named_mean), list(named_std)
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"--normalize {text!r}: use one of {', '.join(NORMALIZATIONS)} or MEAN,STD numbers") from None
    if len(values) == 2:
        mean, std = [values[0]] * channels, [values[1]] * channels
    elif len(values) == 2 * channels:
        mean, std = values[:channels], values[channels:]
    else:
        raise UserError(f"--normalize {text!r}: give 2 numbers (MEAN,STD) or {2 * channels} (the {channels} means, then the {channels} stds)")
    check(all(s > 0 for s in std), f"--normalize {text!r}: every std must be > 0")
    return mean, std


def parse_arch_options(text: str | None) -> dict[str, Any]:
    """``key=value,…`` as a dict; a value is read as JSON when it is JSON (numbers, true/false), else kept as text."""
    import json

    out: dict[str, Any] = {}
    for item in filter(None, (t.strip() for t in (text or "").split(","))):
        key, sep, value = item.partition("=")
        check(bool(sep and key.strip()), f"architecture options {text!r}: expected KEY=VALUE[,KEY=VALUE…] (e.g. depth=34,widen=10)")
        try:
            out[key.strip()] = json.loads(value.strip())
        except json.JSONDecodeError:
            out[key.strip()] = value.strip()
    return out


# --------------------------------------------------------------------------- state dicts
_STATE_DICT_SPEC = re.compile(r"^(?P<arch>[A-Za-z_]\w*)=(?P<path>.+)$")


def is_state_dict_spec(model_arg: str) -> bool:
    """Whether ``model_arg`` is ``ARCH=path`` (a registered architecture's weights in a file)."""
    return bool(_STATE_DICT_SPEC.match(str(model_arg)))


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of a state dict saved with ``torch.save`` (``.pt``/``.pth``/``.bin``) or as safetensors.

    Pickled files are read with ``torch.load(weights_only=True)``: only tensors and plain containers
    are rebuilt, so nothing in the file runs. Wrappers (:data:`WRAPPER_KEYS`) and common key prefixes
    (:data:`PREFIXES`) are removed. Returns the tensors on the CPU.

    Raises:
        UserError: a missing or unreadable file, one that holds code or objects other than tensors
            (e.g. a whole pickled model), or no state dict inside.
    """
    path = Path(path)
    check(path.is_file(), f"{path}: no such file")
    with open(path, "rb") as fh:
        head = fh.read(9)
    if head[8:9] == b"{":  # safetensors: an 8-byte header length, then the JSON header
        obj = _read_safetensors(path)
    else:
        obj = _read_pickle(path)
    state = _unwrap_state(obj, path)
    return _strip_prefixes(state)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises several types for bad headers
        raise UserError(f"{path}: not a readable safetensors or PyTorch file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None


def _read_pickle(path: Path) -> Any:
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found is None:  # not a forbidden object: a broken or foreign file
            raise UserError(f"{path}: not a readable PyTorch file ({(str(exc).splitlines() or ['UnpicklingError'])[0][:160]})") from None
        raise UserError(f"{path}: refused: besides tensors it holds {found[1]}, which only a full unpickler (one that can run code) "
                        "would rebuild; save the weights alone with torch.save(model.state_dict(), PATH)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable PyTorch file ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _unwrap_state(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(4):  # nested wrappers, e.g. {"model": {"state_dict": ...}}
        if _is_tensor_dict(obj):
            return dict(obj)
        if not isinstance(obj, Mapping):
            break
        key = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
            if tensors and all(isinstance(k, str) for k in tensors):
                return tensors  # a state dict with a few non-tensor entries (e.g. a version number)
            break
        obj = obj[key]
    keys = ", ".join(map(str, list(obj)[:6])) if isinstance(obj, Mapping) else type(obj).__name__
    raise UserError(f"{path}: no state dict found (top level: {keys}): expected tensors by parameter name, "
                    f"possibly under one of {', '.join(WRAPPER_KEYS)}")


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def _inferred(arch: str, state: Mapping[str, torch.Tensor], options: dict[str, Any]) -> dict[str, int]:
    """The ``num_classes`` and ``in_channels`` the weights were made for, read from the tensors whose shapes depend on them."""
    out = {}
    base = {"num_classes": 10, "in_channels": 3}
    with torch.device("meta"):
        a = models.build(arch, **base, **options).state_dict()
    for name, other in (("num_classes", 11), ("in_channels", 2)):
        with torch.device("meta"):
            b = models.build(arch, **{**base, name: other}, **options).state_dict()
        for key, t in a.items():
            if key.startswith("normalize.") or key not in state or t.shape == b[key].shape:
                continue
            dims = [d for d in range(t.dim()) if t.shape[d] != b[key].shape[d]]
            if len(dims) == 1 and state[key].dim() == t.dim():
                out[name] = int(state[key].shape[dims[0]])
                break
    return out


def load_state_dict_model(path: str | os.PathLike[str], arch: str, options: ModelOptions = ModelOptions(), *,
                          input_shape: tuple[int, int, int] | None = None, device: str | torch.device = "cpu") -> tuple[nn.Module, CheckpointMeta]:
    """Build registered architecture ``arch`` and load the state dict at ``path`` into it, strictly.

    Args:
        path: weights as :func:`read_state_dict` reads them.
        arch: a name in :data:`nonrobust.models.ARCHITECTURES`.
        options: :class:`ModelOptions` (class count, normalisation, architecture options).
        input_shape: ``(C, H, W)`` of the images it will see (recorded in the metadata; default the
            architecture's native size with the channels read from the weights).
        device: where the model goes.

    Returns:
        ``(model, meta)``: the model in eval mode with ``nonrobust_meta`` set, and a
        :class:`~nonrobust.models.CheckpointMeta` recording where it came from.

    Raises:
        UserError: an unknown architecture or option, no normalisation where one is needed, or
            weights that do not fit (the message counts missing, unexpected and wrongly shaped keys).
    """
    from .runtime import resolve_device

    spec = models.arch_spec(arch)
    arch_options = parse_arch_options(options.arch_options)
    state = read_state_dict(path)
    found = _inferred(arch, state, arch_options)
    num_classes = options.num_classes or found.get("num_classes", 10)
    channels = found.get("in_channels", input_shape[0] if input_shape else 3)
    own = "normalize.mean" in state and "normalize.std" in state
    if options.normalize is not None:
        mean, std = parse_normalize(options.normalize, channels)
        source = f"--normalize {options.normalize}"
    else:
        check(own, f"{path}: the weights do not say how inputs were normalised: pass --normalize "
                   f"{'|'.join(NORMALIZATIONS)}|MEAN,STD (what the model was trained with)")
        mean, std = state["normalize.mean"].flatten().tolist(), state["normalize.std"].flatten().tolist()
        source = "the weights' own normalize buffers"
    state = {k: v for k, v in state.items() if not k.startswith("normalize.")}
    with torch.device("meta"):
        skeleton = models.build(arch, num_classes, channels, mean, std, **arch_options)
    expected = {k: v for k, v in skeleton.state_dict().items() if not k.startswith("normalize.")}
    shape = tuple(input_shape) if input_shape else (channels, spec.input_size, spec.input_size)
    meta = models.make_meta(arch, num_classes=num_classes, arch_options=arch_options, mean=mean, std=std, input_shape=shape,
                            recipe={"source": f"state dict {Path(path).name}", "normalisation": source})
    problem = models.weight_mismatch(expected, state, meta)
    if problem:
        raise UserError(f"{path}: {problem}")
    model = models.build(arch, num_classes, channels, mean, std, **arch_options)
    missing, unexpected = model.load_state_dict(state, strict=False)
    check(not unexpected and all(k.startswith("normalize.") for k in missing), f"{path}: weights do not fit {arch}")
    model = model.eval().to(resolve_device(device))
    models.attach(model, meta)
    log.info("loaded %s from state dict %s (normalisation: %s)", meta.describe(), path, source)
    return model, meta


# --------------------------------------------------------------------------- RobustBench
_ROBUSTBENCH_SPEC = re.compile(r"^robustbench:(?P<name>[^:]+)(?::(?P<dataset>[^:]+))?(?::(?P<threat>[^:]+))?$")


def is_robustbench_spec(model_arg: str) -> bool:
    """Whether ``model_arg`` is ``robustbench:NAME[:DATASET[:THREAT]]``."""
    return str(model_arg).startswith("robustbench:")


def load_robustbench(spec: str, options: ModelOptions = ModelOptions(), *, data_dir: str | os.PathLike[str] | None = None,
                     device: str | torch.device = "cpu") -> tuple[nn.Module, CheckpointMeta]:
    """``robustbench:NAME[:DATASET[:THREAT]]`` (defaults cifar10, Linf) through RobustBench's own ``load_model``.

    RobustBench models take images in [0,1] (their normalisation is inside). The checkpoint is read
    from (or downloaded to) ``options.model_dir``, default ``DATA_DIR/robustbench``; offline, a
    ``model_dir`` that already holds ``DATASET/THREAT/NAME.pt`` works. Returns ``(model, meta)``
    as :func:`load_state_dict_model` does; the split layer is the last BatchNorm (else conv).

    Raises:
        UserError: a malformed spec, RobustBench not installed (with the install command), or a
            checkpoint that is missing and cannot be downloaded (naming the file and where to put it).
    """
    from .data import default_data_dir
    from .runtime import resolve_device

    m = _ROBUSTBENCH_SPEC.match(str(spec))
    check(m is not None, f"{spec!r}: expected robustbench:NAME[:DATASET[:THREAT]], e.g. robustbench:Carmon2019Unlabeled:cifar10:Linf")
    assert m is not None
    name, dataset, threat = m["name"], (m["dataset"] or "cifar10").lower(), m["threat"] or "Linf"
    check(dataset in _ROBUSTBENCH_DATA, f"{spec}: RobustBench data set must be one of {', '.join(_ROBUSTBENCH_DATA)}, got {dataset!r}")
    threat = next((t for t in ROBUSTBENCH_THREATS if t.lower() == threat.lower()), threat)
    check(threat in ROBUSTBENCH_THREATS, f"{spec}: RobustBench threat model must be one of {', '.join(ROBUSTBENCH_THREATS)}, got {threat!r}")
    try:
        from robustbench.utils import load_model
    except ImportError:
        raise UserError("robustbench:… models need RobustBench: pip install robustbench (it pulls torchvision; on a GPU machine "
                        "install it next to your CUDA torch, see README 'Bring your own model')") from None
    model_dir = Path(options.model_dir).expanduser() if options.model_dir else (Path(data_dir).expanduser() if data_dir else default_data_dir()) / "robustbench"
    expected = model_dir / dataset / threat / f"{name}.pt"
    try:
        model = load_model(model_name=name, dataset=dataset, threat_model=threat, model_dir=str(model_dir))
    except Exception as exc:  # RobustBench raises many kinds: unknown name (KeyError), no network, bad file
        what = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
        if not expected.is_file():
            raise UserError(f"{spec}: RobustBench could not load it and {expected} does not exist ({what}): with no network, "
                            f"download {name}.pt on another machine and put it at that path (or pass --model-dir)") from None
        raise UserError(f"{spec}: RobustBench could not load it ({what})") from None
    check(isinstance(model, nn.Module), f"{spec}: RobustBench returned {type(model).__name__}, not a torch.nn.Module")
    num_classes, side = _ROBUSTBENCH_DATA[dataset]
    model = model.to(resolve_device(device)).eval()
    meta = models.CheckpointMeta(arch=f"robustbench:{name}:{dataset}:{threat}", num_classes=num_classes, input_shape=(3, side, side),
                                 mean=[0.0] * 3, std=[1.0] * 3, split_layer=default_layer(model) or "?", dataset=dataset,
                                 recipe={"source": f"RobustBench {name} ({dataset}, {threat}); normalisation is the model's own",
                                         "model_dir": str(model_dir)})
    models.attach(model, meta)
    return model, meta


# --------------------------------------------------------------------------- conversion
def convert(path: str | os.PathLike[str], arch: str, out: str | os.PathLike[str], options: ModelOptions = ModelOptions(), *,
            input_shape: tuple[int, int, int] | None = None, dataset: str | None = None, classes: list[str] | None = None,
            dtype: torch.dtype | None = None) -> tuple[nn.Module, CheckpointMeta]:
    """Write the state dict at ``path`` (of architecture ``arch``) as a nonrobust checkpoint at ``out``, atomically.

    The checkpoint records the architecture and its options, the class count, the normalisation,
    the input shape, the source file and its SHA-256; loading it never unpickles anything.
    Returns ``(model, meta)`` as loaded.
    """
    import hashlib
    from dataclasses import asdict, replace

    from .identity import provenance

    model, meta = load_state_dict_model(path, arch, options, input_shape=input_shape)
    sha = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    meta = replace(meta, dataset=dataset, classes=list(classes) if classes else None,
                   recipe={**meta.recipe, "converted_from": str(path), "sha256": sha},
                   provenance=provenance(model=model, data=None, settings={"arch": arch, "options": asdict(options), "source_sha256": sha}))
    models.save(model, out, meta, dtype=dtype)
    models.attach(model, meta, source=f"{arch}={path}")
    return model, meta
