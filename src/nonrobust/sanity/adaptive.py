"""Adaptive attacks (Tramèr et al. 2020): the masked model x ↦ f_l+(i_r · f_l(x)) attacked itself."""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..analyses import Adversarial, adversarial_batch
from ..attacks import Attack
from ..bottleneck import apply_mask
from ..errors import check
from ..evaluation import measure_batch, summarise_points
from ..runtime import frozen
from ..split import LayerSplit
from ..stats import paired_counts
from .outcomes import Outcomes, interval, share


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
    out = Outcomes()
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
            x_transfer = adversarial_batch(source, model, x, y, i, n, seed)
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
        entry: dict[str, Any] = {"clean": share(clean), "clean_ci95": interval(clean), "rows": {}}
        for label, attack in attacks.items():
            a, b = t[f"{kind}/{label}/transfer"], t[f"{kind}/{label}/adaptive"]
            cols = {k: torch.cat(v) for k, v in points[f"{kind}/{label}"].items()}
            entry["rows"][label] = {"attack": attack.describe(), "norm": attack.norm, "eps": attack.describe().get("eps"),
                                    "transfer": share(a), "transfer_ci95": interval(a), "adaptive": share(b), "adaptive_ci95": interval(b),
                                    "worst_case": share(a & b), "worst_case_ci95": interval(a & b),
                                    "paired": paired_counts(a, b), "perturbation": summarise_points(cols)["perturbation"]}
        result[kind] = entry
    return result
