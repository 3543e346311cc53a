"""The measured sizes of an attack's perturbations: per image, and the one summary every result reports."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from .threat import exact_delta


def point_sizes(x: Tensor, x_adv: Tensor) -> dict[str, Tensor]:
    """Per-image measurements of an attack's output, each ``[B]``.

    ``linf``, ``l2``: sizes of ``x_adv − x`` in float64 (exact: float32 arithmetic would
    round them, possibly past the budget); ``nan``: count of non-finite values in
    ``x_adv`` (int64); ``min``, ``max``: value range of ``x_adv`` (its dtype).
    """
    delta, flat = exact_delta(x_adv, x).flatten(1), x_adv.flatten(1)
    return {"linf": delta.abs().amax(1), "l2": delta.norm(dim=1), "nan": (~torch.isfinite(flat)).sum(1),
            "min": flat.amin(1), "max": flat.amax(1)}


CHANGE_FLOOR = 1e-4
"""An image counts as *changed* by an attack when its perturbation's L∞ size exceeds this (in [0,1] pixel units, 1/39 of
one 8-bit grey level). Float round trips (AutoAttack's float32 projection, tanh space and back) move images that no attack
step changed by about 1e-7; those are not changes."""


def summarise_sizes(sizes: Mapping[str, Tensor]) -> dict[str, float | int | None]:
    """The one summary of an attack's perturbations that every result reports, as AutoAttack reports them.

    Args:
        sizes: per-point measurements (the columns of :func:`point_sizes`, of any number of points).

    Returns:
        ``points``; ``linf_max``, ``l2_median``, ``l2_max`` (sizes of ``x_adv − x``); ``nan`` (count of
        non-finite values in ``x_adv``); ``min``/``max`` (value range of ``x_adv``). Every value but
        ``points`` is ``None`` when there are no points.
    """
    points = int(sizes["l2"].numel())
    if points == 0:
        return {"points": 0, **{k: None for k in ("linf_max", "l2_median", "l2_max", "nan", "min", "max")}}
    return {"points": points, "linf_max": float(sizes["linf"].max()), "l2_median": float(sizes["l2"].median()),
            "l2_max": float(sizes["l2"].max()), "nan": int(sizes["nan"].sum()), "min": float(sizes["min"].min()),
            "max": float(sizes["max"].max())}


def perturbation_norms(x: Tensor, x_adv: Tensor) -> dict[str, float | int | None]:
    """:func:`summarise_sizes` of the batch ``x_adv`` of ``x`` (both ``[B, C, H, W]``)."""
    return summarise_sizes(point_sizes(x, x_adv))


