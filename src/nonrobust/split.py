"""Cut any PyTorch model at one layer: ``f = f_l+ ∘ f_l``, ``Z = f_l(x)``.

The information bottleneck evaluates the head ``f_l+`` on ``Z + noise``
hundreds of times per batch, so the head must not recompute the layers before
the cut, and attacks need gradients through both parts. :func:`split_model`
does this for any model:

* ``method="fx"`` traces ``model.forward`` with :mod:`torch.fx` (the cut
  module is kept as one opaque call, so a whole block can be the cut) and
  partitions the graph into a prefix (everything that does not depend on
  ``Z``) and a head (``Z``'s descendants). Values the head needs from the
  prefix besides ``Z`` (a skip connection, a branch straight from the input)
  travel as ``context``; values that do not depend on the input (parameters,
  buffers, constants) are recomputed in the head instead. The generated code
  runs against the live model, so ``train()``/``eval()``/``to()``, buffer
  replacement and in-place weight updates always apply; the graph is traced
  once per train/eval configuration of the model's modules (Python attributes
  read in ``forward`` other than parameters and buffers are frozen at trace
  time, as with any fx trace).
* ``method="hooks"`` is the fallback for models fx cannot trace (data-dependent
  control flow): ``features`` stops the forward pass at the layer with a
  hook, ``context`` is ``(x,)`` and ``head`` re-runs the model on ``x`` with the
  layer's output replaced by ``z``. It is exact but slower: every head call
  recomputes the prefix.

``context`` values must come from the same ``x`` as ``z``: call
:meth:`LayerSplit.features_and_context` once and reuse its context for every
head evaluation on that batch. The head never modifies ``z`` or ``context`` in
place (it works on copies, since layers such as ``ReLU(inplace=True)`` after
the cut would overwrite them).
"""

from __future__ import annotations

import contextlib
import difflib
import itertools
import linecache
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterator, cast

import torch
import torch.fx as fx
from torch import Tensor, nn

from .errors import UserError, check

__all__ = ["LayerSplit", "split_model", "list_layers", "layer_shapes", "feature_shape", "require_4d", "default_layer"]

logger = logging.getLogger(__name__)

_METHODS = ("auto", "fx", "hooks")
_KINDS = ("all", "leaf", "conv")
_CONTAINERS = (nn.ModuleList, nn.ModuleDict, nn.ParameterList, nn.ParameterDict)
_compiled = itertools.count()  # numbers the generated sources for tracebacks


class _Untraceable(Exception):
    """torch.fx could not trace the model (the reason is the message)."""


class _Stop(BaseException):
    """Carries the layer's output out of an aborted forward pass.

    A ``BaseException`` so that a model's own ``except Exception`` cannot swallow it.
    """

    def __init__(self, value: Any) -> None:
        super().__init__()
        self.value = value


@dataclass(frozen=True)
class _FxParts:
    """The three programs cut from one trace; each takes the live model as ``self``."""

    features: Callable[..., Any]  # (model, *inputs) -> z
    prefix: Callable[..., Any]  # (model, *inputs) -> (z, *context)
    head: Callable[..., Any]  # (model, z, *context) -> model output
    context: tuple[str, ...]  # names of the values crossing the cut besides z


class LayerSplit:
    """A model cut at one layer (a dotted module path such as ``features.41`` or ``block3.0.bn1``).

    Build it with :func:`split_model`. ``model`` is the original module, shared
    (never copied): changing its mode, device or weights changes the split.

    Attributes:
        model: the model that was split.
        layer: the dotted name of the cut layer.
        method: ``"fx"`` (traced; the head runs only what follows the cut) or
            ``"hooks"`` (forward hooks; the head re-runs the model, slower).
    """

    def __init__(self, model: nn.Module, layer: str, method: str) -> None:
        check(method in ("fx", "hooks"), f"unknown split method {method!r}: use fx or hooks")
        self.model, self.layer, self.method = model, layer, method
        self._module = _resolve_layer(model, layer)
        self._fx: dict[tuple[bool, ...], _FxParts] = {}
        if method == "fx":
            # Traced code bakes in the `self.training` of the modules it traces through: key traces on them.
            tracer = _CutTracer(model, layer, self._module)
            self._traced = [m for name, m in model.named_modules() if not tracer.is_leaf_module(m, name)]
            self._fx[self._mode_key()] = _build_fx(model, layer, self._module)

    def __repr__(self) -> str:
        return f"LayerSplit({type(self.model).__name__}, layer={self.layer!r}, method={self.method!r})"

    @property
    def needs_context(self) -> bool:
        """Whether :meth:`head` needs values besides ``z`` (always true for the hooks method)."""
        return self.method == "hooks" or bool(self._parts().context)

    def features(self, x: Tensor) -> Tensor:
        """``Z = f_l(x)``: the layer's output for input ``x`` ([B, ...] -> [B, C, H, W] for conv layers).

        Computes only what ``Z`` needs (nothing after the layer runs).
        """
        if self.method == "fx":
            return self._tensor(self._parts().features(self.model, x))
        return self._tensor(self._run_to_layer(x))

    def features_and_context(self, x: Tensor) -> tuple[Tensor, tuple[Any, ...]]:
        """``(Z, context)``: ``Z`` plus every other value the head needs, all computed from ``x``.

        ``context`` is ``()`` when only ``Z`` crosses the cut. With the fx method it
        holds the crossing values (tensors, or plain values such as ``x.size(0)``);
        with the hooks method it is ``(x,)``.
        """
        if self.method == "hooks":
            return self.features(x), (x,)
        z, *context = self._parts().prefix(self.model, x)
        return self._tensor(z), tuple(context)

    def head(self, z: Tensor, context: tuple[Any, ...] = (), *, consume: bool = False) -> Any:
        """``f_l+(z, context)``: the model's output (logits [B, K], or whatever ``model`` returns) from ``z``.

        ``context`` must be the one :meth:`features_and_context` returned for the
        same ``x`` (batch dimensions must match ``z``'s). ``z`` and ``context``
        are not modified, unless ``consume=True``: then ``z`` (a fresh tensor the
        caller will not reuse, such as ``z + noise``) is used without a copy.
        Gradients flow to ``z`` (and to ``context``).
        """
        parts = self._parts() if self.method == "fx" else None
        names = parts.context if parts else ("x",)
        if not context and names:
            raise UserError(f"layer {self.layer!r} of {type(self.model).__name__} needs context ({', '.join(names)} "
                            "cross the cut besides z): call features_and_context(x) and pass its context to head")
        check(len(context) == len(names), f"head got {len(context)} context value(s) but layer {self.layer!r} needs "
              f"{len(names)} ({', '.join(names) or 'none'}): pass the context from features_and_context(x)")
        if parts is None:
            return self._run_with_layer_output(context[0], z)
        return parts.head(self.model, z if consume else _copy(z), *map(_copy, context))

    def __call__(self, x: Tensor) -> Any:
        """``head(*features_and_context(x))``: equals ``model(x)``."""
        return self.head(*self.features_and_context(x))

    # -- internals ---------------------------------------------------------

    def _parts(self) -> _FxParts:
        key = self._mode_key()
        if key not in self._fx:  # first call in a new train/eval configuration: trace it too
            try:
                self._fx[key] = _build_fx(self.model, self.layer, self._module)
            except _Untraceable as exc:
                raise UserError(f"{type(self.model).__name__} cannot be traced by torch.fx in its current "
                                f"train/eval mode ({exc}): use split_model(..., method='hooks')") from None
        return self._fx[key]

    def _mode_key(self) -> tuple[bool, ...]:
        return tuple(m.training for m in self._traced)

    def _tensor(self, z: Any) -> Tensor:
        check(isinstance(z, Tensor), f"layer {self.layer!r} of {type(self.model).__name__} outputs a "
              f"{type(z).__name__}, not a tensor: choose a layer whose output is one tensor")
        return cast(Tensor, z)

    def _run_to_layer(self, x: Tensor) -> Any:
        def stop(module: nn.Module, args: Any, output: Any) -> None:
            raise _Stop(output)

        handle = self._module.register_forward_hook(stop)
        try:
            self.model(x)
        except _Stop as stopped:
            return stopped.value
        finally:
            handle.remove()
        raise UserError(f"layer {self.layer!r} was not called when running {type(self.model).__name__} "
                        "on this input: choose a layer that forward always uses")

    def _run_with_layer_output(self, x: Tensor, z: Tensor) -> Any:
        calls = 0

        def replace(module: nn.Module, args: Any, output: Any) -> Tensor:
            nonlocal calls
            calls += 1
            check(calls == 1, f"layer {self.layer!r} is called more than once in {type(self.model).__name__}'s "
                  "forward (a shared module), so the cut is ambiguous: choose a layer that is called once")
            return cast(Tensor, _copy(z))

        handle = self._module.register_forward_hook(replace)
        try:
            out = self.model(x)
        finally:
            handle.remove()
        check(calls == 1, f"layer {self.layer!r} was not called when running {type(self.model).__name__} "
              "on this input: choose a layer that forward always uses")
        return out


def split_model(model: nn.Module, layer: str, method: str = "auto") -> LayerSplit:
    """Cut ``model`` at ``layer`` (a dotted module name, see :func:`list_layers`).

    ``method``: ``"fx"`` (torch.fx partition; the head runs only what follows the
    cut), ``"hooks"`` (forward hooks; works on any model, but every head call
    re-runs the model up to the layer) or ``"auto"`` (fx when the model traces,
    else hooks with a logged warning). Raises :class:`UserError` for an unknown
    or ambiguous layer, or ``method="fx"`` on a model fx cannot trace.
    """
    check(method in _METHODS, f"unknown split method {method!r}: use {', '.join(_METHODS)}")
    name = type(model).__name__
    if method == "hooks":
        why = "method='hooks' asked for"
    else:
        try:
            return LayerSplit(model, layer, "fx")
        except _Untraceable as exc:
            if method == "fx":
                raise UserError(f"{name} cannot be traced by torch.fx ({exc}): use method='hooks' or 'auto'") from None
            why = f"{name} cannot be traced by torch.fx ({exc})"
    split = LayerSplit(model, layer, "hooks")
    logger.warning("%s: splitting at %r with forward hooks, so head() re-runs the model up to that "
                   "layer on every call (slower than the fx split)", why, layer)
    return split


def list_layers(model: nn.Module, kind: str = "all") -> list[str]:
    """Dotted names of the modules of ``model`` usable as cut points, in definition order.

    ``kind``: ``"all"`` (every named submodule, blocks included, except pure
    containers such as ``ModuleList`` that forward never calls), ``"leaf"``
    (modules without children) or ``"conv"`` (``Conv2d`` and ``BatchNorm2d``
    layers, whose outputs are 4-D feature maps).
    """
    check(kind in _KINDS, f"unknown layer kind {kind!r}: use {', '.join(_KINDS)}")
    keep: Callable[[nn.Module], bool] = {
        "all": lambda m: not isinstance(m, _CONTAINERS),
        "leaf": lambda m: not isinstance(m, _CONTAINERS) and next(m.children(), None) is None,
        "conv": lambda m: isinstance(m, (nn.Conv2d, nn.BatchNorm2d)),
    }[kind]
    return [name for name, m in model.named_modules() if name and keep(m)]


def layer_shapes(model: nn.Module, input_shape: tuple[int, int, int]) -> dict[str, tuple[str, tuple[int, ...] | None]]:
    """Each :func:`list_layers` layer's type and output shape for one image of ``input_shape``, in one forward pass.

    Returns ``{name: (type name, shape without the batch axis)}``; the shape is ``None`` for a layer
    whose output is not a tensor or that the forward pass never calls. The model's modes are kept.
    """
    check(len(input_shape) == 3 and all(isinstance(s, int) and s > 0 for s in input_shape),
          f"input shape {tuple(input_shape)} is not (channels, height, width) with positive sizes")
    modules = dict(model.named_modules())
    shapes: dict[str, tuple[int, ...] | None] = {}

    def record(name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:  # noqa: ARG001
            shapes[name] = tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else None
        return hook

    names = list_layers(model)
    handles = [modules[n].register_forward_hook(record(n)) for n in names]
    tensors = [*model.parameters(), *model.buffers()]
    device = tensors[0].device if tensors else torch.device("cpu")
    try:
        with torch.no_grad(), _eval_mode(model):
            model(torch.zeros((1, *input_shape), device=device))
    finally:
        for h in handles:
            h.remove()
    return {n: (type(modules[n]).__name__, shapes.get(n)) for n in names}


def feature_shape(split: LayerSplit, input_shape: tuple[int, int, int]) -> tuple[int, ...]:
    """Shape of ``Z`` for one image of shape ``input_shape`` (e.g. ``(3, 32, 32)`` -> ``(C, H, W)``).

    Runs a batch of one zero image on the model's device, in eval mode and
    without gradients; the model's modes and statistics are left unchanged.
    """
    check(len(input_shape) == 3 and all(isinstance(s, int) and s > 0 for s in input_shape),
          f"input shape {tuple(input_shape)} is not (channels, height, width) with positive sizes")
    tensors = [*split.model.parameters(), *split.model.buffers()]
    floats = [t for t in tensors if t.is_floating_point()]
    device = tensors[0].device if tensors else torch.device("cpu")
    dtype = floats[0].dtype if floats else torch.get_default_dtype()
    with torch.no_grad(), _eval_mode(split.model):
        z = split.features(torch.zeros((1, *input_shape), device=device, dtype=dtype))
    return tuple(z.shape[1:])


def check_feature_map(split: LayerSplit, x: Tensor) -> Tensor:
    """``Z = f_l(x)`` (eval mode, no grad; modes left unchanged), checked by :func:`require_4d` before any work starts."""
    with torch.no_grad(), _eval_mode(split.model):
        return require_4d(split.features(x), split.layer, split.model)


def require_4d(z: Tensor, layer: str, model: nn.Module | None = None) -> Tensor:
    """Return ``z`` if it is a 4-D feature map [B, C, H, W], else raise :class:`UserError`.

    With ``model``, the message suggests some of its convolutional layers.
    """
    if z.dim() != 4:
        convs = list_layers(model, "conv")[-3:] if model is not None else []
        such_as = ", ".join(convs) if convs else "a Conv2d or BatchNorm2d layer (see list_layers(model, 'conv'))"
        raise UserError(f"layer {layer!r} outputs shape {list(z.shape)}: the bottleneck needs a 4-D feature map "
                        f"[B, C, H, W]; choose a convolutional layer such as {such_as}")
    return z


# -- helpers ---------------------------------------------------------------


def _copy(value: Any) -> Any:
    return value.clone() if isinstance(value, Tensor) else value


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _resolve_layer(model: nn.Module, layer: str) -> nn.Module:
    """The module named ``layer``, or a :class:`UserError` listing the available ones."""
    name = type(model).__name__
    try:
        module = model.get_submodule(layer) if layer else None
    except AttributeError:
        module = None
    if module is None:
        names = list_layers(model)
        close = difflib.get_close_matches(layer, names, n=3)
        hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
        shown = ", ".join(names) if len(names) <= 20 else f"{', '.join(names[:12])}, …, {', '.join(names[-4:])} ({len(names)} in all)"
        raise UserError(f"no layer {layer!r} in {name}{hint}; available layers: {shown or 'none'}")
    if isinstance(module, _CONTAINERS):
        inner = list_layers(module)[:3]
        raise UserError(f"layer {layer!r} of {name} is a {type(module).__name__}, which forward never calls as a "
                        f"whole: choose one of its entries, such as {', '.join(f'{layer}.{n}' for n in inner) or 'a leaf layer'}")
    return module


class _CutTracer(fx.Tracer):
    """Treats the cut module as one opaque call, and traces into every module containing it."""

    def __init__(self, model: nn.Module, layer: str, cut: nn.Module) -> None:
        super().__init__()
        parts = layer.split(".")
        self._cut = cut
        self._around = {id(model)} | {id(model.get_submodule(".".join(parts[:i]))) for i in range(1, len(parts))}

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if m is self._cut:
            return True
        return id(m) not in self._around and super().is_leaf_module(m, module_qualified_name)


def _build_fx(model: nn.Module, layer: str, module: nn.Module) -> _FxParts:
    """Trace ``model`` and cut its graph at the single call of ``module``."""
    name = type(model).__name__
    try:
        graph = _CutTracer(model, layer, module).trace(model)
    except Exception as exc:  # fx raises many types (TraceError, TypeError, RuntimeError, ...)
        message = str(exc).strip().splitlines()
        raise _Untraceable(f"{type(exc).__name__}: {message[0][:200] if message else ''}") from exc

    nodes = list(graph.nodes)
    cuts = [n for n in nodes if n.op == "call_module" and model.get_submodule(n.target) is module]
    check(len(cuts) <= 1, f"layer {layer!r} is called {len(cuts)} times in {name}'s forward (a shared module), "
          "so the cut is ambiguous: choose a layer that is called once")
    check(len(cuts) == 1, f"layer {layer!r} is never called in {name}'s forward (unused, or not called as a "
          "module): choose a layer that forward calls")
    cut = cuts[0]

    post = _closure([cut], lambda n: n.users) - {cut}  # everything computed from Z, the output included
    output = nodes[-1]
    check(output in post, f"the output of {name} does not depend on layer {layer!r}: choose a layer on the path "
          "to the output")
    on_input: dict[fx.Node, bool] = {}
    for n in nodes:
        on_input[n] = n.op == "placeholder" or any(on_input[a] for a in n.all_input_nodes)
    crossing = [n for n in nodes if n not in post and n is not cut and any(u in post for u in n.users)]
    context = [n for n in crossing if on_input[n]]
    constants = [n for n in crossing if not on_input[n]]  # parameters, buffers, ...: recomputed in the head
    # Nodes nobody uses are there for their side effects (e.g. `h.relu_()` without assignment): keep them.
    effects = [n for n in nodes if not n.users and n.op != "output" and n not in post]
    ancestors: Callable[[list[fx.Node]], set[fx.Node]] = lambda roots: _closure(roots, lambda n: n.all_input_nodes)  # noqa: E731
    order = {n: i for i, n in enumerate(nodes)}

    features = _compile(nodes, ancestors([cut] + [n for n in effects if order[n] < order[cut]]), None, cut)
    prefix = _compile(nodes, ancestors([cut] + context + effects), None, (cut, *context))
    head_inputs = {cut: "z", **{n: f"context_{n.name}" for n in context}}
    head = _compile(nodes, post | ancestors(constants), head_inputs, output)
    return _FxParts(features, prefix, head, tuple(n.name for n in context))


def _closure(roots: list[fx.Node], step: Callable[[fx.Node], Any]) -> set[fx.Node]:
    seen, stack = set(roots), list(roots)
    while stack:
        for m in step(stack.pop()):
            if m not in seen:
                seen.add(m)
                stack.append(m)
    return seen


def _compile(nodes: list[fx.Node], keep: set[fx.Node], inputs: dict[fx.Node, str] | None,
             result: Any) -> Callable[..., Any]:
    """Copy ``keep`` (in order) into a new graph and compile it to ``forward(self, ...)``.

    ``inputs`` maps nodes to new placeholder names; ``None`` keeps the original
    placeholders. ``result`` is the original output node or the value(s) to return.
    The function's ``self`` is the original model, so every module, parameter and
    buffer is looked up live on each call.
    """
    graph, env = fx.Graph(), {}
    if inputs is not None:
        env.update({n: graph.placeholder(label) for n, label in inputs.items()})
    for n in nodes:
        copy_input = n.op == "placeholder" and inputs is None
        if copy_input or (n in keep and n not in env and n.op not in ("placeholder", "output")):
            env[n] = graph.node_copy(n, env.__getitem__)
    if isinstance(result, fx.Node) and result.op == "output":
        graph.node_copy(result, env.__getitem__)
    else:
        graph.output(fx.node.map_arg(result, env.__getitem__))
    graph.lint()
    code = graph.python_code(root_module="self")
    filename = f"<nonrobust.split generated {next(_compiled)}>"
    linecache.cache[filename] = (len(code.src), None, code.src.splitlines(True), filename)  # readable tracebacks
    namespace = dict(code.globals)
    exec(compile(code.src, filename, "exec"), namespace)  # noqa: S102 - code generated by torch.fx
    return cast(Callable[..., Any], namespace["forward"])


def default_layer(model: nn.Module) -> str | None:
    """The split layer of a model without a registry entry: its last ``BatchNorm2d``, else its last ``Conv2d`` (``None``: neither)."""
    names = [n for n, mod in model.named_modules() if isinstance(mod, nn.BatchNorm2d)]
    names = names or [n for n, mod in model.named_modules() if isinstance(mod, nn.Conv2d)]
    return names[-1] if names else None
