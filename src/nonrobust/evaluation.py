"""Robust accuracy of a model under a list of attacks, streamed over batches.

:func:`evaluate_attacks` reports, per attack, the accuracy on its adversarial
examples, the per-point worst case over all attacks, and the measured
perturbation sizes (L∞ max, L2 median and max, NaN count, value range), as
AutoAttack reports them. :func:`attack_batch` is the one convention every loop
over a data set follows when it attacks a batch (seeds, image indices); the
resumable files that such loops write are :mod:`nonrobust.streams`.
"""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .attacks import Attack, point_sizes, summarise_sizes
from .errors import check
from .runtime import index_seed, make_generator

__all__ = ["NormStats", "evaluate_attacks", "batch_generator", "attack_batch"]

log = logging.getLogger(__name__)


def batch_generator(seed: int, batch_index: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator used for batch ``batch_index`` of a seeded run (so a resumed run draws the same numbers)."""
    return make_generator(index_seed(seed, batch_index), device)


def attack_batch(attack: Attack, model: nn.Module, x: Tensor, y: Tensor, *, seed: int, batch: int, start: int,
                 positions: Tensor | None = None) -> Tensor:
    """Batch number ``batch`` of a seeded run under ``attack``: the one convention every loop over a data set follows.

    The attack draws its random numbers from :func:`batch_generator` ``(seed, batch)`` and learns each
    image's index in the data set, ``start + positions`` (``positions``: the images' places in the
    batch, int64 ``[B]``, default ``0 … B−1``; NRF seeds its bottleneck with these indices, as Table 1
    does). An attack of a user's whose ``__call__`` has no ``indices`` parameter is called without it.

    Returns:
        ``x_adv``, shaped like ``x`` and in [0,1].
    """
    generator = batch_generator(seed, batch, x.device)
    positions = torch.arange(x.shape[0], device="cpu") if positions is None else positions.cpu()
    if "indices" in inspect.signature(attack.__call__).parameters:
        return attack(model, x, y, generator=generator, indices=start + positions)
    return attack(model, x, y, generator=generator)


@dataclass
class NormStats:
    """Per-point perturbation measurements of the points an attack was run on, gathered batch by batch."""

    sizes: list[dict[str, Tensor]] = field(default_factory=list)

    def add(self, x: Tensor, x_adv: Tensor) -> None:
        self.sizes.append({k: v.cpu() for k, v in point_sizes(x, x_adv).items()})

    def summary(self) -> dict[str, float | int | None]:
        """:func:`nonrobust.attacks.summarise_sizes` over every point added."""
        if not self.sizes:
            return summarise_sizes({"l2": torch.empty(0, device="cpu")})
        return summarise_sizes({k: torch.cat([s[k] for s in self.sizes]) for k in self.sizes[0]})


def evaluate_attacks(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    attacks: dict[str, Attack],
    *,
    seed: int = 0,
    total: int | None = None,
    progress: bool = True,
    cascade: bool = False,
) -> dict[str, Any]:
    """Clean and robust accuracy under each attack, plus the per-point worst case.

    Each attack runs only on points still correct: by default every attack on the
    points the model classifies correctly when clean (the others count as errors
    already), so the per-attack figures are comparable and the worst case is their
    intersection. With ``cascade=True`` (AutoAttack's way, cheaper) each attack
    runs only on the points that survived the attacks before it, so each
    attack's ``robust_accuracy`` is the worst case over it and its predecessors.

    Args:
        model: maps [0,1] images to logits.
        batches: yields ``(x [B,C,H,W] in [0,1], y int64 [B])`` on the model's device.
        attacks: display name -> attack.
        seed: batch ``i`` uses :func:`batch_generator` ``(seed, i)`` for every attack; each attack also
            gets the images' positions in ``batches`` (``indices``, which seed NRF's bottleneck).
        total: number of images, for the progress bar.

    Returns:
        ``{"n", "clean_accuracy", "attacks": {name: {"settings", "robust_accuracy",
        "success_rate", "perturbation", "seconds"}}, "worst_case_accuracy"}``;
        accuracies are fractions of all ``n`` images.
    """
    n = clean = 0
    correct = {name: 0 for name in attacks}
    norms = {name: NormStats() for name in attacks}
    seconds = {name: 0.0 for name in attacks}
    worst = 0
    bar = tqdm(total=total, desc="attacks", unit="img", disable=not progress, leave=False)
    for i, (x, y) in enumerate(batches):
        with torch.no_grad():
            ok = model(x).argmax(1) == y
        n += x.shape[0]
        clean += int(ok.sum())
        robust_all = ok.clone()
        for name, attack in attacks.items():
            todo = robust_all if cascade else ok
            idx = todo.nonzero().squeeze(1)
            if idx.numel() == 0:
                continue
            xs, ys = x[idx], y[idx]
            t0 = time.perf_counter()
            x_adv = attack_batch(attack, model, xs, ys, seed=seed, batch=i, start=n - x.shape[0], positions=idx)
            seconds[name] += time.perf_counter() - t0
            with torch.no_grad():
                still = model(x_adv).argmax(1) == ys
            correct[name] += int(still.sum())
            norms[name].add(xs, x_adv)
            robust_all[idx[~still]] = False
        worst += int(robust_all.sum())
        bar.update(x.shape[0])
    bar.close()
    check(n > 0, "no images to evaluate")
    clean_correct = max(clean, 1)
    return {
        "n": n,
        "clean_accuracy": clean / n,
        "attacks": {
            name: {
                "settings": attack.describe(),
                "robust_accuracy": correct[name] / n,
                "success_rate": (clean - correct[name]) / clean_correct if clean else None,
                "perturbation": norms[name].summary(),
                "seconds": round(seconds[name], 3),
            }
            for name, attack in attacks.items()
        },
        "worst_case_accuracy": worst / n,
        "mode": "cascade" if cascade else "individual",
    }
