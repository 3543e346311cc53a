"""The report's context: what every step of a report reads (one module, so that running and rendering need not import each other)."""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from ..bottleneck import IBConfig, IBResult, distill
from ..data import ImageDataset
from ..split import LayerSplit
from .settings import ReportSettings
from .steps import Steps

__all__ = ["Context"]


@dataclass
class Context:
    """Everything a report step needs: the settings, the output folder, the model and its split, the evaluated images,
    the bottleneck's settings, the step cache, and what the run has gathered so far (notes, Table 3 rows)."""

    settings: ReportSettings
    out: Path
    model: nn.Module
    split: LayerSplit
    ds: ImageDataset
    device: torch.device
    ib: IBConfig
    steps: Steps
    progress: bool
    notes: list[str] = field(default_factory=list)
    attack_rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # each attack's Table 3 row, once per run
    subset: str = ""  # "" for the evaluated images, "-firstN" for a table run on the first N of them

    def first(self, n: int | None) -> "Context":
        """This context restricted to the first ``n`` evaluated images (itself when ``n`` is None or covers them all)."""
        if n is None or n >= len(self.ds):
            return self
        return replace(self, ds=self.ds.first(n), attack_rows={}, subset=f"-first{n}")

    def batches(self, n: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        ds = self.ds if n is None else self.ds.first(min(n, len(self.ds)))
        return ds.batches(self.settings.batch_size, device=self.device)

    def adv_path(self, key: str) -> Path:
        return self.out / "adversarial" / f"{key}{self.subset}.safetensors"

    @functools.cached_property
    def first_batch(self) -> tuple[torch.Tensor, torch.Tensor, IBResult]:
        """``(x, y, split)``: the first batch and its bottleneck split (per-image protocol), shared by the σ² plot and Fig. 3."""
        x, y = next(iter(self.batches()))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return x, y, distill(self.split, x, y, self.ib)
