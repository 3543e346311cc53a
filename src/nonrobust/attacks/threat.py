"""Budgets, the losses attacks maximise, and threat models: the L∞ and L2 balls with their exact projection."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import check

Norm = Literal["linf", "l2"]


EPS_HELP = "budget: L∞ or L2 radius in [0,1] pixel units (8/255 is accepted)"
"""The one help text of every attack's ``eps`` setting."""

LINF_WARN = 16 / 255
"""An L∞ budget above this is warned about: larger than the budgets robustness work uses (8/255 on CIFAR-10)."""


def check_budget(norm: str, eps: float | None) -> None:
    """Refuse an L∞ ``eps`` above 1 (more than the whole [0,1] pixel range) and warn above :data:`LINF_WARN`."""
    if eps is None:
        return
    check(eps > 0, f"eps must be > 0, got {eps}")
    if norm == "linf":
        check(eps <= 1, f"an L∞ eps of {eps:g} is more than the whole pixel range: budgets are in [0,1] pixel units (8/255 ≈ 0.0314)")
        if eps > LINF_WARN:
            warnings.warn(f"an L∞ eps of {eps:.4g} ({eps * 255:.3g}/255) is above 16/255, larger than the budgets robustness work uses: "
                          "budgets are in [0,1] pixel units (8/255 ≈ 0.0314)", stacklevel=3)


def _validate(x: Tensor, y: Tensor) -> None:
    check(x.dim() == 4, f"attack input must be a batch of images [B, C, H, W], got shape {list(x.shape)}")
    check(y.dim() == 1 and y.shape[0] == x.shape[0], f"labels must have shape [{x.shape[0]}], got {list(y.shape)}")
    check(bool(torch.isfinite(x).all()), "attack input contains NaN or inf pixels")
    check(float(x.min()) >= 0.0 and float(x.max()) <= 1.0, f"attack input must lie in [0,1], got [{float(x.min()):.3g}, {float(x.max()):.3g}]: pass "
                                                           "images, not normalised tensors")


# --------------------------------------------------------------------------- losses (maximised)
def ce_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Per-sample cross-entropy ``[B]``."""
    return F.cross_entropy(logits, y, reduction="none")


def margin_loss(logits: Tensor, y: Tensor, reference: bool = False) -> Tensor:
    """Per-sample CW margin ``max_{i≠y} z_i − z_y`` ``[B]`` (positive once misclassified).

    ``reference=True`` takes the max as the reference code does, over ``(1 − onehot(y)) · z``: it
    includes a 0 at the true class, which differs only when every other logit is negative.
    """
    true = logits.gather(1, y[:, None]).squeeze(1)
    onehot = F.one_hot(y, logits.shape[1]).bool()
    other = (logits * ~onehot).amax(1) if reference else logits.masked_fill(onehot, float("-inf")).amax(1)
    return other - true


LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"ce": ce_loss, "margin": margin_loss}


# --------------------------------------------------------------------------- threat models
def _flat_norm(t: Tensor, norm: str) -> Tensor:
    flat = t.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


def _view(v: Tensor, like: Tensor) -> Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


@dataclass(frozen=True)
class Ball:
    """An Lp ball of radius ``eps`` around the clean input, intersected with the [0,1] box."""

    norm: Norm
    eps: float

    def project(self, x_adv: Tensor, x: Tensor) -> Tensor:
        delta = x_adv - x
        if self.norm == "linf":
            delta = delta.clamp(-self.eps, self.eps)
        else:
            scale = (self.eps / _flat_norm(delta, "l2").clamp_min(1e-12)).clamp(max=1.0)
            delta = delta * _view(scale, delta)
        return (x + delta).clamp(0.0, 1.0)

    @torch.no_grad()
    def fit(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """``x_adv`` with the fewest changes needed for ``x_adv − x`` to lie in the ball.

        :meth:`project` computes ``x + δ`` in float32, which rounds: a coordinate can land
        up to half a unit in the last place outside the ball (2.8e-8 past 8/255 at pixel
        values near 1), so that ``(x_adv - x).abs().max().item() <= eps`` fails. Here the
        size must be within ``eps`` both exactly (float64, where the difference of two
        float32 numbers is exact) and as computed in the images' own dtype. Coordinates
        past ``eps`` (L∞) move one float step at a time towards ``x``; an image past
        ``eps`` (L2) has its perturbation scaled down by a little more each round.
        Points still outside after a few rounds (never seen) fall back to ``x``.
        """
        x64 = _exact(x)

        def outside(x_adv: Tensor) -> Tensor:
            delta64, delta = _exact(x_adv) - x64, _exact(x_adv - x)
            if self.norm == "linf":
                return ((delta64.abs() > self.eps) | (delta.abs() > self.eps)).to(x_adv.device)
            size = torch.maximum(_flat_norm(delta64, "l2"), _exact(_flat_norm(x_adv - x, "l2")))
            return (size > self.eps).to(x_adv.device)

        for round_ in range(_FIT_ROUNDS):
            over = outside(x_adv)
            if not bool(over.any()):
                return x_adv
            if self.norm == "linf":
                x_adv = torch.where(over, torch.nextafter(x_adv, x), x_adv)
            else:
                delta = _exact(x_adv) - x64
                scale = self.eps / _flat_norm(delta, "l2").clamp_min(1e-300) * (1 - 1e-7 * 4**round_)
                shrunk = (x64 + delta * _view(scale, delta)).to(x_adv.dtype).to(x_adv.device)
                x_adv = torch.where(_view(over, x_adv), shrunk, x_adv)
        over = outside(x_adv)
        return torch.where(over if self.norm == "linf" else _view(over, x_adv), x, x_adv)

    @torch.no_grad()
    def projector(self, x: Tensor) -> Callable[[Tensor], Tensor]:
        """Projection onto this ball around ``x`` ∩ [0,1] whose outputs lie in the ball exactly (see :meth:`fit`).

        L∞: the ball ∩ [0,1] is a box of float values ``[lo, hi]`` per coordinate, found once
        here, so each projection is one clamp. L2: :meth:`project`, then :meth:`fit`.
        """
        if self.norm == "linf":
            x64 = _exact(x)
            lo = self.fit((x64 - self.eps).clamp_min(0.0).to(x.dtype).to(x.device), x)
            hi = self.fit((x64 + self.eps).clamp_max(1.0).to(x.dtype).to(x.device), x)
            return lambda v: torch.maximum(torch.minimum(v, hi), lo)
        return lambda v: self.fit(self.project(v, x), x)

    def ascent(self, grad: Tensor, alpha: float) -> Tensor:
        """Steepest-ascent step of size ``alpha`` in this norm."""
        if self.norm == "linf":
            return alpha * grad.sign()
        return alpha * grad / _view(_flat_norm(grad, "l2").clamp_min(1e-12), grad)

    def random_start(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        """A point drawn uniformly from the ball (then clipped to the box)."""
        if self.norm == "linf":
            u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            return self.project(x + (2 * u - 1) * self.eps, x)
        g = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        g = g / _view(_flat_norm(g, "l2").clamp_min(1e-12), g)
        r = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype) ** (1.0 / x[0].numel())
        return self.project(x + g * _view(r * self.eps, g), x)


_FIT_ROUNDS = 8


def _exact(t: Tensor) -> Tensor:
    """``t`` in float64 (on the CPU for MPS, which has no float64): differences of float32 values are exact there."""
    return (t.cpu() if t.device.type == "mps" else t).double()


def exact_delta(x_adv: Tensor, x: Tensor) -> Tensor:
    """``x_adv − x`` in float64: exact for float32 images, so its sizes are the true ones (on the CPU for MPS)."""
    return _exact(x_adv) - _exact(x)


