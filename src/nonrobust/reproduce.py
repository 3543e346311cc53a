"""``nonrobust reproduce``: train a model at the paper's settings, then run the whole report on it.

A :class:`ReproducePreset` names an architecture, a data set, a training recipe
(:data:`nonrobust.training.PRESETS`) and the report's settings. :func:`reproduce`
chains

1. training into ``OUT/train`` (resumed when that folder already holds the run),
2. the report on the run's best checkpoint into ``OUT/report`` (bottleneck
   splits, every table and figure; cached step by step),

so rerunning the same command after a crash continues where it stopped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .attacks import ATTACK_SETS
from .errors import check
from .training.presets import PRESETS

__all__ = ["ReproducePreset", "REPRODUCE_PRESETS", "reproduce"]

log = logging.getLogger(__name__)

_PAPER_REPORT = {"eps": 0.03}  # the paper trains and attacks at γ = 0.03
_CPU_VGG16_REPORT = {"n": 1000, "attacks": ATTACK_SETS["report-cpu"].names, "table4_n": 100}
"""docs/findings' VGG-16 report (:data:`nonrobust.attacks.ATTACK_SETS` ``["report-cpu"]``), with Table 4's 200-step L2
attacks on the first 100 images."""


@dataclass(frozen=True)
class ReproducePreset:
    """A training recipe plus report settings, for one row of the paper's experiments."""

    name: str
    description: str
    arch: str
    data: str
    train_preset: str
    image_size: int | None = None
    report: dict[str, Any] = field(default_factory=dict)


REPRODUCE_PRESETS: dict[str, ReproducePreset] = {p.name: p for p in [
    ReproducePreset("paper-cifar10-vgg16", "VGG-16 on CIFAR-10, the reference code's PGD-AT (60 epochs, eps 0.03), full report at eps 0.03",
                    "vgg16", "cifar10", "reference", report=_PAPER_REPORT),
    ReproducePreset("paper-cifar10-wrn28-10", "WRN-28-10 on CIFAR-10, the reference code's PGD-AT, full report at eps 0.03",
                    "wrn28_10", "cifar10", "reference", report=_PAPER_REPORT),
    ReproducePreset("paper-svhn-vgg16", "VGG-16 on SVHN, the reference code's PGD-AT, full report at eps 0.03",
                    "vgg16", "svhn", "reference", report=_PAPER_REPORT),
    ReproducePreset("paper-svhn-wrn28-10", "WRN-28-10 on SVHN, the reference code's PGD-AT, full report at eps 0.03",
                    "wrn28_10", "svhn", "reference", report=_PAPER_REPORT),
    ReproducePreset("paper-tinyimagenet-vgg16", "VGG-16 on Tiny-ImageNet (64×64), the reference code's PGD-AT, full report at eps 0.03",
                    "vgg16", "tiny-imagenet", "reference", image_size=64, report=_PAPER_REPORT),
    ReproducePreset("paper-tinyimagenet-wrn28-10", "WRN-28-10 on Tiny-ImageNet (64×64), the reference code's PGD-AT, full report at eps 0.03",
                    "wrn28_10", "tiny-imagenet", "reference", image_size=64, report=_PAPER_REPORT),
    ReproducePreset("cpu-vgg16-cifar10", "training preset cpu-vgg16 (" + PRESETS["cpu-vgg16"].description + "), then the report "
                    "on the first 1,000 test images with the attack set report-cpu at eps 8/255",
                    "vgg16", "cifar10", "cpu-vgg16", report=_CPU_VGG16_REPORT),
    ReproducePreset("cpu-small-cifar10", "training preset cpu-small (" + PRESETS["cpu-small"].description + "), then the full "
                    "report at eps 8/255", "small_cnn", "cifar10", "cpu-small"),
]}


def reproduce(preset: str, out_dir: str | Path, *, data_dir: str | None = None, device: str = "auto", seed: int = 0,
              epochs: int | None = None, report_overrides: dict[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Train per :data:`REPRODUCE_PRESETS` ``[preset]``, then run the full report on the best checkpoint.

    ``epochs`` shortens training (e.g. for a smoke test); ``report_overrides`` go to
    :class:`nonrobust.report.ReportSettings`. Returns ``{"train": summary, "report": results}``.
    """
    from . import training
    from .report import ReportSettings, run_report

    check(preset in REPRODUCE_PRESETS, f"unknown reproduce preset {preset!r}: choose from {', '.join(REPRODUCE_PRESETS)}")
    p = REPRODUCE_PRESETS[preset]
    out = Path(out_dir)
    train_dir = out / "train"
    overrides = {"arch": p.arch, "data": p.data, "data_dir": data_dir, "image_size": p.image_size, "device": device, "seed": seed,
                 "epochs": epochs}
    resume = (train_dir / "config.json").is_file()
    base = training.load_config(train_dir) if resume else None
    config = training.make_config(p.train_preset, base=base, **overrides)
    log.info("reproduce %s: training into %s%s", preset, train_dir, " (resuming)" if resume else "")
    summary = training.train(config, train_dir, resume=resume, progress=progress)
    settings = ReportSettings(model=str(summary["best_checkpoint"]), data=p.data, data_dir=data_dir, image_size=p.image_size,
                              device=device, seed=seed, **{**p.report, **(report_overrides or {})})
    log.info("reproduce %s: report into %s", preset, out / "report")
    results = run_report(settings, out / "report", progress=progress)
    return {"train": summary, "report": results}
