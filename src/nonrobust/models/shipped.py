"""The models shipped with the package, by name (:data:`PRETRAINED`), with their measured figures."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import UserError
from ..io import assets_dir as _assets_dir
from ..io import load_tensors
from .checkpoints import CheckpointMeta, load_with_meta

# --------------------------------------------------------------------------- pretrained models


@dataclass(frozen=True)
class PretrainedSpec:
    """A named checkpoint shipped in ``nonrobust/assets``.

    Attributes:
        name: the name :func:`pretrained` and :func:`resolve` accept.
        asset: the checkpoint's file name in ``nonrobust/assets``.
        description: what it is (arch, data, training).
    """

    name: str
    asset: str
    description: str

    def available(self) -> bool:
        """Whether this build ships the checkpoint."""
        return (_assets_dir() / self.asset).is_file()

    def path(self) -> Path:
        """The shipped checkpoint's file; :class:`UserError` if this build does not ship it."""
        path = _assets_dir() / self.asset
        if not path.is_file():
            raise UserError(f"pretrained model {self.name!r} is registered but its asset {self.asset} is not shipped in this build: "
                            "train one and pass its checkpoint path instead")
        return path

    def meta(self) -> CheckpointMeta:
        """The shipped checkpoint's metadata, read from its header alone (no weights are loaded).

        Raises:
            UserError: the asset is not shipped in this build, or is not a nonrobust checkpoint.
        """
        path = self.path()
        return CheckpointMeta.from_dict(load_tensors(path, keys=())[1], source=str(path))


_HEADLINE_METRICS = (("clean_accuracy", "clean"), ("pgd20_accuracy", "PGD-20"), ("autoattack_accuracy", "AutoAttack"),
                     ("apgd_ce_accuracy", "APGD-CE"), ("apgd_t_accuracy", "APGD-T"))
"""The measured accuracies :func:`headline` names, as (metadata key, label); each entry is ``{"n": images, "value": accuracy}``."""


def headline(meta: CheckpointMeta) -> str:
    """One line of a checkpoint's measured accuracies, e.g. ``clean 72.2% (n=10000), PGD-20 37.7% (n=10000)``; ``""`` if none."""
    parts = []
    for key, label in _HEADLINE_METRICS:
        entry = meta.metrics.get(key)
        if isinstance(entry, Mapping) and isinstance(entry.get("value"), (int, float)):
            parts.append(f"{label} {entry['value']:.1%} (n={entry.get('n', '?')})")
    return ", ".join(parts)


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


_NOT_RECIPE_FLAGS = {"--data-dir": 1, "--out": 1, "--init": 1, "--device": 1, "--resume": 0}
"""Flags of a training command that say where it ran, not how it trained (name: how many values follow)."""


def training_summary(meta: CheckpointMeta) -> str:
    """One line on how a checkpoint was trained, from its metadata: method, epochs, preset, wall time and machine.

    E.g. ``fast, 25 epochs (preset cpu-small), 1 h 09 min on cpu, 2 threads (x86_64)``; ``""`` without a recipe.
    The machine is ``recipe["machine"]`` where the shipping script recorded one, else the training environment's
    device, threads and processor. Flags that changed the preset are named after it. A run that started from the
    weights of an earlier one (``--init``; its recipe kept under ``recipe["previous"]`` by the shipping script) ends
    with ``, from the weights of: `` and that run's own line.
    """
    return _stage_summary(meta.recipe, meta.metrics.get("training_seconds"))


def _stage_summary(recipe: Mapping[str, Any], seconds: object) -> str:
    config = recipe.get("config")
    if not isinstance(config, Mapping):
        return ""
    parts = [f"{config.get('method', '?')}, {config.get('epochs', '?')} epochs"]
    command = recipe.get("command")
    if isinstance(command, list) and "--preset" in command[:-1]:
        changed = _recipe_flags(command[command.index("--preset") + 2:])
        parts[0] += f" (preset {command[command.index('--preset') + 1]}" + (f" with {' '.join(changed)})" if changed else ")")
    env = recipe.get("environment")
    machine = recipe.get("machine") or (
        f"{env.get('device', '?')}, {env.get('torch_threads', '?')} threads ({env.get('processor', '?')})" if isinstance(env, Mapping) else None)
    if isinstance(seconds, (int, float)) and seconds > 0:
        parts.append(_duration(seconds) + (f" on {machine}" if machine else ""))
    elif machine:
        parts.append(f"on {machine}")
    previous = recipe.get("previous")
    if isinstance(previous, Mapping) and isinstance(previous.get("recipe"), Mapping):
        before = _stage_summary(previous["recipe"], previous.get("training_seconds"))
        parts.append(f"from the weights of: {before or 'an earlier run'}")
    return ", ".join(parts)


def _recipe_flags(tokens: list[Any]) -> list[str]:
    """The tokens of a training command (after its preset) that change the recipe: every flag but ``_NOT_RECIPE_FLAGS``."""
    kept: list[str] = []
    values_left = 0  # values of a skipped flag still to pass over
    for token in map(str, tokens):
        if values_left:
            values_left -= 1
            continue
        flag, inline, _ = token.partition("=")
        skip = _NOT_RECIPE_FLAGS.get(flag)
        if skip is None:
            kept.append(token)
        elif not inline:  # --out DIR, not --out=DIR
            values_left = skip
    return kept


PRETRAINED: dict[str, PretrainedSpec] = {
    spec.name: spec
    for spec in (
        PretrainedSpec("cifar10-small-at", "cifar10-small-at.safetensors", "small_cnn on CIFAR-10, fast adversarial training (L-inf, eps 8/255)"),
        PretrainedSpec("cifar10-small-std", "cifar10-small-std.safetensors", "small_cnn on CIFAR-10, standard training"),
        PretrainedSpec("cifar10-vgg16-at", "cifar10-vgg16-at.safetensors",
                       "the paper's VGG-16-BN on CIFAR-10, fast adversarial training (L-inf, eps 8/255); float16 weights"),
        PretrainedSpec("cifar10-vgg16-std", "cifar10-vgg16-std.safetensors",
                       "the paper's VGG-16-BN on CIFAR-10, standard training (the paper's Appendix F); float16 weights"),
        PretrainedSpec("cifar10-wrn16-at", "cifar10-wrn16-at.safetensors",
                       "WideResNet-16-2 on CIFAR-10, fast adversarial training (L-inf, eps 8/255), split at its final BatchNorm (8x8); "
                       "float16 weights"),
        PretrainedSpec("cifar10-small-trades", "cifar10-small-trades.safetensors",
                       "small_cnn on CIFAR-10, TRADES (beta 6, L-inf, eps 8/255); float16 weights"),
        PretrainedSpec("cifar10-small-mart", "cifar10-small-mart.safetensors",
                       "small_cnn on CIFAR-10, MART (beta 6, L-inf, eps 8/255); float16 weights"),
    )
}


def pretrained_with_meta(name: str, device: str | torch.device = "cpu") -> tuple[nn.Module, CheckpointMeta]:
    """:func:`pretrained` with its metadata."""
    if name not in PRETRAINED:
        raise UserError(f"unknown pretrained model {name!r}: choose one of {', '.join(PRETRAINED) or '(none)'}")
    return load_with_meta(PRETRAINED[name].path(), device)


def pretrained(name: str, device: str | torch.device = "cpu") -> nn.Module:
    """The shipped model ``name`` (a key of :data:`PRETRAINED`), in eval mode on ``device``, with ``nonrobust_meta`` set.

    Raises:
        UserError: unknown name, or its asset is not shipped in this build.
    """
    return pretrained_with_meta(name, device)[0]

