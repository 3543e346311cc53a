"""Every setting of a training run, validated and written once (:class:`TrainConfig`)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, cast

from ..attacks import step_size
from ..data import DATASETS
from ..errors import check
from ..fields import DATA_DIR_HELP, setting
from .methods import METHODS
from .schedules import lr_factor


# --------------------------------------------------------------------------- configuration
@dataclass
class TrainConfig:
    """Every setting of a training run. ``None`` means "the method's / data set's default" (see :meth:`resolved`).

    Attributes:
        arch, arch_options: a :data:`nonrobust.models.ARCHITECTURES` name and its options, or
            ``path/to/file.py:function``, a factory of the user's own ``nn.Module`` (images in [0,1] to logits; its
            file runs; no options, its normalisation its own), whose checkpoints :func:`nonrobust.loading.resolve` loads.
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
        from ..loading import is_python_spec

        known = DATASETS.get(str(self.data).lower())
        info = None if is_python_spec(self.arch) else known  # a user's model normalises itself
        return dataclasses.replace(
            self,
            steps=steps,
            alpha=self.alpha if self.alpha is not None else step_size(self.eps, steps, spec.alpha_factor),
            beta=self.beta if self.beta is not None else spec.beta,
            inner=self.inner or spec.inners[0],
            flip=self.flip if self.flip is not None else (known.flip if known else True),
            mean=self.mean if self.mean is not None else (list(info.mean) if info else None),
            std=self.std if self.std is not None else (list(info.std) if info else None),
        )

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain JSON values."""
        return cast("dict[str, Any]", json.loads(json.dumps(asdict(self))))


