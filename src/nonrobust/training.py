"""Standard and adversarial training on one loop: standard, PGD-AT, TRADES, MART and fast AT.

A run is a :class:`TrainConfig` (usually a :data:`PRESETS` entry plus
overrides, see :func:`make_config`) and an output folder::

    cfg = make_config("madry", arch="small_cnn", data="cifar10", epochs=30)
    result = train(cfg, "runs/madry")            # ... killed? then:
    result = train(cfg, "runs/madry", resume=True)

Each method of :data:`METHODS` is only a *loss*: ``loss(batch) -> (loss,
logits)`` on the batch of one step. Every inner maximisation runs the plain
(unwrapped) model in eval mode through :mod:`nonrobust.attacks`, as the
reference code does.

Run folder (written by rank 0 only)::

    config.json          the resolved TrainConfig (every default filled in)
    state.safetensors    the commit point of an epoch: model weights, optimizer
                         tensors, and in its JSON header the epoch count, the
                         per-epoch metrics, the best epoch and the optimizer's
                         non-tensor state. Written atomically, FIRST.
    last.safetensors     model checkpoint after the last complete epoch
                         (models.load-able; recipe = config + command, metrics)
    best.safetensors     the checkpoint of the best epoch (held-out PGD
                         accuracy; clean accuracy for standard training)
    metrics.jsonl        one JSON line per complete epoch
    provenance.json      what the run is made from (model, data, settings, versions, command:
                         :func:`nonrobust.identity.provenance`), also in every checkpoint's metadata

Crash safety: ``state.safetensors`` alone defines how far a run got; the other
files are derived from it. A crash between writing it and the derived files
leaves them one epoch behind, and resuming rewrites them (``metrics.jsonl``
from the history, ``last`` and — when the best epoch is the last one —
``best`` from the state's weights). A crash mid-epoch loses that epoch only.

Exact resume: no random-generator state needs saving, because every random
stream is derived from ``(seed, epoch, purpose, rank)``: the epoch's shuffle,
the augmentation, the attacks' random starts and a private stream for code
that can only draw from the global RNG (dropout), which runs inside
:func:`torch.random.fork_rng` so the caller's global RNG is never touched.
The learning rate is a pure function of the position in training. Resuming at
an epoch boundary therefore continues bit for bit on the same device
(checked on CPU). Cosine and cyclic schedules depend on the total number of
epochs, so extending such a run with more ``epochs`` changes the rest of its
schedule.

Multi-GPU / multi-node: under ``torchrun`` (``WORLD_SIZE > 1``) the process
group is initialised (NCCL for CUDA, else gloo), the model is wrapped in
DistributedDataParallel and every rank draws the same epoch permutation and
takes positions ``rank::world`` of it (padded as DistributedSampler does).
``batch_size`` is the *global* batch (it must divide by the world size): step
``i`` uses the same images as a single-process run's step ``i``. Multi-node
runs need ``out_dir`` on a shared file system.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import models
from .attacks import PGD, STEP_FACTORS, Ball, optimise, step_size
from .data import DATASETS, ImageDataset, augment, load_dataset
from .errors import UserError, check
from .fields import DATA_DIR_HELP, setting
from .identity import data_digest, data_record, model_digest, provenance, work_key
from .io import atomic_write, check_output_folder, load_tensors, read_json, save_tensors, write_json
from .runtime import Distributed, derive_seed, environment, frozen, make_generator

__all__ = [
    "TrainConfig",
    "MethodSpec",
    "METHODS",
    "Preset",
    "PRESETS",
    "Batch",
    "make_config",
    "load_config",
    "lr_factor",
    "trades_adversary",
    "prediction_kl",
    "train",
    "STATE_FORMAT",
]

log = logging.getLogger(__name__)

STATE_FORMAT = "nonrobust-train-state"
_STATE_VERSION = 1
_RESUMABLE_CHANGES = ("epochs", "device")
_FILES = {"config": "config.json", "state": "state.safetensors", "last": "last.safetensors",
          "best": "best.safetensors", "metrics": "metrics.jsonl", "provenance": "provenance.json"}


# --------------------------------------------------------------------------- configuration
@dataclass
class TrainConfig:
    """Every setting of a training run. ``None`` means "the method's / data set's default" (see :meth:`resolved`).

    Attributes:
        arch, arch_options: a :data:`nonrobust.models.ARCHITECTURES` name and its options.
        data, data_dir: data set name (see :func:`nonrobust.data.load_dataset`) and folder.
        method: a :data:`METHODS` key (standard, pgd, trades, mart, fast).
        train_subset: train on the first N training images only.
        image_size: resize images to this side (folder / Tiny-ImageNet data).
        epochs, batch_size: length of training and the global batch size.
        optimizer, lr, momentum, weight_decay: SGD settings (``lr`` is the peak for ``cyclic``).
        schedule: see :func:`lr_factor`: ``constant``, ``step:S:G``, ``multistep:M1,M2:G``, ``cosine``, ``cyclic``,
            ``piecewise:E0=F0,E1=F1,...``.
        eps, steps, alpha: L∞ budget, inner steps and step size of the inner attack
            (``steps`` default 10, 1 for fast; ``alpha`` default 2.5·eps/steps, 1.25·eps for fast).
        beta: TRADES / MART trade-off (default 6).
        inner: inner maximisation of TRADES: ``kl`` (published) or ``ce`` (PGD on CE); ``ce`` for the others.
        ce_on_adv: the reference code's variant: the classification term is plain CE on the
            adversarial inputs (TRADES: instead of CE on clean inputs; MART: instead of the boosted BCE).
        mean, std: the model's input normalisation (default: the data set's statistics, else 0.5/0.25).
        flip, crop_pad: augmentation (random crop with ``crop_pad`` zero padding, horizontal flip;
            ``flip`` defaults to the data set registry's choice, e.g. no flip for SVHN).
        eval_n, eval_pgd_steps: size of the fixed held-out subset (the first images of the test
            split) and the steps of the per-epoch PGD evaluation (α = 2.5·eps/steps).
        seed: seed of every random draw (initialisation, shuffling, augmentation, attack starts, dropout).
        device: ``auto``, ``cpu``, ``cuda``, ...; under torchrun each rank uses ``cuda:LOCAL_RANK``.
        amp: ``none`` or ``bf16`` (``torch.autocast``); channels_last: NHWC memory format.
        init: a file of initial weights (a nonrobust checkpoint or a state dict of ``arch``), loaded strictly;
            ``None`` initialises from ``seed``. A resumed run checks that they are still the same weights.
    """

    arch: str
    data: str
    method: str = setting("pgd", "training method: standard, pgd, trades, mart or fast")
    arch_options: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = setting(None, DATA_DIR_HELP)
    train_subset: int | None = setting(None, "train on the first N training images only", "positive_int")
    image_size: int | None = setting(None, "resize images to PX×PX (folder and tiny-imagenet data)", "positive_int")
    epochs: int = setting(30, "epochs (on --resume: train up to this many)", "positive_int")
    batch_size: int = setting(128, "global batch size", "positive_int")
    optimizer: str = "sgd"
    lr: float = setting(0.1, "learning rate (the peak of the cyclic schedule)", "positive")
    momentum: float = setting(0.9, "SGD momentum", "non_negative")
    weight_decay: float = setting(5e-4, "weight decay", "non_negative")
    schedule: str = setting("cosine", "constant, step:S:G, multistep:M1,M2:G, cosine, cyclic or piecewise:E0=F0,E1=F1,...")
    eps: float = setting(8 / 255, "L∞ budget of the inner attack and the held-out check, in [0,1] pixel units", "positive")
    steps: int | None = setting(None, "inner attack steps (default 10; 1 for fast)", "positive_int")
    alpha: float | None = setting(None, "inner attack step size (default 2.5·eps/steps; 1.25·eps for fast)", "positive")
    beta: float | None = setting(None, "TRADES / MART trade-off β (default 6)", "non_negative")
    inner: Literal["ce", "kl"] | None = setting(None, "TRADES inner maximisation: kl (published) or ce (reference code)", "choice")
    ce_on_adv: bool = False
    mean: float | list[float] | None = None
    std: float | list[float] | None = None
    flip: bool | None = setting(None, "random horizontal flips (default: per data set)", "flag")
    crop_pad: int = 4
    eval_n: int = setting(500, "held-out test images checked after every epoch", "positive_int")
    eval_pgd_steps: int = setting(10, "PGD steps of the per-epoch check", "positive_int")
    seed: int = setting(0, "seed of every random draw", "int")
    device: str = "auto"
    amp: Literal["none", "bf16"] = setting("none", "mixed precision: bf16 autocast, or none", "choice")
    channels_last: bool = setting(False, "NHWC memory format", "flag")
    init: str | None = setting(None, "start from these weights instead of a random initialisation (fine-tuning): a nonrobust "
                               "checkpoint or a state dict of the architecture (.pt or .safetensors, read without running code)")

    def __post_init__(self) -> None:
        check(self.method in METHODS, f"unknown training method {self.method!r}: choose one of {', '.join(METHODS)}")
        spec = METHODS[self.method]
        positive_ints = ("epochs", "batch_size", "eval_n", "eval_pgd_steps")
        for name in positive_ints:
            value = getattr(self, name)
            check(isinstance(value, int) and not isinstance(value, bool) and value >= 1, f"{name} must be a positive integer, got {value!r}")
        for name in ("train_subset", "image_size", "steps"):
            value = getattr(self, name)
            check(value is None or (isinstance(value, int) and value >= 1), f"{name} must be a positive integer, got {value!r}")
        check(self.optimizer == "sgd", f"optimizer must be sgd, got {self.optimizer!r}")
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        check(self.momentum >= 0 and self.weight_decay >= 0, "momentum and weight decay must be ≥ 0")
        check(self.eps > 0, f"eps must be > 0, got {self.eps}")
        check(self.alpha is None or self.alpha > 0, f"alpha must be > 0, got {self.alpha}")
        check(self.beta is None or self.beta >= 0, f"beta must be ≥ 0, got {self.beta}")
        check(self.inner is None or self.inner in spec.inners, f"method {self.method} takes inner {' or '.join(spec.inners)}, got {self.inner!r}")
        check(self.steps is None or spec.fixed_steps is None or self.steps == spec.fixed_steps,
              f"method {self.method} takes {spec.fixed_steps} inner step(s), got {self.steps}; use --method pgd for more")
        check(self.crop_pad >= 0, f"crop_pad must be ≥ 0, got {self.crop_pad}")
        check(self.amp in ("none", "bf16"), f"amp must be none or bf16, got {self.amp!r}")
        check(isinstance(self.arch_options, dict), "arch_options must be a dict")
        for key in ("mean", "std"):
            value = getattr(self, key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                setattr(self, key, float(value))
            elif value is not None:
                setattr(self, key, [float(v) for v in value])
        lr_factor(self.schedule, 0, 0, 1, self.epochs)  # raises UserError for a bad schedule

    def resolved(self) -> TrainConfig:
        """A copy with every ``None`` default filled in from the method and the data set registry."""
        spec = METHODS[self.method]
        steps = self.steps or spec.fixed_steps or 10
        info = DATASETS.get(str(self.data).lower())
        return dataclasses.replace(
            self,
            steps=steps,
            alpha=self.alpha if self.alpha is not None else step_size(self.eps, steps, spec.alpha_factor),
            beta=self.beta if self.beta is not None else spec.beta,
            inner=self.inner or spec.inners[0],
            flip=self.flip if self.flip is not None else (info.flip if info else True),
            mean=self.mean if self.mean is not None else (list(info.mean) if info else None),
            std=self.std if self.std is not None else (list(info.std) if info else None),
        )

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain JSON values."""
        return cast("dict[str, Any]", json.loads(json.dumps(asdict(self))))


def lr_factor(schedule: str, epoch: int, step: int, steps_per_epoch: int, epochs: int) -> float:
    """The learning-rate multiplier at step ``step`` of epoch ``epoch`` (both from 0).

    Schedules: ``constant``; ``step:S:G`` (×G every S epochs, as StepLR);
    ``multistep:M1,M2,...:G`` (×G after each milestone epoch, as MultiStepLR);
    ``cosine`` (per step, from 1 to 0 over all epochs); ``cyclic`` (Wong et al.
    2020 one-cycle: per step, linear 0 → 1 at 2/5 of training → 0);
    ``piecewise:E0=F0,E1=F1,...`` (per step, linear between the knots: factor Fi at
    epoch Ei, non-decreasing epochs, the first and last factors held outside them;
    an epoch given twice is a jump, its first factor ending the segment before it,
    e.g. ``piecewise:0=0,3=1,8=0,8=0.625,13=0`` is a one-cycle over 8 epochs then a
    second descent over 5). Per-step schedules place step ``step`` at
    ``epoch + (step + 1) / steps_per_epoch``.
    Raises :class:`UserError` for an unknown or malformed schedule.
    """
    kind, *args = str(schedule).split(":")
    try:
        if kind == "constant" and not args:
            return 1.0
        if kind == "step" and len(args) == 2:
            size, gamma = int(args[0]), float(args[1])
            check(size >= 1 and gamma > 0, "step size must be ≥ 1 and gamma > 0")
            return gamma ** (epoch // size)
        if kind == "multistep" and len(args) == 2:
            milestones, gamma = [int(m) for m in args[0].split(",") if m], float(args[1])
            check(bool(milestones) and gamma > 0, "give at least one milestone and gamma > 0")
            return gamma ** sum(epoch >= m for m in milestones)
        if kind == "cosine" and not args:
            t = (epoch + step / steps_per_epoch) / epochs
            return 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))
        if kind == "cyclic" and not args:
            t = epoch + (step + 1) / steps_per_epoch
            peak = epochs * 2 // 5
            if t <= peak:
                return t / peak
            return max(0.0, (epochs - t) / (epochs - peak))
        if kind == "piecewise" and len(args) == 1:
            return _piecewise(_knots(args[0]), epoch + (step + 1) / steps_per_epoch)
    except UserError as e:  # a well-formed schedule with bad values: say which
        raise UserError(f"bad schedule {schedule!r}: {e}") from None
    except ValueError:  # malformed: fall through to the list of schedules
        pass
    raise UserError(f"bad schedule {schedule!r}: use constant, step:S:G (e.g. step:20:0.2), multistep:M1,M2:G (e.g. multistep:100,150:0.1), cosine, cyclic or "
                    "piecewise:E0=F0,E1=F1,... (e.g. piecewise:0=0,3=1,8=0)")


def _knots(spec: str) -> list[tuple[float, float]]:
    """``E0=F0,E1=F1,...`` as ``[(epoch, factor), ...]``; raises ValueError / UserError when malformed."""
    knots = [(float(e), float(f)) for e, f in (pair.split("=") for pair in spec.split(","))]
    check(len(knots) >= 2 and all(f >= 0 for _, f in knots) and all(a[0] <= b[0] for a, b in zip(knots, knots[1:], strict=False)),
          "give at least two knots EPOCH=FACTOR, epochs non-decreasing, factors ≥ 0")
    return knots


def _piecewise(knots: list[tuple[float, float]], t: float) -> float:
    """The factor at training position ``t`` (in epochs) of the piecewise-linear schedule through ``knots``."""
    if t <= knots[0][0]:
        return knots[0][1]
    for (e0, f0), (e1, f1) in zip(knots, knots[1:], strict=False):
        if e0 < e1 and t <= e1:
            return (f0 * (e1 - t) + f1 * (t - e0)) / (e1 - e0)
    return knots[-1][1]


# --------------------------------------------------------------------------- methods
@dataclass
class Batch:
    """What a method's loss sees for one training step.

    Attributes:
        model: the model being trained, in train mode (possibly DDP-wrapped): use it for the loss.
        attack_model: the same model unwrapped, for inner maximisation (attacks freeze it in eval mode).
        x, y: augmented images in [0,1] and labels, on the training device.
        config: the resolved :class:`TrainConfig`.
        attack: the inner PGD (eps, steps, alpha from the config, uniform random start).
        generator: source of the attacks' random starts, on ``x``'s device.
    """

    model: nn.Module
    attack_model: nn.Module
    x: Tensor
    y: Tensor
    config: TrainConfig
    attack: PGD
    generator: torch.Generator

    def pgd(self) -> Tensor:
        """Adversarial examples of ``x`` from the inner PGD on cross-entropy."""
        return self.attack(self.attack_model, self.x, self.y, generator=self.generator)


def prediction_kl(p_logits: Tensor, q_logits: Tensor) -> Tensor:
    """Per-sample ``KL(softmax(p_logits) ‖ softmax(q_logits))`` ``[B]``."""
    log_p, log_q = F.log_softmax(p_logits.float(), 1), F.log_softmax(q_logits.float(), 1)
    return (log_p.exp() * (log_p - log_q)).sum(1)


def trades_adversary(model: nn.Module, x: Tensor, *, eps: float, steps: int, alpha: float,
                     generator: torch.Generator | None = None) -> Tensor:
    """TRADES inner maximisation (Zhang et al. 2019): maximise ``KL(f(x) ‖ f(x'))`` over the L∞ ball.

    Starts at ``x + 0.001·N(0, 1)`` (noise from ``generator``) and takes
    ``steps`` signed-gradient steps of ``alpha`` through
    :func:`nonrobust.attacks.optimise`, with ``model`` frozen in eval mode.
    Returns ``x'`` in the ``eps`` ball ∩ [0,1], detached.
    """
    ball = Ball("linf", eps)
    with frozen(model):
        x = x.detach()
        with torch.no_grad():
            clean = model(x)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        start = ball.project(x + 0.001 * noise, x)

        def objective(x_adv: Tensor, x_: Tensor, y_: Tensor) -> tuple[Tensor, Tensor]:
            logits = model(x_adv)
            return prediction_kl(clean, logits).sum(), logits

        return optimise(model, x, torch.zeros(len(x), dtype=torch.long, device=x.device), objective,
                        steps=steps, ball=ball, alpha=alpha, start=start)


def _standard_loss(b: Batch) -> tuple[Tensor, Tensor]:
    logits = b.model(b.x)
    return F.cross_entropy(logits, b.y), logits


def _adversarial_ce_loss(b: Batch) -> tuple[Tensor, Tensor]:
    logits = b.model(b.pgd())
    return F.cross_entropy(logits, b.y), logits


def _trades_loss(b: Batch) -> tuple[Tensor, Tensor]:
    cfg = b.config
    assert cfg.beta is not None  # a resolved config
    if cfg.inner == "kl":
        assert cfg.steps is not None and cfg.alpha is not None  # a resolved config
        x_adv = trades_adversary(b.attack_model, b.x, eps=cfg.eps, steps=cfg.steps, alpha=cfg.alpha, generator=b.generator)
    else:
        x_adv = b.pgd()
    clean, adv = b.model(b.x), b.model(x_adv)
    natural = F.cross_entropy(adv if cfg.ce_on_adv else clean, b.y)
    return natural + cfg.beta * prediction_kl(clean, adv).mean(), adv


def _mart_loss(b: Batch) -> tuple[Tensor, Tensor]:
    cfg = b.config
    assert cfg.beta is not None  # a resolved config
    x_adv = b.pgd()
    adv, clean = b.model(x_adv), b.model(b.x)
    ce = F.cross_entropy(adv, b.y)
    if not cfg.ce_on_adv:  # boosted CE: also push down the most likely wrong class
        probs = F.softmax(adv.float(), 1)
        other = probs.masked_fill(F.one_hot(b.y, probs.shape[1]).bool(), float("-inf")).amax(1)
        ce = ce - torch.log(1.0001 - other + 1e-12).mean()
    p_true = F.softmax(clean.float(), 1).gather(1, b.y[:, None]).squeeze(1)
    return ce + cfg.beta * (prediction_kl(clean, adv) * (1.0000001 - p_true)).mean(), adv


LossFn = Callable[[Batch], "tuple[Tensor, Tensor]"]


@dataclass(frozen=True)
class MethodSpec:
    """A registered training method.

    Attributes:
        name: registry key.
        loss: ``loss(batch) -> (scalar loss, logits)``; the logits give the training accuracy
            (on adversarial inputs for adversarial methods).
        description: what it is, with its source.
        beta: default trade-off β (None: not used).
        inners: allowed inner maximisations, the default first.
        fixed_steps: the only allowed number of inner steps (fast AT: 1), or None.
        alpha_factor: default α = :func:`nonrobust.attacks.step_size` ``(eps, steps, alpha_factor)``.
        select_by: ``pgd`` or ``clean``: held-out accuracy that picks ``best.safetensors``.
    """

    name: str
    loss: LossFn
    description: str
    beta: float | None = None
    inners: tuple[Literal["ce", "kl"], ...] = ("ce",)
    fixed_steps: int | None = None
    alpha_factor: float = STEP_FACTORS["madry"]
    select_by: str = "pgd"


METHODS: dict[str, MethodSpec] = {m.name: m for m in (
    MethodSpec("standard", _standard_loss, "cross-entropy on clean inputs", select_by="clean"),
    MethodSpec("pgd", _adversarial_ce_loss, "PGD-AT (Madry et al. 2018): CE on PGD examples"),
    MethodSpec("trades", _trades_loss, "TRADES (Zhang et al. 2019): CE(f(x)) + β·KL(f(x) ‖ f(x')), x' maximising the KL", beta=6.0,
               inners=("kl", "ce")),
    MethodSpec("mart", _mart_loss, "MART (Wang et al. 2020): BCE(f(x')) + β·KL(f(x) ‖ f(x'))·(1 − p_y(x)), x' from PGD", beta=6.0),
    MethodSpec("fast", _adversarial_ce_loss, "fast AT (Wong et al. 2020): CE on FGSM examples from a uniform random start, α = 1.25·eps",
               fixed_steps=1, alpha_factor=STEP_FACTORS["fast"]),
)}


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
           "25 epochs: about 55 minutes on 2 CPU cores (measured ~410 img/s, ~2 min per epoch plus the held-out check)",
           {"arch": "small_cnn", "data": "cifar10", "method": "fast", "eps": 8 / 255, "steps": 1, "optimizer": "sgd",
            "lr": 0.2, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "cyclic", "epochs": 25, "batch_size": 128}),
    Preset("cpu-vgg16", "the shipped cifar10-vgg16-at recipe: the paper's VGG-16-BN, fast AT on CIFAR-10, eps 8/255, α 10/255, "
           "batch 128, 13 epochs: lr one-cycle 0 → 0.2 → 0 over 8 epochs, then a second descent 0.125 → 0 over 5; channels-last: "
           "3 h 30 min on 2 CPU cores (measured: about 60 img/s unshared)",
           {"arch": "vgg16", "data": "cifar10", "method": "fast", "eps": 8 / 255, "steps": 1, "optimizer": "sgd",
            "lr": 0.2, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "piecewise:0=0,3=1,8=0,8=0.625,13=0", "epochs": 13,
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


# --------------------------------------------------------------------------- random streams (runtime.derive_seed)
class _GlobalStream:
    """A private stream for code that can only draw from the global RNG (dropout).

    Inside :meth:`active` the global CPU (and this device's CUDA) generator holds
    this stream's state; on exit the caller's state is restored (fork_rng), so
    the global RNG the user sees is never advanced or reseeded.
    """

    def __init__(self, seed: int, device: torch.device) -> None:
        self.seed, self.device = seed, device
        self.cuda = device.type == "cuda"
        self.states: tuple[Tensor, Tensor | None] | None = None

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        index = self.device.index if self.device.index is not None else torch.cuda.current_device() if self.cuda else 0
        with torch.random.fork_rng(devices=[index] if self.cuda else []):
            if self.states is None:
                torch.default_generator.manual_seed(self.seed)
                if self.cuda:
                    torch.cuda.default_generators[index].manual_seed(self.seed)
            else:
                torch.set_rng_state(self.states[0])
                if self.cuda:
                    assert self.states[1] is not None  # saved on the CUDA device
                    torch.cuda.set_rng_state(self.states[1], index)
            yield
            self.states = (torch.get_rng_state(), torch.cuda.get_rng_state(index) if self.cuda else None)


# --------------------------------------------------------------------------- persistence
def _optimizer_to_file(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors and JSON (no pickle)."""
    sd = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    other: dict[str, dict[str, Any]] = {}
    for pid, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{pid}.{key}"] = value
            else:
                other.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "other": other}


def _optimizer_from_file(opt: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {int(pid): dict(values) for pid, values in meta["other"].items()}
    for name, value in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [f"{k}={old.get(k)!r} (now {new.get(k)!r})" for k in sorted(set(old) | set(new))
            if k not in _RESUMABLE_CHANGES and old.get(k) != new.get(k)]


# --------------------------------------------------------------------------- one epoch, the held-out check
def _train_epoch(cfg: TrainConfig, model: nn.Module, trained: nn.Module, optimizer: torch.optim.Optimizer, train_set: ImageDataset,
                 dist: Distributed, device: torch.device, epoch: int, progress: bool) -> dict[str, Any]:
    """One epoch of ``cfg.method`` on this rank's share of ``train_set``; returns the epoch's record (all ranks summed).

    ``model`` is the plain model (attacks run on it), ``trained`` the one the loss goes through (DDP-wrapped or ``model``).
    """
    spec = METHODS[cfg.method]
    images, labels = train_set.images, train_set.labels
    order = torch.randperm(len(labels), device="cpu", generator=make_generator(derive_seed(cfg.seed, epoch, "shuffle"), "cpu"))
    if len(order) % dist.world:  # pad like DistributedSampler so every rank takes the same number of steps
        order = torch.cat([order, order[: dist.world - len(order) % dist.world]])
    shard = order[dist.rank:: dist.world]
    per_rank = cfg.batch_size // dist.world
    n_steps = math.ceil(len(shard) / per_rank)
    aug_gen = make_generator(derive_seed(cfg.seed, epoch, "augment", dist.rank), "cpu")  # augmentation runs on the uint8 CPU images
    attack_gen = make_generator(derive_seed(cfg.seed, epoch, "attack", dist.rank), device)
    dropout = _GlobalStream(derive_seed(cfg.seed, epoch, "dropout", dist.rank), device)
    assert cfg.steps is not None  # a resolved config
    attack = PGD(eps=cfg.eps, steps=cfg.steps, alpha=cfg.alpha, random_start=True)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if cfg.amp == "bf16" else contextlib.nullcontext()
    trained.train()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    lr = cfg.lr
    bar = tqdm(total=n_steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False, disable=not (progress and dist.main))
    t0 = time.perf_counter()
    for i in range(n_steps):
        idx = shard[i * per_rank:(i + 1) * per_rank]
        x = images[idx].to(device).float().div_(255)
        y = labels[idx].to(device)
        if cfg.crop_pad or cfg.flip:
            x = augment(x, aug_gen, pad=cfg.crop_pad, flip=bool(cfg.flip))
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        lr = cfg.lr * lr_factor(cfg.schedule, epoch, i, n_steps, cfg.epochs)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = Batch(trained, model, x, y, cfg, attack, attack_gen)
        with dropout.active():
            with amp:
                loss, logits = spec.loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        with torch.no_grad():
            totals += torch.stack([loss.detach().double() * len(y), (logits.argmax(1) == y).sum().double(),
                                   torch.tensor(float(len(y)), dtype=torch.float64, device=device)])
        if i % 20 == 0 or i == n_steps - 1:
            bar.set_postfix(loss=f"{float(totals[0] / totals[2]):.4f}", lr=f"{lr:.4g}")
        bar.update(1)
    bar.close()
    seconds = time.perf_counter() - t0
    loss_sum, correct, count = dist.sum(totals).tolist()
    return {"epoch": epoch + 1, "lr": lr, "train_loss": loss_sum / count, "train_acc": correct / count,
            "train_images": int(count), "seconds": round(seconds, 3), "images_per_second": round(count / seconds, 2)}


def _held_out(cfg: TrainConfig, model: nn.Module, eval_set: ImageDataset, device: torch.device) -> dict[str, Any]:
    """Clean and PGD accuracy on the held-out images, by :func:`nonrobust.evaluation.evaluate_attacks`."""
    from .evaluation import evaluate_attacks

    attack = PGD(eps=cfg.eps, steps=cfg.eval_pgd_steps, alpha_factor=STEP_FACTORS["madry"], random_start=True)
    batches = ((x.contiguous(memory_format=torch.channels_last) if cfg.channels_last else x, y)
               for x, y in eval_set.batches(cfg.batch_size, device=device))
    model.eval()
    res = evaluate_attacks(model, batches, {"PGD": attack}, seed=derive_seed(cfg.seed, "eval"), progress=False)
    return {"eval_clean_acc": res["clean_accuracy"], "eval_pgd_acc": res["attacks"]["PGD"]["robust_accuracy"], "eval_n": res["n"]}


# --------------------------------------------------------------------------- the run folder
@dataclass
class _RunFolder:
    """The files of one run (rank 0 writes them): the committed state, the derived checkpoints and metrics, and their repair."""

    out: Path
    cfg: TrainConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    train_set: ImageDataset  # what the checkpoints' metadata says the model was trained on
    record: dict[str, Any]  # recipe fields besides the config: command, world size, environment
    identity: dict[str, Any]  # digests of what the run is made from: training images, held-out images, initial weights
    origin: dict[str, Any]  # the provenance block of the run (provenance.json, and every checkpoint's metadata)
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None

    @property
    def select_by(self) -> str:
        return METHODS[self.cfg.method].select_by

    def path(self, key: str) -> Path:
        return self.out / _FILES[key]

    def score(self, entry: dict[str, Any]) -> float:
        return cast(float, entry["eval_clean_acc" if self.select_by == "clean" else "eval_pgd_acc"])

    def checkpoint(self, path: Path, entry: dict[str, Any]) -> None:
        recipe = {"config": self.cfg.to_dict(), "method": METHODS[self.cfg.method].description, **self.record}
        metrics = {"epoch": entry["epoch"], **{k: v for k, v in entry.items() if k.startswith("eval_")},
                   "selected_by": self.select_by, "history": self.history}
        ds = self.train_set
        meta = models.make_meta(self.model, dataset=ds.name, classes=list(ds.classes), input_shape=ds.input_shape,
                                recipe=recipe, metrics=metrics, provenance=self.origin)
        models.save(self.model, path, meta)

    def save_state(self) -> None:
        opt_tensors, opt_meta = _optimizer_to_file(self.optimizer)
        weights = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        meta = {"format": STATE_FORMAT, "version": _STATE_VERSION, "epoch": len(self.history), "config": self.cfg.to_dict(),
                "history": self.history, "best": self.best, "optimizer": opt_meta, "world_size": self.record["world_size"],
                "identity": self.identity}
        save_tensors(self.path("state"), {**weights, **opt_tensors}, meta)

    def load_state(self, device: torch.device) -> None:
        tensors, meta = load_tensors(self.path("state"))
        check(meta.get("format") == STATE_FORMAT, f"{self.path('state')}: not a nonrobust training state")
        check(int(meta.get("version", 0)) <= _STATE_VERSION, f"{self.path('state')}: written by a newer nonrobust; upgrade to resume")
        saved = meta.get("identity") or {}
        changed = [what for key, what in _IDENTITY_PARTS.items() if key in saved and key in self.identity and saved[key] != self.identity[key]]
        check(not changed, f"--resume: {self.out} was trained from other {' and '.join(changed)} than this run would use (their content "
                           "differs): resume with the same ones, or choose another --out to start a new run")
        weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        self.model.load_state_dict(weights, strict=True)
        _optimizer_from_file(self.optimizer, {k: v.to(device) for k, v in tensors.items() if k.startswith("optim.")},
                             meta["optimizer"])
        self.history, self.best = list(meta["history"]), meta["best"]
        if meta.get("world_size", 1) != self.record["world_size"]:
            log.warning("resuming a %d-process run with %d processes: the random streams per rank differ from the original run",
                        meta.get("world_size", 1), self.record["world_size"])

    def write_metrics(self) -> None:
        with atomic_write(self.path("metrics"), "w") as fh:
            fh.writelines(json.dumps(e) + "\n" for e in self.history)

    def append_metrics(self, entry: dict[str, Any]) -> None:
        with open(self.path("metrics"), "a") as fh:
            fh.write(json.dumps(entry) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def repair(self) -> None:
        """Bring the derived files in line with the committed state (after a crash between writes)."""
        if not self.history:
            return
        self.write_metrics()
        self.checkpoint(self.path("last"), self.history[-1])
        best_file_epoch = None
        if self.path("best").is_file():
            with contextlib.suppress(UserError):
                best_file_epoch = load_tensors(self.path("best"), keys=())[1].get("metrics", {}).get("epoch")
        if self.best and best_file_epoch != self.best["epoch"]:
            if self.best["epoch"] == len(self.history):
                self.checkpoint(self.path("best"), self.history[-1])
            else:
                log.warning("%s does not hold the best epoch %d", self.path("best"), self.best["epoch"])

    def end_epoch(self, entry: dict[str, Any]) -> None:
        """Record a finished epoch: state first (the commit point), then the derived files."""
        entry["best"] = self.best is None or self.score(entry) > self.best["score"]
        if entry["best"]:
            self.best = {"epoch": entry["epoch"], "score": self.score(entry), "by": self.select_by}
        self.history.append(entry)
        self.save_state()
        if entry["best"]:
            self.checkpoint(self.path("best"), entry)
        self.checkpoint(self.path("last"), entry)
        self.append_metrics(entry)

    def summary(self) -> dict[str, Any]:
        best = self.history[self.best["epoch"] - 1] if self.best else None
        return {"out_dir": str(self.out), "epochs": len(self.history), "last": self.history[-1] if self.history else None,
                "best": best, "checkpoint": str(self.path("last")), "best_checkpoint": str(self.path("best"))}


_IDENTITY_PARTS = {"train_data": "training images", "eval_data": "held-out images", "init": "initial weights"}
"""What a resumed run must share with the run it continues, by content (:mod:`nonrobust.identity`)."""


def _initialise(model: nn.Module, cfg: TrainConfig) -> None:
    """Load ``cfg.init`` (a checkpoint or a state dict of ``cfg.arch``) into ``model``, strictly."""
    from .foreign import read_state_dict

    assert cfg.init is not None  # called only with initial weights
    state = read_state_dict(cfg.init)
    own = model.state_dict()
    if not any(k.startswith("normalize.") for k in state):  # a plain state dict: the normalisation is the run's own
        state.update({k: v for k, v in own.items() if k.startswith("normalize.")})
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        raise UserError(f"--init {cfg.init}: the weights do not fit {cfg.arch} ({len(missing)} missing, {len(unexpected)} unexpected, "
                        f"{len(wrong)} of wrong shape; first: {(missing or unexpected or wrong)[0]})")
    model.load_state_dict(state, strict=True)


def _check_out_dir(out: Path, cfg: TrainConfig, resume: bool) -> bool:
    """Check ``out`` against ``cfg``; return whether a committed state exists to resume from."""
    config_path, state_path = out / _FILES["config"], out / _FILES["state"]
    check_output_folder(out)
    if not resume:
        if config_path.is_file():
            saved = read_json(config_path)
            diff = _config_differences(saved, cfg.to_dict()) if isinstance(saved, dict) else ["unreadable"]
            if diff or saved.get("epochs") != cfg.epochs:
                raise UserError(f"{out} already holds a training run with other settings ({'; '.join(diff[:3]) or 'epochs'}): "
                                "choose another --out, or pass --resume to continue that run")
            raise UserError(f"{out} already holds this training run: pass --resume to continue it, or choose another --out")
        leftovers = [name for name in _FILES.values() if (out / name).exists()]
        check(not leftovers, f"{out} holds {', '.join(leftovers)} but no {_FILES['config']}: choose another --out")
        return False
    check(config_path.is_file(), f"--resume: {out} holds no training run (no {_FILES['config']}); drop --resume to start one")
    saved = read_json(config_path)
    diff = _config_differences(saved, cfg.to_dict())
    if diff:
        raise UserError(f"--resume: {out} was trained with {'; '.join(diff[:3])}{' and more' if len(diff) > 3 else ''}; "
                        f"only {' and '.join(_RESUMABLE_CHANGES)} may change when resuming")
    return state_path.is_file()


def train(
    config: TrainConfig,
    out_dir: str | os.PathLike[str],
    resume: bool = False,
    progress: bool = True,
    *,
    dataset: ImageDataset | None = None,
    eval_dataset: ImageDataset | None = None,
    command: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Train a model as ``config`` says and write the run folder ``out_dir`` (see the module docstring).

    Args:
        config: the settings (resolved here with :meth:`TrainConfig.resolved`).
        out_dir: run folder; must not hold another run unless ``resume``.
        resume: continue the run in ``out_dir`` from its last complete epoch. Only
            ``epochs`` (to extend it) and ``device`` may differ from its config.
        progress: show a tqdm bar per epoch.
        dataset: training images to use instead of loading ``config.data`` (train split).
        eval_dataset: held-out images instead of ``config.data``'s test split
            (its first ``config.eval_n`` are used).
        command: the command line, recorded in the checkpoints' recipe.

    Returns:
        ``{"out_dir", "epochs", "last", "best", "checkpoint", "best_checkpoint"}``
        where ``last``/``best`` are per-epoch metric records (as in ``metrics.jsonl``);
        on ranks other than 0 of a distributed run only ``{"rank", "world_size"}``.

    Raises:
        UserError: invalid settings, an ``out_dir`` holding another run, or a
        ``resume`` whose settings differ.
    """
    cfg = config.resolved()
    out = Path(out_dir)
    dist = Distributed.from_env()
    check(cfg.batch_size % dist.world == 0, f"batch size {cfg.batch_size} must divide by the {dist.world} processes")
    try:
        device = dist.device(cfg.device)
        dist.init(device)
        has_state = _check_out_dir(out, cfg, resume)
        train_set = (dataset or load_dataset(cfg.data, "train", cfg.data_dir, image_size=cfg.image_size)).first(cfg.train_subset)
        eval_set = None
        if dist.main:
            eval_set = (eval_dataset or load_dataset(cfg.data, "test", cfg.data_dir, n=cfg.eval_n, image_size=cfg.image_size)).first(cfg.eval_n)
            check(eval_set.input_shape == train_set.input_shape, f"held-out images are {eval_set.input_shape}, training images {train_set.input_shape}")
        with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the caller's RNG
            torch.default_generator.manual_seed(derive_seed(cfg.seed, "init"))
            model = models.build(cfg.arch, train_set.num_classes, train_set.input_shape[0], cfg.mean, cfg.std, **cfg.arch_options)
        if cfg.init:
            _initialise(model, cfg)
        # (the ignore: torch types Module.__setattr__'s value as Tensor | Module)
        model.nonrobust_source = (f"{cfg.arch} initialised from {cfg.init}" if cfg.init  # type: ignore[assignment]
                                  else f"{cfg.arch} initialised from seed {cfg.seed}")
        identity = {"train_data": data_digest(train_set), "init": model_digest(model)}
        if eval_set is not None:
            identity["eval_data"] = data_digest(eval_set)
        # torch's stubs leave memory_format out of Module.to's overloads (it takes it: a 4-D memory format for the parameters)
        model = model.to(device, memory_format=torch.channels_last) if cfg.channels_last else model.to(device)  # type: ignore[call-overload]
        # Only now, with the data loaded and the model built, does the run folder get written: a mistake
        # in the settings leaves no half-made run behind (which a rerun would take for a run to --resume).
        dist.barrier()  # every rank has checked the folder before rank 0 writes to it
        settings = {k: v for k, v in cfg.to_dict().items() if k not in _RESUMABLE_CHANGES}
        origin = provenance(model=model, data=train_set, settings=cfg.to_dict(), seeds={"train": cfg.seed},
                            key=work_key("train", model=identity["init"], data=identity["train_data"], settings=settings),
                            extra={"held_out": data_record(eval_set) if eval_set is not None else None})
        if dist.main:
            out.mkdir(parents=True, exist_ok=True)
            write_json(out / _FILES["config"], cfg.to_dict())
            if not has_state:  # the run's own provenance: how it started (a resumed run keeps it)
                write_json(out / _FILES["provenance"], origin)
            elif (out / _FILES["provenance"]).is_file():
                origin = read_json(out / _FILES["provenance"])
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        record = {"command": list(command) if command is not None else None, "world_size": dist.world, "environment": environment(device)}
        run = _RunFolder(out, cfg, model, optimizer, train_set, record, identity, origin)
        if has_state:
            run.load_state(device)
            check(len(run.history) <= cfg.epochs, f"--resume: {out} has already trained {len(run.history)} epochs, more than --epochs {cfg.epochs}")
            log.info("resuming %s after epoch %d of %d", out, len(run.history), cfg.epochs)
            if dist.main:
                run.repair()
        trained = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
            if dist.world > 1 else model
        if dist.main:
            log.info("training %s on %s (%d images) with %s for %d epochs on %s%s", cfg.arch, train_set.name, len(train_set),
                     cfg.method, cfg.epochs, device, f" × {dist.world} processes" if dist.world > 1 else "")
        for epoch in range(len(run.history), cfg.epochs):
            entry = _train_epoch(cfg, model, trained, optimizer, train_set, dist, device, epoch, progress)
            if dist.main:
                assert eval_set is not None  # loaded on the main rank
                entry.update(_held_out(cfg, model, eval_set, device))
                run.end_epoch(entry)
                log.info("epoch %d/%d: loss %.4f, train acc %.2f%%, held-out clean %.2f%%, PGD-%d %.2f%% (%.0f img/s)%s",
                         entry["epoch"], cfg.epochs, entry["train_loss"], 100 * entry["train_acc"], 100 * entry["eval_clean_acc"],
                         cfg.eval_pgd_steps, 100 * entry["eval_pgd_acc"], entry["images_per_second"], " *best*" if entry["best"] else "")
            else:
                run.history.append(entry)
            dist.barrier()
        return run.summary() if dist.main else {"rank": dist.rank, "world_size": dist.world}
    finally:
        dist.close()
