"""Named training recipes (data, each a preset mapped to its settings), and building or reading a run's configuration."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError, check
from ..io import read_json
from .config import TrainConfig
from .folder import _FILES


# --------------------------------------------------------------------------- presets
@dataclass(frozen=True)
class Preset:
    """A named recipe: :class:`TrainConfig` overrides and what they reproduce."""

    name: str
    description: str
    overrides: dict[str, Any]


_REFERENCE = dict(method="pgd", optimizer="sgd", lr=0.01, momentum=0.0, weight_decay=1e-2, schedule="step:20:0.2", epochs=60,
                  batch_size=100, eps=0.03, alpha=0.0069, steps=10, mean=0.5, std=0.25)  # the reference code's own α (≈ 2.3·eps/steps)
_MADRY_SGD = dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4)
_PUBLISHED_LINF = dict(eps=8 / 255, steps=10)  # α: the method's default, 2.5·eps/steps = 2/255 (STEP_FACTORS["madry"])

PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("reference", "the reference code (docs/method.md §5): PGD-AT, SGD lr 0.01 without momentum, wd 1e-2, StepLR(20, 0.2), "
           "60 epochs, batch 100, eps 0.03, α 0.0069, 10 steps, normalisation (x−0.5)/0.25", _REFERENCE),
    Preset("reference-trades", "the reference code's TRADES: as reference, CE inner maximisation, CE on adversarial inputs, β 0.5",
           {**_REFERENCE, "method": "trades", "beta": 0.5, "inner": "ce", "ce_on_adv": True}),
    Preset("reference-mart", "the reference code's MART: as reference, CE on adversarial inputs, β 0.5",
           {**_REFERENCE, "method": "mart", "beta": 0.5, "ce_on_adv": True}),
    Preset("madry", "PGD-AT (Madry et al.): eps 8/255, α 2/255, 10 steps, SGD 0.1 momentum 0.9 wd 5e-4, ×0.1 at epochs 100 and 150 of 200",
           {"method": "pgd", **_MADRY_SGD, **_PUBLISHED_LINF, "schedule": "multistep:100,150:0.1", "epochs": 200, "batch_size": 128}),
    Preset("trades", "TRADES as published (Zhang et al. 2019 code): β 6, KL inner maximisation, eps 8/255, α 2/255, 10 steps, "
           "SGD 0.1 momentum 0.9 wd 2e-4, 76 epochs with ×0.1 for the last two",
           {"method": "trades", "beta": 6.0, "inner": "kl", "ce_on_adv": False, **_PUBLISHED_LINF, "optimizer": "sgd", "lr": 0.1,
            "momentum": 0.9, "weight_decay": 2e-4, "schedule": "multistep:74:0.1", "epochs": 76, "batch_size": 128}),
    Preset("mart", "MART as published (Wang et al. 2020 code, ResNet-18 recipe): β 6, eps 8/255, α 2/255, 10 steps, "
           "SGD 0.01 momentum 0.9 wd 3.5e-3, 120 epochs, ×0.1 at 75, 90, 100",
           {"method": "mart", "beta": 6.0, "ce_on_adv": False, **_PUBLISHED_LINF, "optimizer": "sgd", "lr": 0.01, "momentum": 0.9,
            "weight_decay": 3.5e-3, "schedule": "multistep:75,90,100:0.1", "epochs": 120, "batch_size": 128}),
    Preset("fast", "fast AT (Wong et al. 2020): FGSM from a uniform random start, eps 8/255, α 10/255, cyclic lr peak 0.2, "
           "15 epochs, momentum 0.9, wd 5e-4",
           {"method": "fast", "eps": 8 / 255, "steps": 1, "optimizer": "sgd", "lr": 0.2, "momentum": 0.9,
            "weight_decay": 5e-4, "schedule": "cyclic", "epochs": 15, "batch_size": 128}),
    Preset("cpu-small", "the shipped small_cnn recipe: fast AT on CIFAR-10, eps 8/255, α 10/255, batch 128, cyclic lr peak 0.2, "
           "25 epochs: 69 min measured on 2 CPU cores for the shipped model (its metadata's training_seconds, 4128 s)",
           {"arch": "small_cnn", "data": "cifar10", "method": "fast", "eps": 8 / 255, "steps": 1, "optimizer": "sgd",
            "lr": 0.2, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "cyclic", "epochs": 25, "batch_size": 128}),
    Preset("cpu-vgg16", "the shipped cifar10-vgg16-at recipe: the paper's VGG-16-BN, fast AT on CIFAR-10, eps 8/255, α 10/255, "
           "batch 128, 13 epochs: lr one-cycle 0 → 0.2 → 0 over 8 epochs, then a second descent 0.125 → 0 over 5; channels-last: "
           "3 h 30 min measured on 2 CPU cores for the shipped model (its metadata's training_seconds, 12606 s)",
           {"arch": "vgg16", "data": "cifar10", "method": "fast", "eps": 8 / 255, "steps": 1, "optimizer": "sgd",
            "lr": 0.2, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "piecewise:0=0,3=1,8=0,8=0.625,13=0", "epochs": 13,
            "batch_size": 128, "channels_last": True}),
    Preset("cpu-vgg16-std", "the shipped cifar10-vgg16-std recipe: the paper's VGG-16-BN, standard training on CIFAR-10, batch 128, "
           "SGD momentum 0.9 wd 5e-4, 12 epochs: lr one-cycle 0 → 0.1 at epoch 3 → 0 at 12; channels-last; the per-epoch check's "
           "PGD has 1 step (a standard model has no robustness to track): 1 h 51 min measured on 2 CPU cores for the shipped model "
           "(its metadata's training_seconds, 6686 s)",
           {"arch": "vgg16", "data": "cifar10", "method": "standard", **_MADRY_SGD, "schedule": "piecewise:0=0,3=1,12=0", "epochs": 12,
            "batch_size": 128, "channels_last": True, "eval_pgd_steps": 1}),
    Preset("cpu-wrn16", "the shipped cifar10-wrn16-at recipe: WideResNet-16-2 (the wrn28_10 family at depth 16, widen 2; split "
           "at its final BatchNorm, 8×8 at 32 px), fast AT on CIFAR-10, eps 8/255, α 10/255, batch 128, cyclic lr peak 0.2, "
           "12 epochs, SGD momentum 0.9 wd 5e-4: 1 h 08 min measured on 2 CPU cores for the shipped model (its metadata's "
           "training_seconds, 4110 s)",
           {"arch": "wrn28_10", "arch_options": {"depth": 16, "widen": 2}, "data": "cifar10", "method": "fast", "eps": 8 / 255,
            "steps": 1, "optimizer": "sgd", "lr": 0.2, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "cyclic", "epochs": 12,
            "batch_size": 128}),
    Preset("cpu-small-trades", "the shipped cifar10-small-trades recipe: small_cnn, TRADES (β 6, KL inner maximisation from a "
           "small random start, 3 steps of α 2.5·eps/3, CE on clean inputs) on CIFAR-10, eps 8/255, batch 128, cyclic lr peak 0.1 "
           "(TRADES's published rate), 12 epochs, SGD momentum 0.9 wd 5e-4, channels-last: cpu-small's schedule shape and its hour of 2 CPU "
           "cores (TRADES-3 costs ≈2× fast AT per image): 1 h 18 min measured on 2 CPU cores for the shipped model, about 26 min of it "
           "lost to a test run beside epochs 5 and 6 (its metadata's training_seconds, 4702 s)",
           {"arch": "small_cnn", "data": "cifar10", "method": "trades", "beta": 6.0, "inner": "kl", "ce_on_adv": False,
            "eps": 8 / 255, "steps": 3, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "cyclic",
            "epochs": 12, "batch_size": 128, "channels_last": True}),
    Preset("cpu-small-mart", "the shipped cifar10-small-mart recipe: small_cnn, MART (β 6, boosted CE on PGD-3 inputs of α "
           "2.5·eps/3, KL weighted by 1 − p_y) on CIFAR-10, eps 8/255, batch 128, cyclic lr peak 0.1, 15 epochs, SGD momentum "
           "0.9 wd 5e-4, channels-last: cpu-small's schedule shape and its hour of 2 CPU cores (MART-3 costs ≈1.6× fast AT per image): "
           "1 h 00 min measured on 2 CPU cores for the shipped model (its metadata's training_seconds, 3608 s)",
           {"arch": "small_cnn", "data": "cifar10", "method": "mart", "beta": 6.0, "ce_on_adv": False, "eps": 8 / 255, "steps": 3,
            "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "cyclic", "epochs": 15,
            "batch_size": 128, "channels_last": True}),
    Preset("standard", "standard training: SGD 0.1 momentum 0.9 wd 5e-4, cosine, 30 epochs, batch 128",
           {"method": "standard", **_MADRY_SGD, "schedule": "cosine", "epochs": 30, "batch_size": 128}),
)}


def make_config(preset: str | None = None, base: TrainConfig | None = None, **overrides: Any) -> TrainConfig:
    """Build a :class:`TrainConfig`: ``base`` (e.g. a resumed run's), then preset ``preset``, then ``overrides``.

    ``overrides`` whose value is ``None`` are ignored, so command-line options that
    were not given can be passed straight through. Raises :class:`UserError` for an
    unknown preset or setting, or a missing ``arch`` / ``data``.
    """
    values: dict[str, Any] = asdict(base) if base is not None else {}
    if preset is not None:
        check(preset in PRESETS, f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
        values.update(PRESETS[preset].overrides)
    values.update({k: v for k, v in overrides.items() if v is not None})
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - names)
    check(not unknown, f"unknown training setting(s) {', '.join(unknown)}: settings are {', '.join(sorted(names))}")
    for key in ("arch", "data"):
        check(key in values, f"no {key} given: pass --{key} (or a --preset that sets it)")
    return TrainConfig(**values)


def load_config(out_dir: str | os.PathLike[str]) -> TrainConfig:
    """The resolved config of the run in ``out_dir`` (its ``config.json``)."""
    path = Path(out_dir) / _FILES["config"]
    check(path.is_file(), f"{out_dir}: no training run to resume here (no {_FILES['config']})")
    data = read_json(path)
    check(isinstance(data, dict), f"{path}: not a training config")
    try:
        return make_config(**data)
    except TypeError as exc:
        raise UserError(f"{path}: not a valid training config ({exc})") from None


