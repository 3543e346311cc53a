"""The training methods, each only a loss on one batch: standard, PGD-AT, TRADES, MART and fast AT."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks import PGD, STEP_FACTORS, Ball, optimise
from ..runtime import frozen

if TYPE_CHECKING:
    from .config import TrainConfig


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


