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
from typing import Any, Iterable, Mapping, TypedDict

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .attacks import CHANGE_FLOOR, Attack, point_sizes, summarise_sizes
from .errors import check
from .runtime import index_seed, make_generator

__all__ = ["evaluate_attacks", "Evaluation", "AttackResult", "AttackSummary", "batch_generator", "attack_batch", "measure_batch",
           "robust_points", "summarise_points", "POINT_COLUMNS"]

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


POINT_COLUMNS = ("y", "clean_pred", "adv_pred", "linf", "l2", "nan", "min", "max")
"""The per-image record of one attacked image: label, clean and adversarial predictions (int64) and the measured sizes
of :func:`nonrobust.attacks.point_sizes`. Files of :func:`nonrobust.streams.attack_to_file` store these columns."""


def measure_batch(attack: Attack, model: nn.Module, x: Tensor, y: Tensor, *, seed: int, batch: int, start: int,
                  positions: Tensor | None = None, clean_pred: Tensor | None = None) -> dict[str, Tensor]:
    """One batch attacked and measured: the body of the one evaluation loop, whether its sink is memory or a file.

    The attack runs by :func:`attack_batch` (same arguments). ``clean_pred`` (int64 ``[B]``) is the model's
    prediction on ``x`` when the caller has it already (several attacks on one batch); else it is computed.
    Returns ``x_adv`` (``[B, C, H, W]`` in [0,1]) and the :data:`POINT_COLUMNS`, each ``[B]``.
    """
    x_adv = attack_batch(attack, model, x, y, seed=seed, batch=batch, start=start, positions=positions)
    with torch.no_grad():
        clean_pred = model(x).argmax(1) if clean_pred is None else clean_pred
        adv_pred = model(x_adv).argmax(1)
    return {"x_adv": x_adv, "y": y, "clean_pred": clean_pred, "adv_pred": adv_pred, **point_sizes(x, x_adv)}


def robust_points(points: Mapping[str, Tensor]) -> Tensor:
    """Bool ``[N]``: the images classified correctly both clean and attacked (those robust accuracy counts)."""
    return (points["clean_pred"] == points["y"]) & (points["adv_pred"] == points["y"])


class AttackSummary(TypedDict):
    """What one attack did to a set of images (:func:`summarise_points`); accuracies are fractions of all images."""

    clean_accuracy: float
    robust_accuracy: float
    success_rate: float
    perturbation: dict[str, float | int | None]
    perturbation_changed: dict[str, float | int | None]
    perturbation_fooled: dict[str, float | int | None]


def summarise_points(points: Mapping[str, Tensor]) -> AttackSummary:
    """Accuracy and perturbation sizes from the :data:`POINT_COLUMNS` of every image (``[N]`` each).

    ``success_rate`` is the fraction of clean-correct images the attack fooled. ``perturbation`` measures every
    image; ``perturbation_changed`` the images the attack changed beyond rounding (L∞ size above
    :data:`~nonrobust.attacks.CHANGE_FLOOR`: an attack that stops early leaves many unchanged, and their zeros, or
    float round-trip noise of 1e-7, would pull the median to nothing); ``perturbation_fooled`` only the images it
    turned from correct to wrong (the size of an unbounded attack's successes).
    """
    clean_ok, robust = points["clean_pred"] == points["y"], robust_points(points)
    fooled, changed = clean_ok & ~robust, points["linf"] > CHANGE_FLOOR
    sizes = {k: points[k] for k in ("linf", "l2", "nan", "min", "max")}
    n, n_clean = max(int(points["y"].numel()), 1), int(clean_ok.sum())
    return {  # exact fractions of counts (a float32 mean would round 0.225 to 0.22499999)
        "clean_accuracy": n_clean / n,
        "robust_accuracy": int(robust.sum()) / n,
        "success_rate": int(fooled.sum()) / max(n_clean, 1),
        "perturbation": summarise_sizes(sizes),
        "perturbation_changed": summarise_sizes({k: v[changed] for k, v in sizes.items()}),
        "perturbation_fooled": summarise_sizes({k: v[fooled] for k, v in sizes.items()}),
    }


class AttackResult(TypedDict, total=False):
    """One attack's entry in :func:`evaluate_attacks`' result."""

    settings: dict[str, Any]
    robust_accuracy: float
    success_rate: float | None
    perturbation: dict[str, float | int | None]
    perturbation_changed: dict[str, float | int | None]
    perturbation_fooled: dict[str, float | int | None]
    seconds: float


class Evaluation(TypedDict, total=False):
    """:func:`evaluate_attacks`' result; accuracies are fractions of all ``n`` images."""

    n: int
    clean_accuracy: float
    attacks: dict[str, AttackResult]
    worst_case_accuracy: float
    mode: str
    points: dict[str, dict[str, Tensor]]


def evaluate_attacks(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    attacks: dict[str, Attack],
    *,
    seed: int = 0,
    total: int | None = None,
    progress: bool = True,
    cascade: bool = False,
    points: bool = False,
) -> Evaluation:
    """Clean and robust accuracy under each attack, plus the per-point worst case.

    By default every attack runs on every image, batch by batch, exactly as
    :func:`nonrobust.streams.attack_to_file` runs it (one loop, :func:`measure_batch`, two sinks:
    memory here, a file there), so for one seed and batch size both give the same per-image results.
    An image counts as robust when it is classified correctly clean and attacked; the worst case is
    the intersection over the attacks. With ``cascade=True`` (AutoAttack's way, cheaper) each attack
    runs only on the images that survived the attacks before it, so each attack's
    ``robust_accuracy`` is the worst case over it and its predecessors, and its perturbation sizes
    measure the images it ran on.

    Args:
        model: maps [0,1] images to logits.
        batches: yields ``(x [B,C,H,W] in [0,1], y int64 [B])`` on the model's device.
        attacks: display name -> attack.
        seed: batch ``i`` uses :func:`batch_generator` ``(seed, i)`` for every attack; each attack also
            gets the images' positions in ``batches`` (``indices``, which seed NRF's bottleneck).
        total: number of images, for the progress bar.
        points: also return each attack's per-image :data:`POINT_COLUMNS` (``points[name]``, CPU tensors;
            not with ``cascade``).

    Returns:
        an :class:`Evaluation`: ``{"n", "clean_accuracy", "attacks": {name: AttackResult}, "worst_case_accuracy",
        "mode"}`` (and ``"points"``).
    """
    check(not (cascade and points), "per-image points are recorded for every image only without cascade")
    n = clean = worst = 0
    columns: dict[str, list[dict[str, Tensor]]] = {name: [] for name in attacks}
    correct = {name: 0 for name in attacks}
    seconds = {name: 0.0 for name in attacks}
    bar = tqdm(total=total, desc="attacks", unit="img", disable=not progress, leave=False)
    for i, (x, y) in enumerate(batches):
        with torch.no_grad():
            clean_pred = model(x).argmax(1)  # once per batch, shared by every attack
        ok = clean_pred == y
        start, n = n, n + x.shape[0]
        clean += int(ok.sum())
        robust_all = ok.clone()
        for name, attack in attacks.items():
            idx = robust_all.nonzero().squeeze(1) if cascade else torch.arange(x.shape[0], device=x.device)
            if idx.numel() == 0:
                continue
            t0 = time.perf_counter()
            cols = measure_batch(attack, model, x[idx], y[idx], seed=seed, batch=i, start=start, positions=idx,
                                 clean_pred=clean_pred[idx])
            seconds[name] += time.perf_counter() - t0
            still = robust_points(cols)
            correct[name] += int(still.sum())
            robust_all[idx[~still]] = False
            columns[name].append({k: cols[k].cpu() for k in POINT_COLUMNS})
        worst += int(robust_all.sum())
        bar.update(x.shape[0])
    bar.close()
    check(n > 0, "no images to evaluate")
    every = {name: {k: torch.cat([c[k] for c in columns[name]]) if columns[name] else torch.empty(0, device="cpu")
                    for k in POINT_COLUMNS} for name in attacks}
    results: dict[str, AttackResult] = {}
    for name, attack in attacks.items():
        cols = every[name]
        entry: AttackResult = {"settings": attack.describe(), "robust_accuracy": correct[name] / n,
                               "success_rate": (clean - correct[name]) / clean if clean else None}
        if cascade:
            entry["perturbation"] = summarise_sizes({k: cols[k] for k in ("linf", "l2", "nan", "min", "max")})
        else:
            summary = summarise_points(cols)
            entry["perturbation"], entry["perturbation_changed"] = summary["perturbation"], summary["perturbation_changed"]
            entry["perturbation_fooled"] = summary["perturbation_fooled"]
        entry["seconds"] = round(seconds[name], 3)
        results[name] = entry
    out: Evaluation = {"n": n, "clean_accuracy": clean / n, "attacks": results, "worst_case_accuracy": worst / n,
                       "mode": "cascade" if cascade else "individual"}
    if points:
        out["points"] = every
    return out
