"""Every route by which a model comes in: one ``resolve`` for every command's ``--model``.

The routes (:func:`model_route`): a shipped name, ``robustbench:NAME``, ``path/to/file.py:function``
(a user's own ``nn.Module``), a nonrobust ``.safetensors`` checkpoint, and ``ARCH=weights.pt`` (a
state dict of a registered architecture). This module depends on :mod:`nonrobust.models`
(checkpoints, the registry) and :mod:`nonrobust.foreign` (state dicts, RobustBench) and neither
of them on it, so the import graph has no cycle.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import cast

import torch
from torch import nn

from . import foreign, models
from .errors import UserError
from .runtime import resolve_device
from .split import default_layer

__all__ = ["resolve", "model_route", "ROUTE_NAMES", "ROUTE_OPTIONS", "is_python_spec", "load_python_model"]


def resolve(model_arg: str | os.PathLike[str], device: str | torch.device = "cpu",
            input_shape: tuple[int, int, int] | None = None, options: foreign.ModelOptions | None = None,
            data_dir: str | os.PathLike[str] | None = None) -> tuple[nn.Module, models.CheckpointMeta]:
    """Turn a command-line model argument into ``(model, meta)``; the model is in eval mode on ``device``.

    ``model_arg`` is one of (tried in this order):

    - a :data:`nonrobust.models.PRETRAINED` name (it wins over a file of the same name: write ``./name`` for the file);
    - ``robustbench:NAME[:DATASET[:THREAT]]`` (:func:`nonrobust.foreign.load_robustbench`);
    - ``path/to/file.py:function`` for a model the user brings (:func:`load_python_model`; runs
      that file's code, needs ``input_shape``);
    - the path of a nonrobust ``.safetensors`` checkpoint (:func:`nonrobust.models.load_with_meta`);
    - ``ARCH=weights.pt``, a state dict of a registered architecture
      (:func:`nonrobust.foreign.load_state_dict_model`; nothing in the file runs).

    ``options`` is a :class:`nonrobust.foreign.ModelOptions` (class count, normalisation,
    architecture options, RobustBench folder) for the foreign routes; ``data_dir`` is where the
    RobustBench folder defaults to.

    Raises:
        UserError: none of the above (the message lists the forms), or the route's own errors.
    """
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
    meta: models.CheckpointMeta | None
    if route == "pretrained":
        model, meta = models.pretrained_with_meta(arg, device)
    elif route == "robustbench":
        model, meta = foreign.load_robustbench(arg, options, data_dir=data_dir, device=device)
    elif route == "python":
        if input_shape is None:
            raise UserError(f"{arg}: a model from a Python file needs the input shape: pass --input-shape C H W (or --data)")
        model, meta = load_python_model(arg, input_shape, device)
    elif route == "checkpoint":
        model, meta = models.load_with_meta(arg, device, factory=_from_factory)
    elif route == "state_dict":
        arch, _, path = arg.partition("=")
        model, meta = foreign.load_state_dict_model(path, arch, options, input_shape=input_shape, device=device)
    else:
        model = meta = None
    if model is not None:
        assert meta is not None  # every route returns both
        models.attach(model, meta, source=arg)  # the name or path it was given as, for provenance (its identity is its content)
        return model, meta
    names = ", ".join(models.PRETRAINED) or "(none)"
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
    arg = str(model_arg)
    if arg in models.PRETRAINED:
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
_PY_SPEC = models.checkpoints.PYTHON_SPEC


def _from_factory(meta: models.CheckpointMeta) -> nn.Module:
    """The model a checkpoint of a user's factory (``arch`` = ``path/to/file.py:function``) holds weights of: built by that
    factory (this runs the file, as ``--model file.py:function`` does)."""
    return load_python_model(meta.arch, meta.input_shape)[0]


def is_python_spec(model_arg: str) -> bool:
    """Whether ``model_arg`` names a factory in a Python file (``path/to/file.py:function``)."""
    return bool(_PY_SPEC.match(str(model_arg)))


def load_python_model(spec: str, input_shape: tuple[int, int, int], device: str | torch.device = "cpu") -> tuple[nn.Module, models.CheckpointMeta]:
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
    layer = getattr(model, "nonrobust_split_layer", None) or default_layer(model)
    with torch.no_grad():
        try:
            logits = model(torch.zeros(1, *input_shape, device=next(model.parameters(), torch.zeros(0, device="cpu")).device))
        except Exception as exc:
            raise UserError(f"{spec}: the model fails on images of shape {list(input_shape)}: {type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    if not (isinstance(logits, torch.Tensor) and logits.dim() == 2):
        raise UserError(f"{spec}: the model must return logits [B, K], got {type(logits).__name__} {list(getattr(logits, 'shape', []))}")
    c = input_shape[0]
    meta = models.CheckpointMeta(arch=str(spec), num_classes=int(logits.shape[1]), input_shape=cast("tuple[int, int, int]", tuple(input_shape)),
                          mean=[0.0] * c, std=[1.0] * c, split_layer=layer or "?",
                          recipe={"source": "user-supplied Python factory; normalisation is the model's own"})
    models.attach(model, meta)
    return model, meta
