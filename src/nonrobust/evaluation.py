"""Robust accuracy of a model under a list of attacks, streamed over batches.

:func:`evaluate_attacks` reports, per attack, the accuracy on its adversarial
examples, the per-point worst case over all attacks, and the measured
perturbation sizes (L∞ max, L2 median and max, NaN count, value range), as
AutoAttack reports them. :func:`attack_to_file` writes one attack's adversarial
examples to a safetensors file, batch by batch, and resumes a killed run.
"""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .attacks import Attack, point_sizes, summarise_sizes
from .errors import check
from .io import StreamingTensorFile, check_output_path, digest, load_tensors, write_json
from .runtime import make_generator

if TYPE_CHECKING:
    from .data import ImageDataset

__all__ = ["NormStats", "evaluate_attacks", "attack_to_file", "summarise_file", "StoredAdversarial", "batch_generator", "attack_batch", "worst_case"]

log = logging.getLogger(__name__)


def batch_generator(seed: int, batch_index: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator used for batch ``batch_index`` of a seeded run (so a resumed run draws the same numbers)."""
    return make_generator(seed * 1_000_003 + batch_index, device)


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
    positions = torch.arange(x.shape[0]) if positions is None else positions.cpu()
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
            return summarise_sizes({"l2": torch.empty(0)})
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
) -> dict:
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


def attack_to_file(
    model: nn.Module,
    dataset: "ImageDataset",
    attack: Attack,
    out: str | Path,
    *,
    batch_size: int,
    device: torch.device | str = "cpu",
    seed: int = 0,
    info: dict | None = None,
    progress: bool = True,
) -> dict:
    """Attack every image of ``dataset`` batch by batch and stream the results to ``out``.

    ``out`` (safetensors) holds ``x_adv`` (float32 ``[N, C, H, W]`` in [0,1]), ``y``,
    ``clean_pred``, ``adv_pred`` (int64 ``[N]``) and the per-point measurements
    ``linf``, ``l2`` (float64 ``[N]``: exact sizes of ``x_adv − x``), ``min``, ``max``
    (float32 ``[N]``) and ``nan`` (int64 ``[N]``);
    the summary goes to ``out`` with suffix ``.json`` and is returned. A killed run
    resumes at its first unfinished batch; batch ``i`` always uses
    :func:`batch_generator` ``(seed, i)``, so the result does not depend on where a
    run was interrupted. Memory use does not grow with ``N``.
    """
    out = check_output_path(out)
    n = len(dataset)
    check(n > 0, "the data set is empty")
    settings = {"attack": attack.describe(), "seed": seed, "batch_size": batch_size, "n": n, **(info or {})}
    fingerprint = digest(settings)
    # sizes in float64, as point_sizes measures them
    per_point = {"linf": (torch.float64, (n,)), "l2": (torch.float64, (n,)), "min": (torch.float32, (n,)), "max": (torch.float32, (n,))}
    specs = {"x_adv": (torch.float32, (n, *dataset.input_shape)), "y": (torch.int64, (n,)),
             "clean_pred": (torch.int64, (n,)), "adv_pred": (torch.int64, (n,)), "nan": (torch.int64, (n,)), **per_point}
    writer = StreamingTensorFile(out, specs, settings, fingerprint)
    if writer.rows_done:
        log.info("resuming %s at image %d of %d", out, writer.rows_done, n)
    t0 = time.perf_counter()
    bar = tqdm(total=n, initial=writer.rows_done, desc=settings["attack"]["name"], unit="img", disable=not progress)
    with writer.guard(bar):
        for x, y in dataset.batches(batch_size, device=device, start=writer.rows_done):
            x_adv = attack_batch(attack, model, x, y, seed=seed, batch=writer.rows_done // batch_size, start=writer.rows_done)
            with torch.no_grad():
                clean_pred, adv_pred = model(x).argmax(1), model(x_adv).argmax(1)
            writer.write(writer.rows_done, {"x_adv": x_adv, "y": y, "clean_pred": clean_pred, "adv_pred": adv_pred,
                                            **point_sizes(x, x_adv)})
            bar.update(x.shape[0])
    writer.finish()
    summary = summarise_file(out)
    summary["seconds_this_run"] = round(time.perf_counter() - t0, 3)
    write_json(out.with_suffix(".json"), summary)
    return summary


_SIZE_COLUMNS = ("linf", "l2", "nan", "min", "max")  # point_sizes' columns, as attack_to_file stores them


def summarise_file(path: str | Path) -> dict:
    """Settings, accuracy and perturbation summary of a file written by :func:`attack_to_file`.

    ``perturbation`` measures every image; ``perturbation_fooled`` only the points the
    attack turned from correct to wrong (the size of an unbounded attack's successes).
    Reads only the per-point columns, never the images.
    """
    t, settings = load_tensors(path, keys=("y", "clean_pred", "adv_pred", *_SIZE_COLUMNS))
    clean_ok, adv_ok = t["clean_pred"] == t["y"], t["adv_pred"] == t["y"]
    fooled = clean_ok & ~adv_ok
    return {
        **settings,
        "clean_accuracy": float(clean_ok.float().mean()),
        "robust_accuracy": float((clean_ok & adv_ok).float().mean()),
        "success_rate": float((clean_ok & ~adv_ok).sum() / clean_ok.sum().clamp_min(1)),
        "perturbation": summarise_sizes(t),
        # the points the attack turned from correct to wrong: an unbounded attack's size
        "perturbation_fooled": summarise_sizes({k: t[k][fooled] for k in _SIZE_COLUMNS}),
    }


class StoredAdversarial:
    """The adversarial examples of a file written by :func:`attack_to_file`, read block by block.

    Analyses that take attacks (:mod:`nonrobust.analyses`) also take these, so one
    attack's examples are computed once and shared by every table. Rows must be
    read in the order of the images the file was written for; :meth:`rows`
    checks the labels to catch a file that belongs to other images.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        t, self.settings = load_tensors(self.path, keys=("y",))
        self.labels = t["y"]

    def __len__(self) -> int:
        return int(self.labels.numel())

    def describe(self) -> dict:
        """The attack's settings as it described itself when the file was written."""
        return dict(self.settings.get("attack", {}))

    def rows(self, start: int, y: Tensor) -> Tensor:
        """``x_adv`` rows ``start … start+len(y)`` on ``y``'s device, float32 ``[B, C, H, W]`` in [0,1]."""
        from safetensors import safe_open

        stop = start + y.shape[0]
        check(stop <= len(self), f"{self.path} holds {len(self)} images, asked for rows {start}…{stop}")
        check(torch.equal(self.labels[start:stop], y.cpu()), f"{self.path} was written for other images (labels differ): rerun its attack")
        with safe_open(str(self.path), framework="pt", device="cpu") as fh:
            return fh.get_slice("x_adv")[start:stop].to(y.device)


def worst_case(paths: Iterable[str | Path]) -> dict:
    """Per-point worst case over several :func:`attack_to_file` files of the same images.

    A point counts as robust when it is classified correctly clean and under every
    attack. Returns ``{"n", "worst_case_accuracy", "attacks"}``.
    """
    paths = list(paths)
    check(paths, "no attack files")
    ok, y0 = None, None
    for path in paths:
        t, _ = load_tensors(path, keys=("y", "clean_pred", "adv_pred"))
        check(y0 is None or torch.equal(t["y"], y0), f"{path} holds other images than {paths[0]}")
        y0 = t["y"]
        this = (t["clean_pred"] == t["y"]) & (t["adv_pred"] == t["y"])
        ok = this if ok is None else ok & this
    return {"n": int(y0.numel()), "worst_case_accuracy": float(ok.float().mean()), "attacks": [str(p) for p in paths]}
