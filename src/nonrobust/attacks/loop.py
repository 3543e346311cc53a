"""The one projected optimisation loop every attack runs (:func:`optimise`), the attack protocol and the step-size rule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn

from ..errors import check
from .threat import Ball, _flat_norm


# --------------------------------------------------------------------------- the shared loop
class Objective(Protocol):
    def __call__(self, x_adv: Tensor, x: Tensor, y: Tensor, /) -> tuple[Tensor, Tensor]:
        """Return ``(value, logits)``: a scalar to *maximise* and the logits at ``x_adv``."""


@dataclass
class Variable:
    """How the optimised variable maps to an image: the image itself (``box``) or ``w`` with x' = (tanh w + 1)/2."""

    space: Literal["box", "tanh"] = "box"
    clamp: bool = True  # tanh: keep atanh finite; False (the reference code) leaves pixels at exactly 0 or 1 frozen at ±inf

    def init(self, x_start: Tensor) -> Tensor:
        if self.space == "box":
            return x_start.clone()
        t = x_start * 2 - 1
        return torch.atanh(t.clamp(-1 + 1e-6, 1 - 1e-6) if self.clamp else t)

    def image(self, v: Tensor) -> Tensor:
        return v if self.space == "box" else (torch.tanh(v) + 1) / 2


def optimise(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    objective: Objective,
    *,
    steps: int,
    ball: Ball | None = None,
    alpha: float | None = None,
    adam_lr: float | None = None,
    variable: Variable | None = None,
    start: Tensor | None = None,
    select: Literal["last", "min_l2_success"] = "last",
    targeted: bool = False,
    early_stop_every: int = 0,
    reference_loop: bool = False,
) -> Tensor:
    """The projected optimisation loop every attack in this module runs on.

    Args:
        model: maps [0,1] images to logits; the caller has frozen it (see :func:`frozen`).
        x, y: clean images ``[B,C,H,W]`` in [0,1] and labels (targets if ``targeted``).
        objective: ``(x_adv, x, y) -> (scalar to maximise, logits)``.
        steps: number of gradient steps.
        ball, alpha: step rule *steepest ascent in the ball's norm* with step ``alpha``,
            followed by projection onto the ball ∩ [0,1].
        adam_lr: step rule *Adam* (minimising ``-objective``) with this learning rate; no ball.
        variable: the optimised variable (default: the image itself).
        start: first iterate (default ``x``).
        select: ``last`` returns the final iterate; ``min_l2_success`` returns, per sample, the
            successful iterate of smallest L2 distance, or ``x`` where none succeeded (CW).
        early_stop_every: with Adam, stop when the objective has not improved over this many steps.
        reference_loop: the reference code's NRF/CW loop instead: the early-stop check runs at steps
            0, k, 2k … (``step % early_stop_every == 0``) and stops when the objective got worse than at
            the previous check (equal is not worse), and the final iterate is not considered by ``select``.

    Returns:
        adversarial images ``[B,C,H,W]`` in [0,1], detached.
    """
    check(steps >= 0, f"steps must be ≥ 0, got {steps}")
    if (adam_lr is None) == (ball is None or alpha is None):
        raise ValueError("optimise needs exactly one step rule: ball and alpha, or adam_lr")
    variable = variable or Variable()
    project = ball.projector(x) if ball is not None else None
    start = x if start is None else start
    v = variable.init(project(start) if project is not None else start).detach().requires_grad_(True)
    opt = torch.optim.Adam([v], lr=adam_lr) if adam_lr is not None else None
    best = x.clone()
    best_l2 = torch.full((x.shape[0],), float("inf"), device=x.device)
    prev = -float("inf")

    def track(x_adv: Tensor, logits: Tensor) -> None:
        pred = logits.argmax(1)
        ok = (pred == y) if targeted else (pred != y)
        l2 = _flat_norm(x_adv - x, "l2")
        better = ok & (l2 < best_l2)
        best_l2[better] = l2[better]
        best[better] = x_adv[better].detach()

    for step in range(steps):
        x_adv = variable.image(v)
        value, logits = objective(x_adv, x, y)
        if select == "min_l2_success":
            track(x_adv.detach(), logits.detach())
        if opt is not None:
            opt.zero_grad(set_to_none=True)
            (-value).backward()  # type: ignore[no-untyped-call]
            opt.step()
            if early_stop_every and (step if reference_loop else step + 1) % early_stop_every == 0:
                now = float(value.detach())
                if (now < prev) if reference_loop else (now <= prev):  # the reference stops only when it got worse
                    break
                prev = now
        else:
            assert project is not None and ball is not None and alpha is not None  # no Adam: the ball's step rule (checked above)
            (grad,) = torch.autograd.grad(value, v)
            with torch.no_grad():
                v = project(v + ball.ascent(grad, alpha))
            v.requires_grad_(True)
    x_final = variable.image(v).detach()
    if select == "min_l2_success":
        if not reference_loop:
            with torch.no_grad():
                track(x_final, model(x_final))
        return best
    return x_final


# --------------------------------------------------------------------------- attack classes
class Attack(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def norm(self) -> str: ...

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None = None,
                 indices: Tensor | None = None) -> Tensor: ...

    def describe(self) -> dict[str, Any]: ...


# --------------------------------------------------------------------------- step size
STEP_FACTORS: dict[str, float] = {
    "reference": 2.3,  # the reference code's PGD: 0.0069 at eps 0.03 and 10 steps
    "madry": 2.5,      # Madry et al.'s rule: adversarial training's inner PGD and its per-epoch check
    "quarter": 5.0,    # α = eps/4 at 20 steps (2/255 at 8/255): PGD-20 and NRF-L∞, so the two compare
    "fast": 1.25,      # fast AT's single FGSM step from a random start (Wong et al. 2020)
    "fgsm": 1.0,       # one step of the whole budget
}
"""The named step-size factors: every default step size in nonrobust is :func:`step_size` with one of these."""


def step_size(eps: float, steps: int, factor: float | str) -> float:
    """nonrobust's one step-size convention: ``α = factor · eps / steps``.

    Args:
        eps: the budget (L∞ or L2, in [0,1] pixel units); steps: number of steps (≥ 1);
        factor: a number, or a key of :data:`STEP_FACTORS` (e.g. ``"madry"``).
    """
    value = STEP_FACTORS[factor] if isinstance(factor, str) else factor
    return value * eps / steps

