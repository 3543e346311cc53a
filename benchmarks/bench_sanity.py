"""The cost of each sanity check, in forward passes of the full model, against the report's Table 1 step.

For a shipped model (default ``cifar10-vgg16-at``) on the first ``--n`` images of the shipped CIFAR-10 slice
(1,000 test images, JPEG-re-encoded), with one stored attack (PGD-20, run first and not counted: every
check reads the same stored examples, as the report does), this times:

* one forward pass of the full model over the images (the unit);
* the report's Table 1 step under the per-image protocol at the report's defaults (3 noise seeds for the
  stability, the label control);
* each sanity check at the report's defaults: the random-subset and label-oracle pass, model randomisation
  (3 blocks: 7 stages), the layer sweep (the split layer and two earlier ones at larger maps, unless
  ``--layers``), and the adaptive attacks (PGD-20 and APGD-CE against Z_r's own path, both masks),
  which cost what an attack costs and are reported apart.

A second pass (without the adaptive attacks; ``--no-flops`` skips it) counts each part's floating-point
operations in matrix products and convolutions, forward and backward (``torch.utils.flop_counter``), in
units of one forward pass's: the ratio that wall time approaches where the arithmetic, not the number of
small operations, sets the pace (a large GPU batch), and one no implementation of the same protocol can
beat by doing the same arithmetic faster.

Every figure is a ratio measured in this one run. The target (issue 25): everything but the adaptive
attacks ≤ 2× the Table 1 step.

Usage: python benchmarks/bench_sanity.py [--model cifar10-vgg16-at] [--n 128] [--layers a,b] [--no-adaptive] [--no-flops]
       [--no-time] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import timing  # benchmarks/timing.py
import torch
from torch.utils.flop_counter import FlopCounterMode

from nonrobust import data, models, sanity
from nonrobust.analyses import feature_accuracy
from nonrobust.attacks import make_attack
from nonrobust.bottleneck import IBConfig, ReiterableBatches, distill_population
from nonrobust.runtime import environment
from nonrobust.split import split_model
from nonrobust.streams import StoredAdversarial, attack_to_file

BATCH = 128
PARTS = ("table1_step", "population_fit", "random_subset_and_label_oracle", "model_randomisation", "layers", "adaptive")


def seconds(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall time of ``fn()`` (benchmarks/timing.py's clock) and its result."""
    box: list[Any] = []
    return timing.clock(lambda: box.append(fn()), torch.device("cpu")), box[0]


def flops(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Floating-point operations of ``fn()``'s matrix products and convolutions, forward and backward
    (``torch.utils.flop_counter``; elementwise work is not counted), and its result."""
    with FlopCounterMode(display=False) as counter:
        out = fn()
    return float(counter.get_total_flops()), out


def costs(measure: Callable[[Callable[[], Any]], tuple[float, Any]], model: torch.nn.Module, batches: list, fit: Any,
          stored: dict, layers: list[str], adaptive: bool) -> dict[str, float]:
    """Each part of the sanity checks (``PARTS``) under ``measure``, in units of one forward pass over ``batches``."""
    layer = model.nonrobust_meta.split_layer
    split = split_model(model, layer)
    ib = IBConfig()
    pop_config = IBConfig(protocol="population", threshold="channel")
    with torch.no_grad():
        model(batches[0][0])  # warm-up
        unit, _ = measure(lambda: [model(x) for x, _ in batches])
    cost: dict[str, float] = {}
    cost["population_fit"], population = measure(
        lambda: distill_population(split, ReiterableBatches(lambda: fit.batches(BATCH)), pop_config, progress=False))
    cost["table1_step"], _ = measure(lambda: feature_accuracy(model, split, batches, stored, config=ib, stability=3, label_control=True,
                                                              progress=False))
    cost["random_subset_and_label_oracle"], (_, tensors) = measure(
        lambda: sanity.mask_controls(model, split, batches, stored, config=ib, population=population, progress=False))
    cost["model_randomisation"], _ = measure(lambda: sanity.model_randomisation(model, layer, lambda: batches, stored, config=ib,
                                                                                reference=tensors, blocks=3, progress=False))
    cost["layers"], _ = measure(lambda: sanity.layer_sweep(model, layers, lambda: batches, stored, config=ib, population_config=pop_config,
                                                           fit=lambda: fit.batches(BATCH), progress=False))
    if adaptive:
        own = {"PGD-20": make_attack("pgd-20"), "APGD-CE": make_attack("apgd-ce")}
        cost["adaptive"], _ = measure(lambda: sanity.adaptive_attacks(model, split, batches, own, stored, population_mask=population.robust_mask,
                                                                      image_masks=tensors["ib_mask"], progress=False))
    return {"unit": unit, **{k: v / unit for k, v in cost.items()}}


def over_table1(passes: dict[str, float]) -> float:
    """Everything but the adaptive attacks, as a multiple of the Table 1 step (the population fit is part of the controls)."""
    return sum(passes[k] for k in ("random_subset_and_label_oracle", "model_randomisation", "layers")) / passes["table1_step"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--model", default="cifar10-vgg16-at")
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--layers", help="layers of the sweep, comma-separated (default: sanity.sweep_layers)")
    ap.add_argument("--no-adaptive", action="store_true", help="skip the adaptive attacks")
    ap.add_argument("--no-flops", action="store_true", help="skip the second pass that counts floating-point operations")
    ap.add_argument("--no-time", action="store_true", help="skip the timed pass (FLOP counts do not depend on what else the machine runs)")
    ap.add_argument("--out", default="benchmarks/results/bench_sanity.json")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    model = models.pretrained(args.model)
    layer = model.nonrobust_meta.split_layer
    ds = data.load_dataset("cifar10-slice", "test", None)
    images, fit = ds.first(args.n), ds.rows(args.n, min(len(ds), args.n + 512))
    batches = list(images.batches(BATCH))
    layers = args.layers.split(",") if args.layers else sanity.sweep_layers(model, layer, batches[0][0])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pgd.safetensors"
        attack_to_file(model, images, make_attack("pgd-20"), path, batch_size=BATCH, progress=False)
        stored = {"PGD-20": StoredAdversarial(path)}
        timed = None if args.no_time else costs(seconds, model, batches, fit, stored, layers, not args.no_adaptive)
        counted = None if args.no_flops else costs(flops, model, batches, fit, stored, layers, adaptive=False)
    passes = None if timed is None else {k: v for k, v in timed.items() if k != "unit"}
    result = {"model": args.model, "layer": layer, "n": args.n, "layers": layers,
              "forward_pass_seconds": None if timed is None else timed["unit"],
              "forward_passes": None if passes is None else {k: v for k, v in passes.items() if k != "adaptive"},
              "adaptive_forward_passes": None if passes is None else passes.get("adaptive"),
              "sanity_without_adaptive_over_table1": None if passes is None else over_table1(passes),
              "forward_pass_flops": None if counted is None else counted["unit"],
              "flops_in_forward_passes": None if counted is None else {k: v for k, v in counted.items() if k != "unit"},
              "flops_sanity_without_adaptive_over_table1": None if counted is None else over_table1(counted),
              "target": "sanity without the adaptive attacks ≤ 2× the Table 1 step",
              "meets": None if passes is None else over_table1(passes) <= 2, "environment": environment(torch.device("cpu"))}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "environment"}, indent=1))


if __name__ == "__main__":
    main()
