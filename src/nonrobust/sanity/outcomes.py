"""Per-image outcomes of the sanity checks and their summaries: Table 1's rows, 95% intervals, paired tests."""

from __future__ import annotations

import warnings
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import Tensor

from ..bottleneck import IBConfig, IBResult, apply_mask, distill
from ..split import LayerSplit
from ..stats import paired_counts, wilson


PARTS = ("int", "robust", "nonrobust")
"""Table 1's columns: the whole layer ``f_l+(Z)``, ``f_l+(Z_r)`` and ``f_l+(Z_nr)``."""

Batches = Callable[[], Iterable[tuple[Tensor, Tensor]]]


class Outcomes:
    """Per-image bool outcomes gathered batch by batch, under names such as ``ib/PGD-20/robust``."""

    def __init__(self) -> None:
        self.parts: dict[str, list[Tensor]] = {}

    def add(self, name: str, values: Tensor) -> None:
        self.parts.setdefault(name, []).append(values.detach().cpu())

    def tensors(self) -> dict[str, Tensor]:
        return {k: torch.cat(v) for k, v in self.parts.items()}


def share(values: Tensor) -> float:
    return int(values.sum()) / max(int(values.numel()), 1)  # an exact fraction of counts


def interval(values: Tensor) -> list[float] | None:
    interval = wilson(int(values.sum()), int(values.numel()))
    return None if interval is None else list(interval)


def table_of(out: Mapping[str, Tensor], source: str, inputs: list[str], versus: str | None = None,
           suffix: str = "") -> dict[str, Any]:
    """Table 1's ``rows`` (and ``ci95``) of one mask source; with ``versus``, the exact McNemar test of each entry
    against that source's on the same images (``a_only``: images right under this source only)."""
    table: dict[str, Any] = {"rows": {}, "ci95": {}}
    for inp in inputs:
        keys = {p: f"{source}/{inp}/{p}{suffix}" for p in PARTS if f"{source}/{inp}/{p}{suffix}" in out}
        table["rows"][inp] = {p: share(out[k]) for p, k in keys.items()}
        table["ci95"][inp] = {p: interval(out[k]) for p, k in keys.items()}
    if versus is not None:
        table["versus"] = {"source": versus, **{inp: {p: paired_counts(out[f"{source}/{inp}/{p}{suffix}"], out[f"{versus}/{inp}/{p}{suffix}"])
                                                      for p in ("robust", "nonrobust")} for inp in inputs}}
    return table


def with_intervals(table: dict[str, Any]) -> dict[str, Any]:
    """A Table 1 result (``rows`` of shares over ``n`` images) with the 95% Wilson interval of every entry as ``ci95``."""
    n = int(table["n"])
    return {**table, "ci95": {inp: {p: wilson(round(v * n), n) for p, v in row.items()} for inp, row in table["rows"].items()}}


def quiet_distill(split: LayerSplit, x: Tensor, y: Tensor, config: IBConfig, indices: Tensor) -> IBResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an all-robust or empty split is a finding here, shown in the channel counts
        return distill(split, x, y, config, indices=indices)


def predict(split: LayerSplit, z: Tensor, ctx: tuple[Any, ...], mask: Tensor) -> dict[str, Tensor]:
    with torch.no_grad():
        return {"robust": split.head(apply_mask(z, mask, split.layer), ctx).argmax(1),
                "nonrobust": split.head(apply_mask(z, ~mask, split.layer), ctx).argmax(1)}
