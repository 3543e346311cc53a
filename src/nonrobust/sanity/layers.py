"""The layer sweep: Table 1 and its controls at several layers of one model."""

from __future__ import annotations

import warnings
from dataclasses import asdict
from typing import Any, Mapping

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..analyses import Adversarial, feature_accuracy
from ..bottleneck import IBConfig, ReiterableBatches, distill_population
from ..errors import check
from ..runtime import frozen
from ..split import split_model
from .outcomes import Batches, with_intervals
from .randomisation import execution_order


def sweep_layers(model: nn.Module, layer: str, x: Tensor, count: int = 3) -> list[str]:
    """``layer`` and up to ``count − 1`` earlier layers of the same type, each at the next larger feature map.

    Walking back in the order a forward pass of ``x`` calls the modules, the nearest module of ``layer``'s class
    whose 4-D output is spatially larger than the last one taken is taken (for VGG-16 at ``features.41``, 2×2:
    ``features.31`` at 4×4 and ``features.21`` at 8×8). Returns the layers from the input side.
    """
    order, shapes = execution_order(model, x)
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
    known: Mapping[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Table 1 at several layers: the per-image protocol with its label control, and the population split.

    Per layer: :func:`~nonrobust.analyses.feature_accuracy` with ``config`` and ``label_control=True``
    (``per_image``), a population split fitted on ``fit`` (``population``, with its robust channel count), the
    feature map's shape, and every accuracy's 95% interval (``ci95``).

    ``known`` gives layers whose two tables were computed before on the same images with the same settings (the
    report's own Table 1 at its split layer): they are taken as they are.

    Returns:
        ``{layer: {"shape": [C, H, W], "per_image": table, "population": table}}``.
    """
    out: dict[str, Any] = {}
    for layer in tqdm(layers, desc="sanity: layers", unit="layer", disable=not progress, leave=False):
        split = split_model(model, layer)
        x0 = next(iter(batches()))[0]
        with frozen(model), torch.no_grad():
            shape = list(split.features(x0[:1]).shape[1:])
        if known and layer in known:
            out[layer] = {"shape": shape, **{k: with_intervals(v) for k, v in known[layer].items()}}
            continue
        per_image = feature_accuracy(model, split, batches(), attacks, config=config, seed=seed, label_control=True, progress=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            population = distill_population(split, ReiterableBatches(fit), population_config, progress=False)
        pop_table = feature_accuracy(model, split, batches(), attacks, population=population, seed=seed, progress=False)
        out[layer] = {"shape": shape, "per_image": with_intervals(per_image),
                      "population": {**with_intervals(pop_table), "population_config": asdict(population_config)}}
    return out
