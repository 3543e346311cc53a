"""The controls of a robust / non-robust split: what a reviewer asks for before believing it.

Each check compares the bottleneck's split (Kim, Lee, Ro, NeurIPS 2021) with something that should do worse
if the split means what the paper says. They follow the attribution-sanity literature (Adebayo et al. 2018,
*Sanity checks for saliency maps*: matched random baselines, model-parameter randomisation) and adaptive
evaluation (Tramèr et al. 2020, *On adaptive attacks to adversarial example defenses*):

* :func:`mask_controls` — ``random_subset`` (per image, a uniformly random mask of exactly as many robust
  channels as the image's IB mask; and a random population mask of the population split's size) and
  ``label_oracle`` (no bottleneck: per image the k channels that contribute most to a label's logit, made with
  the true label and with the label control's seeded wrong label). Every accuracy comes with a paired test
  against the IB split on the same images.
* :func:`model_randomisation` — the split rerun on copies of the model whose weights are re-initialised
  cascading from the top (the head, then each block below the split), and each block alone.
* :func:`adaptive_attacks` — the masked model ``x ↦ f_l+(i_r · f_l(x))`` attacked itself, with the population
  mask and with each image's mask held at its clean value, beside the transfer of the full model's attacks.
* :func:`layer_sweep` — Table 1 under the per-image and the population protocol, and the label control, at
  several layers.

Accuracies follow Table 1's convention (a share of all images whose prediction is the true label) and its
``rows[input] = {"int", "robust", "nonrobust"}`` format, inputs ``clean`` and each attack's label.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import asdict, replace
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .analyses import Adversarial, _adversarial, feature_accuracy
from .attacks import Attack
from .bottleneck import IBConfig, IBResult, ReiterableBatches, apply_mask, distill, distill_population, seed_agreement
from .errors import check
from .evaluation import measure_batch, summarise_points
from .runtime import derive_seed, frozen, make_generator
from .split import LayerSplit, require_4d, split_model
from .stats import paired_counts, wilson

__all__ = ["CHECKS", "PARTS", "random_subset_masks", "random_population_mask", "channel_contributions", "top_k_masks",
           "label_oracle_masks", "randomisation_stages", "randomised_copy", "MaskedModel", "sweep_layers", "with_intervals",
           "mask_controls", "model_randomisation", "adaptive_attacks", "layer_sweep"]

CHECKS = ("random_subset", "label_oracle", "model_randomisation", "adaptive", "layers")
"""The checks, in the order the report shows them (the keys of ``results.json``'s ``sanity``)."""

PARTS = ("int", "robust", "nonrobust")
"""Table 1's columns: the whole layer ``f_l+(Z)``, ``f_l+(Z_r)`` and ``f_l+(Z_nr)``."""

Batches = Callable[[], Iterable[tuple[Tensor, Tensor]]]


# --------------------------------------------------------------------------- masks of the controls
def random_subset_masks(sizes: Tensor, channels: int, *, seed: int, indices: Tensor) -> Tensor:
    """Per image, a uniformly random robust mask with exactly ``sizes[i]`` of ``channels`` channels.

    Image ``i``'s channels are the first ``sizes[i]`` of a permutation drawn from its own generator, seeded by
    ``(seed, "random-subset", indices[i])``: the same mask whichever batch the image is in.
    ``sizes`` is int ``[B]`` in ``0 … channels``; returns bool ``[B, channels]`` on ``sizes``' device.
    """
    check(bool(((sizes >= 0) & (sizes <= channels)).all()), f"mask sizes must lie in 0…{channels}")
    out = torch.zeros(sizes.shape[0], channels, dtype=torch.bool)
    for row, (k, i) in enumerate(zip(sizes.tolist(), indices.tolist(), strict=True)):
        perm = torch.randperm(channels, generator=make_generator(derive_seed(seed, "random-subset", int(i)), "cpu"))
        out[row, perm[: int(k)]] = True
    return out.to(sizes.device)


def random_population_mask(size: int, channels: int, *, seed: int) -> Tensor:
    """One random robust mask ``[channels]`` with exactly ``size`` channels, seeded by ``(seed, "random-population")``."""
    check(0 <= size <= channels, f"mask size must lie in 0…{channels}, got {size}")
    perm = torch.randperm(channels, generator=make_generator(derive_seed(seed, "random-population"), "cpu"))
    out = torch.zeros(channels, dtype=torch.bool)
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


# --------------------------------------------------------------------------- per-image outcomes and their summaries
class _Outcomes:
    """Per-image bool outcomes gathered batch by batch, under names such as ``ib/PGD-20/robust``."""

    def __init__(self) -> None:
        self.parts: dict[str, list[Tensor]] = {}

    def add(self, name: str, values: Tensor) -> None:
        self.parts.setdefault(name, []).append(values.detach().cpu())

    def tensors(self) -> dict[str, Tensor]:
        return {k: torch.cat(v) for k, v in self.parts.items()}


def _share(values: Tensor) -> float:
    return int(values.sum()) / max(int(values.numel()), 1)  # an exact fraction of counts


def _ci(values: Tensor) -> list[float] | None:
    interval = wilson(int(values.sum()), int(values.numel()))
    return None if interval is None else list(interval)


def _table(out: Mapping[str, Tensor], source: str, inputs: list[str], versus: str | None = None,
           suffix: str = "") -> dict[str, Any]:
    """Table 1's ``rows`` (and ``ci95``) of one mask source; with ``versus``, the exact McNemar test of each entry
    against that source's on the same images (``a_only``: images right under this source only)."""
    table: dict[str, Any] = {"rows": {}, "ci95": {}}
    for inp in inputs:
        keys = {p: f"{source}/{inp}/{p}{suffix}" for p in PARTS if f"{source}/{inp}/{p}{suffix}" in out}
        table["rows"][inp] = {p: _share(out[k]) for p, k in keys.items()}
        table["ci95"][inp] = {p: _ci(out[k]) for p, k in keys.items()}
    if versus is not None:
        table["versus"] = {"source": versus, **{inp: {p: paired_counts(out[f"{source}/{inp}/{p}{suffix}"], out[f"{versus}/{inp}/{p}{suffix}"])
                                                      for p in ("robust", "nonrobust")} for inp in inputs}}
    return table


def with_intervals(table: dict[str, Any]) -> dict[str, Any]:
    """A Table 1 result (``rows`` of shares over ``n`` images) with the 95% Wilson interval of every entry as ``ci95``."""
    n = int(table["n"])
    return {**table, "ci95": {inp: {p: wilson(round(v * n), n) for p, v in row.items()} for inp, row in table["rows"].items()}}


def _quiet_distill(split: LayerSplit, x: Tensor, y: Tensor, config: IBConfig, indices: Tensor) -> IBResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an all-robust or empty split is a finding here, shown in the channel counts
        return distill(split, x, y, config, indices=indices)


def _predict(split: LayerSplit, z: Tensor, ctx: tuple[Any, ...], mask: Tensor) -> dict[str, Tensor]:
    with torch.no_grad():
        return {"robust": split.head(apply_mask(z, mask, split.layer), ctx).argmax(1),
                "nonrobust": split.head(apply_mask(z, ~mask, split.layer), ctx).argmax(1)}


# --------------------------------------------------------------------------- random subset and label oracle
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
    out = _Outcomes()
    sizes: dict[str, float] = {}
    n = 0
    wrong_config = replace(config, labels="random-wrong")
    bar = tqdm(total=total, desc="sanity: random and oracle masks", unit="img", disable=not progress, leave=False)
    for i, (x, y) in enumerate(batches):
        indices = torch.arange(n, n + x.shape[0], device="cpu")  # data-set indices seed every draw: CPU by design
        ib = _quiet_distill(split, x, y, config, indices)
        ib_wrong = _quiet_distill(split, x, y, wrong_config, indices)
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
            x_in = x if inp == "clean" else _adversarial(attacks[inp], model, x, y, i, n, seed)
            with frozen(split.model), torch.no_grad():
                z, ctx = split.features_and_context(x_in)
                whole = split.head(z, ctx).argmax(1) == y
                for name, m in masks.items():
                    out.add(f"{name}/{inp}/int", whole)
                    for part, pred in _predict(split, z, ctx, m).items():
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
        table = _table(t, source, inputs, versus)
        follows = _table(t, source, inputs, versus, suffix="_mask_label")
        return {**table, "predicts_mask_label": follows["rows"], "predicts_mask_label_ci95": follows["ci95"],
                **({"predicts_mask_label_versus": follows["versus"]} if versus else {})}

    summary = {
        "n": n, "attacks": list(attacks), "channels": {"total": channels, **{k: v / n for k, v in sizes.items()}},
        "ib": _table(t, "ib", inputs),
        "random_subset": {**_table(t, "random_subset", inputs, "ib"),
                          "population": _table(t, "random_population", inputs, "population"),
                          "population_split": _table(t, "population", inputs)},
        "label_oracle": {"true": _table(t, "oracle_true", inputs, "ib"), "wrong": wrong("oracle_wrong", "ib_wrong"),
                         "ib_wrong": wrong("ib_wrong", None),
                         "contribution": "gradient × activation of the label's logit, summed over space (one backward pass of the head)"},
    }
    return summary, t


# --------------------------------------------------------------------------- model randomisation
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def _execution_order(model: nn.Module, x: Tensor) -> tuple[list[str], dict[str, tuple[int, ...]]]:
    """The modules of ``model`` in the order one forward pass of ``x`` first calls them, and each one's output shape."""
    order: list[str] = []
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(_m: nn.Module, _i: Any, output: Any, name: str = name) -> None:
            if name not in shapes:
                order.append(name)
                shapes[name] = tuple(output.shape) if isinstance(output, Tensor) else ()
        hooks.append(module.register_forward_hook(hook))
    try:
        with frozen(model), torch.no_grad():
            model(x[:1])
    finally:
        for h in hooks:
            h.remove()
    return order, shapes


def randomisation_stages(model: nn.Module, layer: str, x: Tensor, blocks: int = 4) -> list[dict[str, Any]]:
    """The stages of model randomisation: which modules each re-initialises.

    The modules with parameters of their own are taken in the order a forward pass of ``x`` (``[B, C, H, W]``,
    one image is used) first calls them. Those called after ``layer`` form the head; those up to and including
    it are grouped into units (each layer, with the normalisation layers that follow it) and the units into
    ``blocks`` contiguous blocks of near-equal size, counted from the top. Cascading stage ``s`` re-initialises
    the head and the top ``s − 1`` blocks; the independent stages re-initialise one block below the split alone
    (the head alone is cascading stage 1).

    Returns:
        ``[{"name", "variant": "cascading" | "independent", "modules": [names]}]``, cascading first.
    """
    check(blocks >= 1, f"blocks must be ≥ 1, got {blocks}")
    order, _ = _execution_order(model, x)
    modules = dict(model.named_modules())
    check(layer in modules, f"no module {layer!r} in the model")
    own = [name for name in order if any(True for _ in modules[name].parameters(recurse=False))]
    cut = order.index(layer)
    head = [name for name in own if order.index(name) > cut]
    below = [name for name in own if order.index(name) <= cut]
    units: list[list[str]] = []
    for name in below:
        if units and isinstance(modules[name], _NORMS):
            units[-1].append(name)
        else:
            units.append([name])
    top_down = list(reversed(units))
    count = min(blocks, len(top_down))
    groups = [top_down[j * len(top_down) // count:(j + 1) * len(top_down) // count] for j in range(count)] if count else []
    flat = [[name for unit in reversed(group) for name in unit] for group in groups]
    check(bool(head), f"no module with parameters after {layer!r}: nothing to randomise as the head")
    stages = [{"name": "head", "variant": "cascading", "modules": head}]
    for j, names in enumerate(flat):
        stages.append({"name": f"head + top {j + 1} of {count} blocks ({names[0]} … {flat[0][-1]})", "variant": "cascading",
                       "modules": [*head, *[nm for g in flat[: j + 1] for nm in g]]})
    for j, names in enumerate(flat):
        stages.append({"name": f"block {j + 1} of {count} alone ({names[0]} … {names[-1]})", "variant": "independent", "modules": names})
    return stages


def randomised_copy(model: nn.Module, modules: list[str], *, seed: int) -> nn.Module:
    """A copy of ``model`` whose ``modules`` (dotted names) are re-initialised; ``model`` itself is not touched.

    Each module's ``reset_parameters()`` runs on a CPU copy under a forked RNG seeded by ``(seed, "randomise", name)``
    (the global RNG is left as it was); a module without one gets its parameters redrawn from a normal
    distribution with the trained values' mean and standard deviation. The copy is on ``model``'s device.
    """
    device = next(model.parameters()).device
    clone = copy.deepcopy(model).cpu()
    named = dict(clone.named_modules())
    for name in modules:
        check(name in named, f"no module {name!r} in the model")
        module = named[name]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "randomise", name))
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
            else:
                with torch.no_grad():
                    for p in module.parameters(recurse=False):
                        std = float(p.std()) if p.numel() > 1 else 1.0
                        p.copy_(torch.randn_like(p) * std + float(p.mean()))
    return clone.to(device)


def model_randomisation(
    model: nn.Module,
    layer: str,
    batches: Batches,
    attacks: dict[str, Adversarial],
    *,
    config: IBConfig,
    reference: Mapping[str, Tensor],
    blocks: int = 4,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Model randomisation (Adebayo et al. 2018): rerun the split, with the same settings, on re-initialised copies.

    For each of :func:`randomisation_stages` the model is copied with those modules re-initialised
    (:func:`randomised_copy`), split at ``layer`` and the bottleneck rerun with ``config`` (true labels). Reported
    per stage: robust channels per image, Table 1's rows of the randomised model (clean, and under each of
    ``attacks``: the examples made against the *trained* model, whose transfer is all that is measured here), and
    how far its masks stay similar to the trained model's (mean Jaccard over the images, a pair of empty sets
    counting 1, as :func:`~nonrobust.bottleneck.seed_agreement`), with exact McNemar tests of Z_r's accuracy
    against the trained split's.

    Args:
        batches: a callable returning the ``(x, y)`` batches (each stage iterates them once).
        reference: :func:`mask_controls`' tensors for the same images (``ib_mask`` and ``ib/...`` outcomes; longer
            ones are cut to these images).

    Returns:
        ``{"n", "blocks", "stages": [{"name", "variant", "modules", "rows", "ci95", "versus_trained", "channels",
        "jaccard_mean", "jaccard_nonempty_pairs", "pairs_both_empty"}]}``.
    """
    x0 = next(iter(batches()))[0]
    stages = randomisation_stages(model, layer, x0, blocks)
    inputs = ["clean", *attacks]
    rows = []
    for stage in tqdm(stages, desc="sanity: model randomisation", unit="stage", disable=not progress, leave=False):
        clone = randomised_copy(model, stage["modules"], seed=seed)
        split = split_model(clone, layer)
        out = _Outcomes()
        n = 0
        for i, (x, y) in enumerate(batches()):
            indices = torch.arange(n, n + x.shape[0], device="cpu")
            res = _quiet_distill(split, x, y, config, indices)
            out.add("mask", res.robust_mask)
            for inp in inputs:
                x_in = x if inp == "clean" else _adversarial(attacks[inp], model, x, y, i, n, seed)
                with frozen(clone), torch.no_grad():
                    z, ctx = split.features_and_context(x_in)
                    out.add(f"r/{inp}/int", split.head(z, ctx).argmax(1) == y)
                    for part, pred in _predict(split, z, ctx, res.robust_mask).items():
                        out.add(f"r/{inp}/{part}", pred == y)
            n += x.shape[0]
        t = out.tensors()
        trained = {k: v[:n] for k, v in reference.items()}
        agreement = seed_agreement(torch.stack([trained["ib_mask"].to(t["mask"].device), t["mask"]]))
        nonempty = 1 - agreement["both_empty"]
        table = _table({**t, **{k.replace("ib/", "t/", 1): v for k, v in trained.items() if k.startswith("ib/")}}, "r", inputs, "t")
        rows.append({**stage, "rows": table["rows"], "ci95": table["ci95"], "versus_trained": table["versus"],
                     "channels": {"robust": float(t["mask"].float().sum(1).mean()), "total": int(t["mask"].shape[1])},
                     "jaccard_mean": float(agreement["jaccard"].mean()),
                     "jaccard_nonempty_pairs": float((agreement["jaccard"] * nonempty).sum() / nonempty.sum()) if nonempty.any() else None,
                     "pairs_both_empty": float(agreement["both_empty"].mean())})
        del clone, split
    return {"n": n, "blocks": blocks, "attacks": "the examples made against the trained model (transfer)", "stages": rows}


# --------------------------------------------------------------------------- adaptive attacks
class MaskedModel(nn.Module):
    """``x ↦ f_l+(i_r · f_l(x))``: the model through its robust channels only, with a fixed mask.

    ``mask`` is bool ``[C]`` (the population split: any input) or ``[B, C]`` with ``anchors``, the ``B`` clean images
    ``[B, C, H, W]`` the rows belong to (the per-image masks held at their clean values). Each input image gets the
    mask of its nearest anchor in L∞ distance: its own clean image, for an attack within a budget smaller than
    half the distance between two clean images, also when the attack calls the model on a subset of the batch
    (APGD does). The wrapped model is a submodule, so attacks freeze and restore it as they do any model.
    """

    def __init__(self, split: LayerSplit, mask: Tensor, anchors: Tensor | None = None) -> None:
        super().__init__()
        check(mask.dim() == 1 or (anchors is not None and anchors.shape[0] == mask.shape[0]),
              "per-image masks [B, C] need the B clean images they belong to (anchors)")
        self.model = split.model
        self._split = split
        self.mask: Tensor
        self.register_buffer("mask", mask.bool())
        self.anchors: Tensor | None
        self.register_buffer("anchors", None if anchors is None else anchors.detach().flatten(1))

    def masks_for(self, x: Tensor) -> Tensor:
        """The robust mask of each image of ``x``: ``[C]`` for a population mask, else ``[len(x), C]``."""
        if self.anchors is None:
            return self.mask
        flat = x.detach().flatten(1)
        nearest = torch.stack([(self.anchors - row).abs().amax(1).argmin() for row in flat])
        return self.mask[nearest]

    def forward(self, x: Tensor) -> Tensor:
        z, ctx = self._split.features_and_context(x)
        out: Tensor = self._split.head(apply_mask(z, self.masks_for(x), self._split.layer), ctx)
        return out


def adaptive_attacks(
    model: nn.Module,
    split: LayerSplit,
    batches: Iterable[tuple[Tensor, Tensor]],
    attacks: dict[str, Attack],
    transfer: dict[str, Adversarial],
    *,
    population_mask: Tensor,
    image_masks: Tensor,
    seed: int = 0,
    total: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Attack Z_r's own path, ``x ↦ f_l+(i_r · f_l(x))`` (:class:`MaskedModel`), at the same budget as the full model.

    Two attackers: one who knows the label-free population mask (``population``, fixed for every input), and
    one who knows each image's per-image mask (``per_image``: held fixed at the mask of the clean image, so the
    attack cannot move the mask itself). Beside each, Z_r's accuracy under the same attack made against the full
    model (``transfer``: the paper's Table 1), on the same images, with an exact McNemar test.

    Args:
        attacks: display label -> attack to run against the masked model (its label names the transfer examples).
        transfer: display label -> the full model's examples; an attack missing from it is compared with the first.
        population_mask: bool ``[C]``; image_masks: bool ``[N, C]``, row ``i`` for image ``i`` of ``batches``.

    Returns:
        ``{"n", kind: {"clean", "clean_ci95", "rows": {label: {"attack", "norm", "eps", "transfer", "transfer_ci95",
        "adaptive", "adaptive_ci95", "worst_case", "worst_case_ci95", "paired", "perturbation"}}}}`` for kind ``population``
        and ``per_image``; accuracies are shares of all ``n`` images predicted as their label, ``worst_case`` under both attacks.
    """
    check(bool(transfer), "adaptive attacks need the full model's examples to compare with")
    out = _Outcomes()
    points: dict[str, dict[str, list[Tensor]]] = {}
    n = 0
    bar = tqdm(total=total, desc="sanity: adaptive attacks", unit="img", disable=not progress, leave=False)
    for i, (x, y) in enumerate(batches):
        rows = image_masks[n:n + x.shape[0]].to(x.device)
        check(rows.shape[0] == x.shape[0], f"image_masks covers {image_masks.shape[0]} images, the batches more")
        wrapped = {"population": MaskedModel(split, population_mask.to(x.device)), "per_image": MaskedModel(split, rows, anchors=x)}
        for kind, masked in wrapped.items():
            with torch.no_grad(), frozen(masked):
                out.add(f"{kind}/clean", masked(x).argmax(1) == y)
        for label, attack in attacks.items():
            source = transfer.get(label, next(iter(transfer.values())))
            x_transfer = _adversarial(source, model, x, y, i, n, seed)
            for kind, masked in wrapped.items():
                measured = measure_batch(attack, masked, x, y, seed=seed, batch=i, start=n)
                with torch.no_grad(), frozen(masked):
                    out.add(f"{kind}/{label}/transfer", masked(x_transfer).argmax(1) == y)
                out.add(f"{kind}/{label}/adaptive", measured["adv_pred"] == y)
                bucket = points.setdefault(f"{kind}/{label}", {})
                for key, value in measured.items():
                    if key != "x_adv":
                        bucket.setdefault(key, []).append(value.detach().cpu())
        n += x.shape[0]
        bar.update(x.shape[0])
    bar.close()
    check(n > 0, "no images to attack")
    t = out.tensors()
    result: dict[str, Any] = {"n": n, "transfer_of": {label: label if label in transfer else next(iter(transfer)) for label in attacks}}
    for kind in ("population", "per_image"):
        clean = t[f"{kind}/clean"]
        entry: dict[str, Any] = {"clean": _share(clean), "clean_ci95": _ci(clean), "rows": {}}
        for label, attack in attacks.items():
            a, b = t[f"{kind}/{label}/transfer"], t[f"{kind}/{label}/adaptive"]
            cols = {k: torch.cat(v) for k, v in points[f"{kind}/{label}"].items()}
            entry["rows"][label] = {"attack": attack.describe(), "norm": attack.norm, "eps": attack.describe().get("eps"),
                                    "transfer": _share(a), "transfer_ci95": _ci(a), "adaptive": _share(b), "adaptive_ci95": _ci(b),
                                    "worst_case": _share(a & b), "worst_case_ci95": _ci(a & b),
                                    "paired": paired_counts(a, b), "perturbation": summarise_points(cols)["perturbation"]}
        result[kind] = entry
    return result


# --------------------------------------------------------------------------- layer sweep
def sweep_layers(model: nn.Module, layer: str, x: Tensor, count: int = 3) -> list[str]:
    """``layer`` and up to ``count − 1`` earlier layers of the same type, each at the next larger feature map.

    Walking back in the order a forward pass of ``x`` calls the modules, the nearest module of ``layer``'s class
    whose 4-D output is spatially larger than the last one taken is taken (for VGG-16 at ``features.41``, 2×2:
    ``features.31`` at 4×4 and ``features.21`` at 8×8). Returns the layers from the input side.
    """
    order, shapes = _execution_order(model, x)
    modules = dict(model.named_modules())
    check(layer in shapes and len(shapes[layer]) == 4, f"{layer!r} gives no 4-D feature map")
    kind = type(modules[layer])
    chosen = [layer]
    for name in reversed(order[: order.index(layer)]):
        if len(chosen) >= count:
            break
        shape = shapes[name]
        if type(modules[name]) is kind and len(shape) == 4 and shape[2] * shape[3] > shapes[chosen[-1]][2] * shapes[chosen[-1]][3]:
            chosen.append(name)
    return list(reversed(chosen))


def layer_sweep(
    model: nn.Module,
    layers: list[str],
    batches: Batches,
    attacks: dict[str, Adversarial],
    *,
    config: IBConfig,
    population_config: IBConfig,
    fit: Batches,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Table 1 at several layers: the per-image protocol with its label control, and the population split.

    Per layer: :func:`~nonrobust.analyses.feature_accuracy` with ``config`` and ``label_control=True``
    (``per_image``), a population split fitted on ``fit`` (``population``, with its robust channel count), the
    feature map's shape, and every accuracy's 95% interval (``ci95``).

    Returns:
        ``{layer: {"shape": [C, H, W], "per_image": table, "population": table}}``.
    """
    out: dict[str, Any] = {}
    for layer in tqdm(layers, desc="sanity: layers", unit="layer", disable=not progress, leave=False):
        split = split_model(model, layer)
        x0 = next(iter(batches()))[0]
        with frozen(model), torch.no_grad():
            shape = list(split.features(x0[:1]).shape[1:])
        per_image = feature_accuracy(model, split, batches(), attacks, config=config, seed=seed, label_control=True, progress=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            population = distill_population(split, ReiterableBatches(fit), population_config, progress=False)
        pop_table = feature_accuracy(model, split, batches(), attacks, population=population, seed=seed, progress=False)
        out[layer] = {"shape": shape, "per_image": with_intervals(per_image),
                      "population": {**with_intervals(pop_table), "population_config": asdict(population_config)}}
    return out

