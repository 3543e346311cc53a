"""What every attack class shares: input validation, freezing the model, restarts and the settings record that keys it."""

from __future__ import annotations

import dataclasses
from dataclasses import fields
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

import torch
from torch import Tensor, nn

from ..errors import check
from ..io import tensor_fingerprint
from ..runtime import frozen
from .threat import _validate


def budget_text(eps: float | None) -> str:
    """A budget as people write it: ``8/255`` when it is a whole number of grey levels, else the number."""
    if eps is None:
        return "unbounded"
    levels = eps * 255
    return f"{round(levels)}/255" if abs(levels - round(levels)) < 1e-9 and round(levels) >= 1 else f"{eps:.4g}"


def _count(k: int, word: str, plural: str | None = None) -> str:
    return f"{k} {word if k == 1 else plural or word + 's'}"


_NORM_NAMES = {"linf": "L∞", "l2": "L2"}


class _Base:
    """Shared plumbing: validation, freezing the model, restarts and a settings record."""

    if TYPE_CHECKING:  # every attack class is a dataclass with a norm (a field or a property)
        __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

        @property
        def norm(self) -> str: ...

    name = "attack"
    family: ClassVar[str] = "attack"
    """The attacks this class implements, in words (e.g. "PGD family"): what option help and tables name it by."""

    @classmethod
    def summarise(cls, s: Mapping[str, Any]) -> str:
        """One line of what the settings ``s`` (a :meth:`describe` record) run: steps, step size, budget, restarts."""
        raise NotImplementedError

    def summary(self) -> str:
        """:meth:`summarise` of this attack's own settings: generated from what runs, never written by hand."""
        return self.summarise(self.describe())

    def describe(self) -> dict[str, Any]:
        """Every setting of this attack, with its name, norm and budget (``eps`` None = unbounded).

        Built from *every* dataclass field (see :func:`setting_value`), so it is a complete
        cache and resume key by construction: a new field can never be left out of it.
        """
        d = {f.name: setting_value(getattr(self, f.name)) for f in fields(self)}
        d["name"] = self.name
        d.setdefault("eps", None)
        d["norm"] = self.norm
        return d

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None = None,
                 indices: Tensor | None = None) -> Tensor:
        """Adversarial images ``[B,C,H,W]`` in [0,1] for ``x`` (same shape, in [0,1]) and labels ``y [B]``.

        ``indices`` (int64 ``[B]``, default ``0 … B−1``) are the images' positions in
        their data set; attacks that run the bottleneck (NRF) seed its noise with
        them, as Table 1 does, so an image gets the same noise wherever it is attacked.

        The output of a bounded attack lies in its ball exactly, as measured in float64
        (:meth:`Ball.projector` in the shared loop, :meth:`Ball.fit` on AutoAttack's output).
        """
        _validate(x, y)
        check(indices is None or tuple(indices.shape) == (x.shape[0],), f"indices must have shape [{x.shape[0]}], got "
                                                                        f"{None if indices is None else list(indices.shape)}")
        y = y.to(x.device)
        with frozen(model), torch.enable_grad():  # also when the caller is under torch.no_grad()
            return self._run(model, x.detach(), y, generator, indices)

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None, indices: Tensor | None) -> Tensor:
        raise NotImplementedError


def setting_value(value: Any) -> Any:
    """An attack setting as JSON-able data that identifies it completely.

    A dataclass (e.g. an :class:`~nonrobust.bottleneck.IBConfig`) becomes all of its
    fields; a tensor (e.g. a given mask) its shape, dtype and SHA-256 digest; a model
    split its layer's name; anything else is kept as it is.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: setting_value(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Tensor):
        return {"shape": list(value.shape), "dtype": str(value.dtype).removeprefix("torch."),
                "sha256": tensor_fingerprint([("", value)])}
    if hasattr(value, "features_and_context") and hasattr(value, "layer"):
        return {"layer": value.layer}
    return value


