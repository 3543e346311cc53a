"""Results streamed over a whole data set into resumable files: attacks and bottleneck splits.

:func:`attack_to_file` writes one attack's adversarial examples with per-point measurements,
:func:`summarise_file` reads back its accuracy and perturbation sizes, :class:`StoredAdversarial`
serves its examples to the analyses block by block, and :func:`worst_case` combines several.
:func:`split_dataset` writes the bottleneck's split of every image. Each file is written through
:class:`nonrobust.io.StreamingTensorFile`: batch by batch, memory flat in the data set's size, and a
killed run resumes at its first unfinished batch, under a key derived from its full settings.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, cast

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .attacks import Attack
from .bottleneck import (
    IBConfig,
    ReiterableBatches,
    distill,
    distill_population,
    masked_predictions,
    noise_seeds,
    seed_agreement,
    summarise_agreement,
)
from .errors import check
from .evaluation import POINT_COLUMNS, measure_batch, robust_points, summarise_points
from .identity import provenance, work_key
from .io import StreamingTensorFile, check_output_path, exclusive, load_tensors, read_json, write_json
from .runtime import Distributed
from .split import LayerSplit, check_feature_map

if TYPE_CHECKING:
    from .data import ImageDataset

__all__ = ["attack_to_file", "attack_files", "summarise_file", "correct_under_attack", "StoredAdversarial", "worst_case", "split_dataset"]

log = logging.getLogger(__name__)


def attack_to_file(
    model: nn.Module,
    dataset: "ImageDataset",
    attack: Attack,
    out: str | Path,
    *,
    batch_size: int,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Attack every image of ``dataset`` batch by batch and stream the results to ``out``.

    ``out`` (safetensors) holds ``x_adv`` (float32 ``[N, C, H, W]`` in [0,1]), ``y``,
    ``clean_pred``, ``adv_pred``, ``index`` (each image's position in its source, int64 ``[N]``) and
    the per-point measurements ``linf``, ``l2`` (float64 ``[N]``: exact sizes of ``x_adv − x``),
    ``min``, ``max`` (float32 ``[N]``) and ``nan`` (int64 ``[N]``); its header and the summary
    (``out`` with suffix ``.json``, also returned) carry the work key and the provenance
    (:mod:`nonrobust.identity`). A killed run resumes at its first unfinished batch when the key is
    the same: the same model weights, images and attack settings (a partial file of other work is
    started over). Batch ``i`` always uses :func:`batch_generator` ``(seed, i)``, so the result does
    not depend on where a run was interrupted. One writer at a time (``out.lock``); memory use does
    not grow with ``N``.
    """
    out = check_output_path(out)
    n = len(dataset)
    check(n > 0, "the data set is empty")
    assert dataset.indices is not None  # set by ImageDataset.__post_init__
    settings: dict[str, Any] = {"attack": attack.describe(), "seed": seed, "batch_size": batch_size}
    key = work_key("attack", model=model, data=dataset, settings=settings)
    meta = {**settings, "n": n, "key": key,
            "provenance": provenance(model=model, data=dataset, settings=settings, seeds={"attack": seed}, key=key)}
    # sizes in float64, as point_sizes measures them
    per_point = {"linf": (torch.float64, (n,)), "l2": (torch.float64, (n,)), "min": (torch.float32, (n,)), "max": (torch.float32, (n,))}
    specs = {"x_adv": (torch.float32, (n, *dataset.input_shape)), "y": (torch.int64, (n,)), "index": (torch.int64, (n,)),
             "clean_pred": (torch.int64, (n,)), "adv_pred": (torch.int64, (n,)), "nan": (torch.int64, (n,)), **per_point}
    dist = Distributed.current()
    t0 = time.perf_counter()
    with exclusive(out) if dist.main else contextlib.nullcontext():
        writer = StreamingTensorFile(out, specs, meta, key, dist=dist, block_rows=batch_size)
        if writer.resumed_rows:
            log.info("resuming %s after %d of %d images%s", out, writer.resumed_rows, writer.own_rows, _rank_note(dist))
        bar = tqdm(total=writer.own_rows, initial=writer.resumed_rows, desc=settings["attack"]["name"], unit="img",
                   disable=not (progress and dist.main))
        with writer.guard(bar):
            for start, x, y in _pending_batches(dataset, writer, batch_size, device):
                cols = measure_batch(attack, model, x, y, seed=seed, batch=start // batch_size, start=start)
                writer.write(start, {**cols, "index": dataset.indices[start:start + x.shape[0]]})
                bar.update(x.shape[0])
        writer.finish()
        summary = summarise_file(out)
        summary["seconds_this_run"] = round(time.perf_counter() - t0, 3)
        if dist.main:
            write_json(out.with_suffix(".json"), summary)
    return summary


def _pending_batches(dataset: "ImageDataset", writer: StreamingTensorFile, batch_size: int,
                     device: torch.device | str | None) -> Iterator[tuple[int, Tensor, Tensor]]:
    """``(start, x, y)`` for every batch ``writer`` still has to write: all of them alone, this rank's shard under torchrun."""
    for start in writer.pending_starts():
        x, y = next(dataset.batches(batch_size, device=device, start=start))
        yield start, x, y


def _rank_note(dist: Distributed) -> str:
    return f" (rank {dist.rank} of {dist.world}: its shard)" if dist.world > 1 else ""


def summarise_file(path: str | Path) -> dict[str, Any]:
    """Settings, accuracy and perturbation summary of a file written by :func:`attack_to_file`:
    :func:`nonrobust.evaluation.summarise_points` of its per-image columns (never its images), with the file's
    settings and provenance."""
    t, settings = load_tensors(path, keys=POINT_COLUMNS)
    return {**settings, **summarise_points(t)}


def correct_under_attack(path: str | Path) -> torch.Tensor:
    """Bool ``[N]``: which images of a file written by :func:`attack_to_file` the model classifies correctly both clean
    and attacked (the images counted in its robust accuracy)."""
    return robust_points(load_tensors(path, keys=("y", "clean_pred", "adv_pred"))[0])


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

    def describe(self) -> dict[str, Any]:
        """The attack's settings as it described itself when the file was written."""
        return dict(self.settings.get("attack", {}))

    def rows(self, start: int, y: Tensor) -> Tensor:
        """``x_adv`` rows ``start … start+len(y)`` on ``y``'s device, float32 ``[B, C, H, W]`` in [0,1]."""
        from safetensors import safe_open

        stop = start + y.shape[0]
        check(stop <= len(self), f"{self.path} holds {len(self)} images, asked for rows {start}…{stop}")
        check(torch.equal(self.labels[start:stop], y.cpu()), f"{self.path} was written for other images (labels differ): rerun its attack")
        with safe_open(str(self.path), framework="pt", device="cpu") as fh:
            return cast(Tensor, fh.get_slice("x_adv")[start:stop].to(y.device))


def attack_files(
    model: nn.Module,
    dataset: "ImageDataset",
    attacks: dict[str, Attack],
    folder: str | Path,
    *,
    batch_size: int,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> dict[str, StoredAdversarial]:
    """Run each attack once over ``dataset`` into ``folder`` and return its examples for every table to read.

    ``attacks`` maps a display label to an attack (e.g. :func:`nonrobust.attacks.make_attack_set`); each is
    written by :func:`attack_to_file` to ``folder/<its registered name>-<n>.safetensors`` (resumable, keyed by
    its work key, so a rerun with the same model, images and settings resumes). Returns label ->
    :class:`StoredAdversarial`, which :mod:`nonrobust.analyses` takes in place of an attack, so that Tables 1
    and 2 read the same examples instead of attacking again; :func:`summarise_file` of each ``.path`` is its
    Table 3 row.
    """
    out: dict[str, StoredAdversarial] = {}
    for i, (label, attack) in enumerate(attacks.items()):
        path = Path(folder) / f"{i:02d}-{attack.name}.safetensors"
        attack_to_file(model, dataset, attack, path, batch_size=batch_size, device=device, seed=seed, progress=progress)
        out[label] = StoredAdversarial(path)
    return out


def worst_case(paths: Iterable[str | Path]) -> dict[str, Any]:
    """Per-point worst case over several :func:`attack_to_file` files of the same images.

    A point counts as robust when it is classified correctly clean and under every
    attack. Returns ``{"n", "worst_case_accuracy", "attacks"}``.
    """
    paths = list(paths)
    check(bool(paths), "no attack files")
    ok, y0 = None, None
    for path in paths:
        t, _ = load_tensors(path, keys=("y", "clean_pred", "adv_pred"))
        check(y0 is None or torch.equal(t["y"], y0), f"{path} holds other images than {paths[0]}")
        y0 = t["y"]
        ok = robust_points(t) if ok is None else ok & robust_points(t)
    assert ok is not None and y0 is not None  # paths is not empty
    return {"n": int(y0.numel()), "worst_case_accuracy": float(ok.float().mean()), "attacks": [str(p) for p in paths]}


def split_dataset(
    split: LayerSplit,
    dataset: "ImageDataset",
    config: IBConfig,
    out: str | Path,
    *,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
    progress: bool = True,
    stability: int = 1,
) -> dict[str, Any]:
    """Run the bottleneck over a data set and write the split to ``out`` (safetensors + ``.json`` summary).

    Per-image protocols stream batch by batch into ``out`` (``sigma``, ``var_z``,
    ``robust_mask`` ``[N, C]``, ``threshold`` ``[N]``, the true labels ``y``, the ``labels`` the masks
    were made with, each image's position in its source ``index``, and the predictions from Z, Z_r
    and Z_nr ``[N]``); a killed run resumes at its first unfinished batch when its work key is the
    same (the model's weights, the images, every setting: :mod:`nonrobust.identity`), and starts over
    otherwise. Image ``i`` draws its noise from seed ``(config.seed, i)``.
    ``population`` writes one ``[C]`` split (loadable with :meth:`IBResult.load`). The file's header and
    the summary carry the work key and the provenance; one writer at a time (``out.lock``).

    Returns the summary: mean robust / non-robust channel counts, the accuracy of ``f_l+(Z)``,
    ``f_l+(Z_r)`` and ``f_l+(Z_nr)`` against the true labels, and, when the masks were made with
    other labels (``config.labels``), how often ``f_l+(Z_r)`` and ``f_l+(Z_nr)`` predict those
    (``mask_labels``).

    ``stability=K ≥ 2`` also splits every image with the noise seeds ``config.seed + 1 … + K − 1`` (K
    times the cost) and reports how the K robust sets agree (:func:`~nonrobust.bottleneck.seed_agreement`):
    per image in the file (``jaccard``, ``pairs_both_empty``, ``robust_every``, ``robust_any``) and over the data set in the
    summary's ``stability``. The stored split is seed ``config.seed``'s.
    """
    check(isinstance(stability, int) and stability >= 1, f"stability must be a number of seeds ≥ 1, got {stability!r}")
    out = check_output_path(out)
    dist = Distributed.current()
    alone = config.protocol == "population" and dist.world > 1  # one split of the whole data set: rank 0 fits it, the others wait
    if alone and not dist.main:
        dist.barrier()
        return cast("dict[str, Any]", read_json(out.with_suffix(".json")))
    n = len(dataset)
    check(n > 0, "the data set is empty")
    # a layer the bottleneck cannot use fails here, before any file is written
    channels = check_feature_map(split, next(dataset.batches(1, device=device))[0]).shape[1]
    settings = {"layer": split.layer, "config": asdict(config), "stability_seeds": stability, "batch_size": batch_size}
    key = work_key("split", model=split.model, data=dataset, settings=settings)
    meta = {"format": "nonrobust-ib", "version": 1, **settings, "n": n, "key": key,
            "provenance": provenance(model=split.model, data=dataset, settings=settings, seeds={"noise": config.seed}, key=key)}
    with exclusive(out) if dist.main else contextlib.nullcontext():
        split_of = _split_population if config.protocol == "population" else _split_per_image
        preds, robust_counts, agreement, mask_labels = split_of(split, dataset, config, out, meta, channels, batch_size=batch_size,
                                                                device=device, progress=progress, stability=stability)
        y = dataset.labels
        summary = {
            **{k: v for k, v in meta.items() if k != "format"},
            "channels": channels,
            "robust_channels_mean": float(robust_counts.mean()),
            "nonrobust_channels_mean": channels - float(robust_counts.mean()),
            "accuracy": {k: float((v == y).float().mean()) for k, v in preds.items()},
        }
        if agreement is not None:
            summary["stability"] = summarise_agreement(agreement, channels, stability)
        if mask_labels is not None and config.labels != "true":
            # the label control: do Z_r and Z_nr follow the label the masks were made with, or the true one?
            summary["mask_labels"] = {"source": config.labels, **{f"{k}_predicts_mask_label": float((preds[k] == mask_labels).float().mean())
                                                                   for k in ("robust", "nonrobust")}}
        if dist.main:
            write_json(out.with_suffix(".json"), summary)
    if alone:
        dist.barrier()  # the population split and its summary are written: the other ranks read them
    return summary


_SplitOutcome = tuple[dict[str, Tensor], Tensor, dict[str, Tensor] | None, Tensor | None]
"""``(predictions, robust channel counts, seed agreement, mask labels)`` of one way of splitting a data set."""


def _split_population(split: LayerSplit, dataset: "ImageDataset", config: IBConfig, out: Path, meta: dict[str, Any], channels: int, *,
                      batch_size: int, device: torch.device | str, progress: bool, stability: int) -> _SplitOutcome:
    """One label-free ``[C]`` split of the whole data set, fitted and saved to ``out`` (not streamed: a rerun fits it again)."""
    n = len(dataset)
    batches = ReiterableBatches(lambda: dataset.batches(batch_size, device=device))
    fits = [distill_population(split, batches, c, total=math.ceil(n / batch_size), progress=progress) for c in noise_seeds(config, stability)]
    res = fits[0]
    agreement = seed_agreement(torch.stack([f.robust_mask for f in fits])[:, None]) if stability > 1 else None
    res.extra.update({k: v for k, v in meta.items() if k in ("key", "provenance")})
    preds: dict[str, list[Tensor]] = {k: [] for k in ("int", "robust", "nonrobust")}
    for x, _ in dataset.batches(batch_size, device=device):
        for k, v in masked_predictions(split, res, x).items():
            preds[k].append(v.cpu())
    res.save(out)
    return {k: torch.cat(v) for k, v in preds.items()}, res.robust_mask.float().sum().expand(n), agreement, None


def _split_per_image(split: LayerSplit, dataset: "ImageDataset", config: IBConfig, out: Path, meta: dict[str, Any], channels: int, *,
                     batch_size: int, device: torch.device | str, progress: bool, stability: int) -> _SplitOutcome:
    """Every image's own split, streamed batch by batch into ``out`` (resumable under the work key ``meta["key"]``)."""
    n, seeds = len(dataset), noise_seeds(config, stability)
    assert dataset.indices is not None  # set by ImageDataset.__post_init__
    dist = Distributed.current()
    per_image = {k: (torch.float32, (n, channels)) for k in ("sigma", "var_z")}
    t_shape: tuple[int, ...] = (n, channels) if config.threshold == "channel" else (n,)  # the channel rule's T is σ_z² itself
    specs: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {**per_image, "robust_mask": (torch.uint8, (n, channels)), "threshold": (torch.float32, t_shape),
             **{k: (torch.int64, (n,)) for k in ("y", "labels", "index", "pred", "pred_robust", "pred_nonrobust")}}
    if stability > 1:
        specs.update(jaccard=(torch.float64, (n,)), pairs_both_empty=(torch.float64, (n,)), robust_every=(torch.int64, (n,)),
                     robust_any=(torch.int64, (n,)))
    writer = StreamingTensorFile(out, specs, meta, meta["key"], dist=dist, block_rows=batch_size)
    if writer.resumed_rows:
        log.info("resuming %s after %d of %d images%s", out, writer.resumed_rows, writer.own_rows, _rank_note(dist))
    bar = tqdm(total=writer.own_rows, initial=writer.resumed_rows, desc=f"bottleneck ({config.protocol})", unit="img",
               disable=not (progress and dist.main))
    with writer.guard(bar):
        for start, x, y in _pending_batches(dataset, writer, batch_size, device):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # degenerate batches are reported in the summary instead
                runs = [distill(split, x, y, c, indices=torch.arange(start, start + x.shape[0], device="cpu")) for c in seeds]
            res = runs[0]
            assert res.labels is not None  # distill records the labels it used
            p = masked_predictions(split, res, x)
            row = {"sigma": res.sigma, "var_z": res.var_z, "robust_mask": res.robust_mask.to(torch.uint8), "threshold": res.threshold,
                   "y": y, "labels": res.labels, "index": dataset.indices[start:start + x.shape[0]], "pred": p["int"],
                   "pred_robust": p["robust"], "pred_nonrobust": p["nonrobust"]}
            if stability > 1:
                a = seed_agreement(torch.stack([r.robust_mask for r in runs]))
                row.update(jaccard=a["jaccard"], pairs_both_empty=a["both_empty"], robust_every=a["every"], robust_any=a["any"])
            writer.write(start, row)
            bar.update(x.shape[0])
    writer.finish()
    t, _ = load_tensors(out, keys=("y", "labels", "pred", "pred_robust", "pred_nonrobust", "robust_mask"))
    preds = {"int": t["pred"], "robust": t["pred_robust"], "nonrobust": t["pred_nonrobust"]}
    agreement = None
    if stability > 1:
        a, _ = load_tensors(out, keys=("jaccard", "pairs_both_empty", "robust_every", "robust_any"))
        agreement = {"jaccard": a["jaccard"], "both_empty": a["pairs_both_empty"], "every": a["robust_every"], "any": a["robust_any"]}
    return preds, t["robust_mask"].float().sum(1), agreement, t["labels"]
