"""Model randomisation (Adebayo et al. 2018): the split rerun on copies of the model with re-initialised weights."""

from __future__ import annotations

import copy
from typing import Any, Mapping

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..analyses import Adversarial, adversarial_batch
from ..bottleneck import IBConfig, seed_agreement
from ..errors import check
from ..runtime import derive_seed, frozen
from ..split import split_model
from .outcomes import Batches, Outcomes, predict, quiet_distill, table_of


_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def execution_order(model: nn.Module, x: Tensor) -> tuple[list[str], dict[str, tuple[int, ...]]]:
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
    order, _ = execution_order(model, x)
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
        out = Outcomes()
        n = 0
        for i, (x, y) in enumerate(batches()):
            indices = torch.arange(n, n + x.shape[0], device="cpu")
            res = quiet_distill(split, x, y, config, indices)
            out.add("mask", res.robust_mask)
            for inp in inputs:
                x_in = x if inp == "clean" else adversarial_batch(attacks[inp], model, x, y, i, n, seed)
                with frozen(clone), torch.no_grad():
                    z, ctx = split.features_and_context(x_in)
                    out.add(f"r/{inp}/int", split.head(z, ctx).argmax(1) == y)
                    for part, pred in predict(split, z, ctx, res.robust_mask).items():
                        out.add(f"r/{inp}/{part}", pred == y)
            n += x.shape[0]
        t = out.tensors()
        trained = {k: v[:n] for k, v in reference.items()}
        agreement = seed_agreement(torch.stack([trained["ib_mask"].to(t["mask"].device), t["mask"]]))
        nonempty = 1 - agreement["both_empty"]
        table = table_of({**t, **{k.replace("ib/", "t/", 1): v for k, v in trained.items() if k.startswith("ib/")}}, "r", inputs, "t")
        rows.append({**stage, "rows": table["rows"], "ci95": table["ci95"], "versus_trained": table["versus"],
                     "channels": {"robust": float(t["mask"].float().sum(1).mean()), "total": int(t["mask"].shape[1])},
                     "jaccard_mean": float(agreement["jaccard"].mean()),
                     "jaccard_nonempty_pairs": float((agreement["jaccard"] * nonempty).sum() / nonempty.sum()) if nonempty.any() else None,
                     "pairs_both_empty": float(agreement["both_empty"].mean())})
        del clone, split
    return {"n": n, "blocks": blocks, "attacks": "the examples made against the trained model (transfer)", "stages": rows}
