"""The masks of the controls (random subsets, the label oracle) and the check that compares them with the IB split."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..analyses import Adversarial, adversarial_batch
from ..bottleneck import IBConfig, IBResult, apply_mask
from ..errors import check
from ..runtime import derive_seed, frozen, make_generator
from ..split import LayerSplit, require_4d
from .outcomes import Outcomes, predict, quiet_distill, table_of


def random_subset_masks(sizes: Tensor, channels: int, *, seed: int, indices: Tensor) -> Tensor:
    """Per image, a uniformly random robust mask with exactly ``sizes[i]`` of ``channels`` channels.

    Image ``i``'s channels are the first ``sizes[i]`` of a permutation drawn from its own generator, seeded by
    ``(seed, "random-subset", indices[i])``: the same mask whichever batch the image is in.
    ``sizes`` is int ``[B]`` in ``0 … channels``; returns bool ``[B, channels]`` on ``sizes``' device.
    """
    check(bool(((sizes >= 0) & (sizes <= channels)).all()), f"mask sizes must lie in 0…{channels}")
    out = torch.zeros(sizes.shape[0], channels, dtype=torch.bool, device="cpu")  # drawn on the CPU: the same masks on any device
    for row, (k, i) in enumerate(zip(sizes.tolist(), indices.tolist(), strict=True)):
        perm = torch.randperm(channels, generator=make_generator(derive_seed(seed, "random-subset", int(i)), "cpu"), device="cpu")
        out[row, perm[: int(k)]] = True
    return out.to(sizes.device)


def random_population_mask(size: int, channels: int, *, seed: int) -> Tensor:
    """One random robust mask ``[channels]`` with exactly ``size`` channels, seeded by ``(seed, "random-population")``."""
    check(0 <= size <= channels, f"mask size must lie in 0…{channels}, got {size}")
    perm = torch.randperm(channels, generator=make_generator(derive_seed(seed, "random-population"), "cpu"), device="cpu")
    out = torch.zeros(channels, dtype=torch.bool, device="cpu")
    out[perm[:size]] = True
    return out


def channel_contributions(split: LayerSplit, x: Tensor, labels: Tensor) -> Tensor:
    """How much each channel of ``Z = f_l(x)`` contributes to the logit of ``labels``: gradient × activation.

    ``Σ_{h,w} Z[c,h,w] · ∂ f_l+(Z)[label] / ∂ Z[c,h,w]``, one backward pass of the head. For a head that pools
    and then applies a linear layer ``W`` this is ``W[label, c]`` times the pooled activation of channel ``c``
    (exactly, for average pooling). ``x`` is ``[B, C, H, W]`` in [0,1], ``labels`` int64 ``[B]``; returns ``[B, channels]``.
    """
    with frozen(split.model):
        with torch.no_grad():
            z, ctx = split.features_and_context(x)
        require_4d(z, split.layer)
        z = z.detach().requires_grad_(True)
        logits = split.head(z, ctx)
        (grad,) = torch.autograd.grad(logits.gather(1, labels.to(logits.device)[:, None]).sum(), z)
    return (grad * z).detach().sum(dim=(2, 3))


def top_k_masks(scores: Tensor, sizes: Tensor) -> Tensor:
    """Per row, the ``sizes[i]`` highest ``scores`` (ties broken by channel order): bool ``[B, C]`` like ``scores``."""
    order = scores.argsort(dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order))
    return ranks < sizes.to(scores.device)[:, None]


def label_oracle_masks(split: LayerSplit, x: Tensor, labels: Tensor, sizes: Tensor) -> Tensor:
    """The label oracle: per image the ``sizes[i]`` channels of :func:`channel_contributions` to ``labels`` — a
    label-conditioned choice with no bottleneck at all. Returns bool ``[B, C]``."""
    return top_k_masks(channel_contributions(split, x, labels), sizes)


def mask_controls(
    model: nn.Module,
    split: LayerSplit,
    batches: Iterable[tuple[Tensor, Tensor]],
    attacks: dict[str, Adversarial],
    *,
    config: IBConfig,
    population: IBResult,
    seed: int = 0,
    total: int | None = None,
    progress: bool = True,
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The ``random_subset`` and ``label_oracle`` checks, beside the IB split they control, in one pass.

    Per batch the bottleneck runs twice (``config`` with the true labels, and with the label control's seeded
    wrong labels), and these robust masks are compared, clean and under each attack (masks from the clean
    images, as Table 1):

    * ``ib``: the bottleneck's own masks (its rows equal Table 1's under ``config``);
    * ``random_subset``: per image a uniformly random mask of the IB mask's size (:func:`random_subset_masks`),
      seeded by ``config.seed``; ``random_subset.population``: one random mask of the population split's size,
      against the population split (``population_split``);
    * ``label_oracle.true``: per image the IB mask's number of channels contributing most to the true label's
      logit (:func:`label_oracle_masks`); ``label_oracle.wrong``: the same for the wrong label, of the size of the
      wrong-label IB mask (``label_oracle.ib_wrong``), and how often Z_r predicts the mask's label.

    Args:
        model, split: the model, and the model cut at the analysed layer.
        batches: ``(x [B,C,H,W] in [0,1], y [B])`` on the model's device.
        attacks: display name -> attack or its stored examples (made against the full model).
        config: the per-image protocol (``paper`` or ``batch-free``); population: the population split (``[C]``).

    Returns:
        ``(summary, tensors)``: the summary holds ``n``, ``channels`` (mean robust channels per image of each
        source) and the tables (``rows``, ``ci95``, and ``versus``: exact McNemar tests against the IB split);
        ``tensors`` the per-image outcomes (bool ``[N]`` under names ``source/input/part``) and ``ib_mask``
        (bool ``[N, C]``), which :func:`model_randomisation` and :func:`adaptive_attacks` take.
    """
    check(config.protocol != "population" and config.labels == "true", "the controls need a per-image protocol with true labels")
    check(population.sigma.dim() == 1, "population= needs a population split ([C] masks)")
    inputs = ["clean", *attacks]
    out = Outcomes()
    sizes: dict[str, float] = {}
    n = 0
    wrong_config = replace(config, labels="random-wrong")
    bar = tqdm(total=total, desc="sanity: random and oracle masks", unit="img", disable=not progress, leave=False)
    for i, (x, y) in enumerate(batches):
        indices = torch.arange(n, n + x.shape[0], device="cpu")  # data-set indices seed every draw: CPU by design
        ib = quiet_distill(split, x, y, config, indices)
        ib_wrong = quiet_distill(split, x, y, wrong_config, indices)
        assert ib_wrong.labels is not None  # distill records the labels it used
        k, k_wrong = ib.robust_mask.sum(1), ib_wrong.robust_mask.sum(1)
        channels = ib.robust_mask.shape[1]
        masks = {
            "ib": ib.robust_mask, "ib_wrong": ib_wrong.robust_mask,
            "random_subset": random_subset_masks(k, channels, seed=config.seed, indices=indices),
            "oracle_true": label_oracle_masks(split, x, y, k), "oracle_wrong": label_oracle_masks(split, x, ib_wrong.labels, k_wrong),
            "population": population.robust_mask.to(x.device).expand(x.shape[0], -1),
            "random_population": random_population_mask(int(population.robust_mask.sum()), channels, seed=config.seed)
            .to(x.device).expand(x.shape[0], -1),
        }
        for name, m in masks.items():
            sizes[name] = sizes.get(name, 0.0) + float(m.sum())
        out.add("ib_mask", ib.robust_mask)
        for inp in inputs:
            x_in = x if inp == "clean" else adversarial_batch(attacks[inp], model, x, y, i, n, seed)
            with frozen(split.model), torch.no_grad():
                z, ctx = split.features_and_context(x_in)
                whole = split.head(z, ctx).argmax(1) == y
                for name, m in masks.items():
                    out.add(f"{name}/{inp}/int", whole)
                    for part, pred in predict(split, z, ctx, m).items():
                        out.add(f"{name}/{inp}/{part}", pred == y)
                        if name in ("ib_wrong", "oracle_wrong"):
                            out.add(f"{name}/{inp}/{part}_mask_label", pred == ib_wrong.labels)
        n += x.shape[0]
        bar.update(x.shape[0])
    bar.close()
    check(n > 0, "no images to analyse")
    t = out.tensors()
    channels = int(t["ib_mask"].shape[1])

    def wrong(source: str, versus: str | None) -> dict[str, Any]:
        table = table_of(t, source, inputs, versus)
        follows = table_of(t, source, inputs, versus, suffix="_mask_label")
        return {**table, "predicts_mask_label": follows["rows"], "predicts_mask_label_ci95": follows["ci95"],
                **({"predicts_mask_label_versus": follows["versus"]} if versus else {})}

    summary = {
        "n": n, "attacks": list(attacks), "channels": {"total": channels, **{k: v / n for k, v in sizes.items()}},
        "ib": table_of(t, "ib", inputs),
        "random_subset": {**table_of(t, "random_subset", inputs, "ib"),
                          "population": table_of(t, "random_population", inputs, "population"),
                          "population_split": table_of(t, "population", inputs)},
        "label_oracle": {"true": table_of(t, "oracle_true", inputs, "ib"), "wrong": wrong("oracle_wrong", "ib_wrong"),
                         "ib_wrong": wrong("ib_wrong", None),
                         "contribution": "gradient × activation of the label's logit, summed over space (one backward pass of the head)"},
    }
    return summary, t


def mask_baselines(split: LayerSplit, batches: Iterable[tuple[Tensor, Tensor]], masks: Tensor, *, seed: int = 0) -> dict[str, Any]:
    """What Z_r of a split's own masks is worth, clean, beside the two cheapest controls on the same images.

    ``masks`` is the split's robust masks, bool ``[N, C]`` for the ``N`` images of ``batches``. Returns the shares of
    images each predicts correctly: ``int`` (the whole layer), ``robust`` (Z_r of ``masks``), ``random_subset`` and
    ``label_oracle`` (Z_r of :func:`random_subset_masks` and :func:`label_oracle_masks` of the same sizes), with ``n``.
    One forward and one backward pass of the head per image (no bottleneck is rerun): ``nonrobust split`` prints it.
    """
    right = {"int": 0, "robust": 0, "random_subset": 0, "label_oracle": 0}
    n = 0
    for x, y in batches:
        m = masks[n:n + x.shape[0]].to(x.device).bool()
        check(m.shape[0] == x.shape[0], f"masks cover {masks.shape[0]} images, the batches more")
        k = m.sum(1)
        indices = torch.arange(n, n + x.shape[0], device="cpu")
        chosen = {"robust": m, "random_subset": random_subset_masks(k, m.shape[1], seed=seed, indices=indices),
                  "label_oracle": label_oracle_masks(split, x, y, k)}
        with frozen(split.model), torch.no_grad():
            z, ctx = split.features_and_context(x)
            right["int"] += int((split.head(z, ctx).argmax(1) == y).sum())
            for name, mask in chosen.items():
                right[name] += int((split.head(apply_mask(z, mask, split.layer), ctx).argmax(1) == y).sum())
        n += x.shape[0]
    check(n > 0, "no images to analyse")
    return {"n": n, **{k: v / n for k, v in right.items()}}
