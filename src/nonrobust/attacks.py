"""Adversarial attacks on one shared projected-optimisation loop.

Every attack here is a *loss* plus a *threat model* (projection and step rule)
plus a *schedule*, run by :func:`optimise`. FGSM, BIM, PGD and CW∞ are
configurations of :class:`PGD`; CW-L2 and the three NRF forms plug other
variables (tanh space), step rules (Adam) and selection rules (smallest
successful L2) into the same loop. AutoAttack and its components come from the
reference implementation (``pyautoattack``) unchanged.

Call shape, for every attack::

    x_adv = attack(model, x, y, generator=None)

``model`` maps images in [0,1] to logits; ``x`` is ``[B, C, H, W]`` in [0,1];
``y`` is ``int64 [B]`` (the target class when ``targeted=True``). The result
has ``x``'s shape, lies in [0,1] and is detached. Attacks run the model in eval
mode with its parameters' ``requires_grad`` switched off, and restore both
afterwards, also when they raise. Randomness comes only from ``generator``.
"""

from __future__ import annotations

import dataclasses
import difflib
import warnings
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal, Mapping, Protocol, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import UserError, check
from .io import tensor_fingerprint
from .runtime import frozen

if TYPE_CHECKING:
    from .bottleneck import IBConfig
    from .split import LayerSplit

__all__ = [
    "Attack",
    "PGD",
    "CWL2",
    "NRF",
    "AutoAttackRunner",
    "ATTACKS",
    "AttackSpec",
    "make_attack",
    "attack_name",
    "budget_text",
    "check_budget",
    "ATTACK_SETS",
    "AttackSet",
    "make_attack_set",
    "STEP_FACTORS",
    "step_size",
    "setting_value",
    "optimise",
    "frozen",
    "perturbation_norms",
    "summarise_sizes",
    "point_sizes",
    "CHANGE_FLOOR",
    "exact_delta",
    "Ball",
    "ce_loss",
    "margin_loss",
]

Norm = Literal["linf", "l2"]


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


def budget_text(eps: float | None) -> str:
    """A budget as people write it: ``8/255`` when it is a whole number of grey levels, else the number."""
    if eps is None:
        return "unbounded"
    levels = eps * 255
    return f"{round(levels)}/255" if abs(levels - round(levels)) < 1e-9 and round(levels) >= 1 else f"{eps:.4g}"


def _count(k: int, word: str, plural: str | None = None) -> str:
    return f"{k} {word if k == 1 else plural or word + 's'}"


_NORM_NAMES = {"linf": "L∞", "l2": "L2"}


class _Base:
    """Shared plumbing: validation, freezing the model, restarts and a settings record."""

    if TYPE_CHECKING:  # every attack class is a dataclass with a norm (a field or a property)
        __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

        @property
        def norm(self) -> str: ...

    name = "attack"

    @classmethod
    def summarise(cls, s: Mapping[str, Any]) -> str:
        """One line of what the settings ``s`` (a :meth:`describe` record) run: steps, step size, budget, restarts."""
        raise NotImplementedError

    def summary(self) -> str:
        """:meth:`summarise` of this attack's own settings: generated from what runs, never written by hand."""
        return self.summarise(self.describe())

    def describe(self) -> dict[str, Any]:
        """Every setting of this attack, with its name, norm and budget (``eps`` None = unbounded).

        Built from *every* dataclass field (see :func:`setting_value`), so it is a complete
        cache and resume key by construction: a new field can never be left out of it.
        """
        d = {f.name: setting_value(getattr(self, f.name)) for f in fields(self)}
        d["name"] = self.name
        d.setdefault("eps", None)
        d["norm"] = self.norm
        return d

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None = None,
                 indices: Tensor | None = None) -> Tensor:
        """Adversarial images ``[B,C,H,W]`` in [0,1] for ``x`` (same shape, in [0,1]) and labels ``y [B]``.

        ``indices`` (int64 ``[B]``, default ``0 … B−1``) are the images' positions in
        their data set; attacks that run the bottleneck (NRF) seed its noise with
        them, as Table 1 does, so an image gets the same noise wherever it is attacked.

        The output of a bounded attack lies in its ball exactly, as measured in float64
        (:meth:`Ball.projector` in the shared loop, :meth:`Ball.fit` on AutoAttack's output).
        """
        _validate(x, y)
        check(indices is None or tuple(indices.shape) == (x.shape[0],), f"indices must have shape [{x.shape[0]}], got "
                                                                        f"{None if indices is None else list(indices.shape)}")
        y = y.to(x.device)
        with frozen(model), torch.enable_grad():  # also when the caller is under torch.no_grad()
            return self._run(model, x.detach(), y, generator, indices)

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None, indices: Tensor | None) -> Tensor:
        raise NotImplementedError


def setting_value(value: Any) -> Any:
    """An attack setting as JSON-able data that identifies it completely.

    A dataclass (e.g. an :class:`~nonrobust.bottleneck.IBConfig`) becomes all of its
    fields; a tensor (e.g. a given mask) its shape, dtype and SHA-256 digest; a model
    split its layer's name; anything else is kept as it is.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: setting_value(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Tensor):
        return {"shape": list(value.shape), "dtype": str(value.dtype).removeprefix("torch."),
                "sha256": tensor_fingerprint([("", value)])}
    if hasattr(value, "features_and_context") and hasattr(value, "layer"):
        return {"layer": value.layer}
    return value


@dataclass
class PGD(_Base):
    """Projected gradient descent (Madry et al., ICLR 2018) in the L∞ or L2 ball.

    Maximises ``loss`` (``ce`` = cross-entropy; ``margin`` = CW margin, which makes
    this "CW∞") with steepest-ascent steps of size ``alpha`` projected onto the
    ``eps`` ball ∩ [0,1]. ``alpha=None`` means :func:`step_size` ``(eps, steps,
    alpha_factor)``, by default the reference code's 2.3·eps/steps.
    FGSM (Goodfellow et al. 2015) is ``PGD(steps=1, alpha=eps, random_start=False)``
    and BIM (Kurakin et al. 2017) is ``PGD(alpha=1/255, steps=9, random_start=False)``.
    With ``restarts > 1`` each point keeps the first restart that fools the model.
    Defaults: L∞, eps 8/255, 10 steps, uniform random start, CE, 1 restart.
    """

    eps: float = 8 / 255
    steps: int = 10
    alpha: float | None = None
    alpha_factor: float = STEP_FACTORS["reference"]
    norm: Norm = "linf"
    loss: Literal["ce", "margin"] = "ce"
    random_start: bool = True
    restarts: int = 1
    targeted: bool = False
    name: str = "pgd"

    def __post_init__(self) -> None:
        check(self.norm in ("linf", "l2"), f"norm must be linf or l2, got {self.norm!r}")
        check_budget(self.norm, self.eps)
        check(self.steps >= 1, f"steps must be ≥ 1, got {self.steps}")
        check(self.restarts >= 1, f"restarts must be ≥ 1, got {self.restarts}")
        check(self.loss in LOSSES, f"loss must be one of {sorted(LOSSES)}, got {self.loss!r}")
        if self.alpha is None:
            self.alpha = step_size(self.eps, self.steps, self.alpha_factor)
        check(self.alpha > 0, f"alpha must be > 0, got {self.alpha}")

    @classmethod
    def summarise(cls, s: Mapping[str, Any]) -> str:
        start = "random start" if s["random_start"] else "no random start"
        loss = {"ce": "cross-entropy", "margin": "CW margin"}[s["loss"]]
        return (f"{_NORM_NAMES[s['norm']]} eps {budget_text(s['eps'])}, {_count(s['steps'], 'step')} of α {budget_text(s['alpha'])}, {loss} loss, "
                f"{start}, {_count(s['restarts'], 'restart')}" + (", targeted" if s["targeted"] else ""))

    def _objective(self, model: nn.Module) -> Objective:
        loss_fn, sign = LOSSES[self.loss], -1.0 if self.targeted else 1.0

        def value(x_adv: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
            logits = model(x_adv)
            return sign * loss_fn(logits, y).sum(), logits

        return value

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None, indices: Tensor | None) -> Tensor:
        ball, objective = Ball(self.norm, self.eps), self._objective(model)
        result = x.clone()
        todo = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        for _ in range(self.restarts):
            xs, ys = x[todo], y[todo]
            start = ball.random_start(xs, generator) if self.random_start else xs
            adv = optimise(model, xs, ys, objective, steps=self.steps, ball=ball, alpha=self.alpha, start=start, targeted=self.targeted)
            result[todo] = adv
            if self.restarts == 1:
                break
            with torch.no_grad():
                pred = model(adv).argmax(1)
            fooled = (pred == ys) if self.targeted else (pred != ys)
            idx = todo.nonzero().squeeze(1)
            todo[idx[fooled]] = False
            if not todo.any():
                break
        return result


@dataclass
class CWL2(_Base):
    """Carlini–Wagner L2 attack (Carlini & Wagner, S&P 2017) in tanh space with Adam.

    Minimises ``‖x'−x‖₂² + c·max(z_y − max_{i≠y} z_i, −κ)`` over ``w`` with
    ``x' = (tanh w + 1)/2``; returns per point the misclassified iterate of
    smallest L2 norm, or the clean image where none was found. Unbounded L2
    attack: its budget is reported as the measured norms. Defaults are the
    reference code's: c 0.1, κ 0, Adam lr 0.1, 200 steps, early stop checked every
    steps//3. ``binary_search_steps > 1`` searches c per point (×10 up on
    failure, bisection down on success), as in the original paper.
    """

    c: float = 0.1
    kappa: float = 0.0
    steps: int = 200
    lr: float = 0.1
    binary_search_steps: int = 1
    targeted: bool = False
    early_stop: bool = True
    name: str = "cw-l2"
    norm: str = "l2"

    def __post_init__(self) -> None:
        check(self.c > 0, f"c must be > 0, got {self.c}")
        check(self.steps >= 1, f"steps must be ≥ 1, got {self.steps}")
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        check(self.binary_search_steps >= 1, "binary_search_steps must be ≥ 1")

    @classmethod
    def summarise(cls, s: Mapping[str, Any]) -> str:
        search = f", {s['binary_search_steps']} binary-search steps of c" if s["binary_search_steps"] > 1 else ""
        return (f"L2 unbounded (the measured sizes are its budget), c {s['c']:g}, κ {s['kappa']:g}, Adam lr {s['lr']:g}, "
                f"{_count(s['steps'], 'step')}{', early stop' if s['early_stop'] else ''}{search}")

    def _objective(self, model: nn.Module, c: Tensor) -> Objective:
        def value(x_adv: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
            logits = model(x_adv)
            m = margin_loss(logits, y)  # > 0 once fooled
            f = (m if self.targeted else -m).clamp_min(-self.kappa)  # ≤ −κ once the goal is reached
            l2sq = (x_adv - x).flatten(1).pow(2).sum(1)
            return -(l2sq + c * f).sum(), logits

        return value

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None, indices: Tensor | None) -> Tensor:
        c = torch.full((x.shape[0],), self.c, device=x.device)
        lo = torch.zeros_like(c)
        hi = torch.full_like(c, float("inf"))
        best = x.clone()
        best_l2 = torch.full_like(c, float("inf"))
        for _ in range(self.binary_search_steps):
            adv = optimise(model, x, y, self._objective(model, c), steps=self.steps, adam_lr=self.lr,
                           variable=Variable("tanh"), select="min_l2_success", targeted=self.targeted,
                           early_stop_every=max(self.steps // 3, 1) if self.early_stop else 0)
            l2 = _flat_norm(adv - x, "l2")
            found = l2 > 0
            better = found & (l2 < best_l2)
            best[better], best_l2[better] = adv[better], l2[better]
            hi = torch.where(found, torch.minimum(hi, c), hi)
            lo = torch.where(found, lo, torch.maximum(lo, c))
            c = torch.where(torch.isinf(hi), c * 10, (lo + hi) / 2)
        return best


@dataclass
class NRF(_Base):
    """Non-robust feature attack (Kim, Lee, Ro, NeurIPS 2021, Eq. 7–8).

    Needs the model split at a layer (:class:`nonrobust.split.LayerSplit`). The
    channels whose gradient is pushed come from ``mask`` (``[C]`` or ``[B, C]``,
    1 = pushed) when given; otherwise, as in the reference code, from the
    bottleneck run on the clean batch with its true labels (``ib``, default the
    ``paper`` protocol), taking its ``channels`` mask (``nonrobust`` for NRF,
    ``robust`` for the RF variants), fixed during the attack. With
    ``f = max(z_y − max_{i≠y} z_i, 0)`` and ``G = mask · ∂(−f)/∂Z̄``, it minimises
    ``L_base − sign·‖G‖`` where ``sign = +1`` maximises ‖G‖ (NRF, RF) and ``−1``
    minimises it (NRF2, RF2: the Table 4 variants).

    Forms (every one reports its norm):

    * ``surrogate`` — the reference code: ``x' = (tanh w + 1)/2``, Adam lr 0.1,
      200 steps, ``L_base = ‖x'−x‖₂² + c·f`` with c 0.1; ‖G‖ taken over the whole
      batch and differentiated as ``‖Z̄ − (Z̄.detach() − G.detach())‖`` (value ‖G‖,
      gradient G/‖G‖ w.r.t. Z̄); keeps the smallest-L2 misclassified iterate;
      early stop every steps//3. **Unbounded L2**: compare only with CW-L2 at the
      same c, lr and steps.
    * ``exact`` — the same loop, with ‖G‖ per sample and differentiated through
      (``create_graph=True``), as Eq. 8 is written. Unbounded L2.
    * ``linf`` — ``c·f − sign·‖G‖`` (per sample, surrogate gradient) maximised by
      projected sign steps inside the L∞ ``eps`` ball (PGD's schedule: ``steps``,
      ``alpha`` = :func:`step_size` ``(eps, steps, alpha_factor)``, random start), so it
      is comparable with PGD and AutoAttack at one budget (the registered ``nrf-linf``
      runs PGD-20's 20 steps of eps/4).
    """

    split: LayerSplit | None = None
    mask: Tensor | None = None
    channels: Literal["nonrobust", "robust"] = "nonrobust"
    ib: IBConfig | None = None
    form: Literal["surrogate", "exact", "linf"] = "surrogate"
    sign: int = 1
    c: float = 0.1
    steps: int = 200
    lr: float = 0.1
    eps: float | None = None
    alpha: float | None = None
    alpha_factor: float = STEP_FACTORS["reference"]
    random_start: bool = True
    early_stop: bool = True
    loop: Literal["nonrobust", "reference"] = "nonrobust"
    name: str = "nrf"

    def __post_init__(self) -> None:
        check(self.split is not None and hasattr(self.split, "features_and_context"), "NRF needs a LayerSplit (nonrobust.split.split_model(model, layer))")
        check(self.channels in ("nonrobust", "robust"), f"channels must be nonrobust or robust, got {self.channels!r}")
        if self.mask is None and self.ib is None:
            from .bottleneck import IBConfig

            self.ib = IBConfig()
        check(self.form in ("surrogate", "exact", "linf"), f"form must be surrogate, exact or linf, got {self.form!r}")
        check(self.sign in (1, -1), "sign must be +1 (maximise ‖G‖) or -1 (minimise)")
        check(self.c > 0 and self.steps >= 1, "c must be > 0 and steps ≥ 1")
        check(self.loop in ("nonrobust", "reference"), f"loop must be nonrobust or reference, got {self.loop!r}")
        check(self.loop == "nonrobust" or self.form != "linf", "the reference loop is the L2 forms' (Adam in tanh space)")
        if self.form == "linf":
            check(self.eps is not None and self.eps > 0, f"the linf form needs eps > 0, got {self.eps}")
            check_budget("linf", self.eps)
            assert self.eps is not None
            if self.alpha is None:
                self.alpha = step_size(self.eps, self.steps, self.alpha_factor)

    @property
    def norm(self) -> str:
        return "linf" if self.form == "linf" else "l2"

    def describe(self) -> dict[str, Any]:
        """Every setting (:meth:`_Base.describe`: the whole bottleneck config, a given mask's digest), plus readable ``layer``,
        ``masks`` and ``masked_channels``; the linf form leaves out Adam's ``lr``, which it does not use."""
        d = super().describe()
        if self.mask is not None:
            masks = "given"
        else:
            assert self.ib is not None  # __post_init__ gives a default config when no mask is given
            masks = f"bottleneck on the clean batch ({self.ib.protocol}, beta {self.ib.beta})"
        d.update(layer=d.pop("split")["layer"],
                 masks=masks,
                 masked_channels=int(self.mask.float().sum(-1).mean()) if self.mask is not None else None)
        if self.form == "linf":
            d.pop("lr")
        else:
            d.pop("alpha_factor")
        return d

    @classmethod
    def summarise(cls, s: Mapping[str, Any]) -> str:
        push = f"{'maximise' if s['sign'] == 1 else 'minimise'} the {s['channels'].replace('nonrobust', 'non-robust')} channels' gradient norm"
        masks = s.get("masks") or ("given masks" if s.get("mask") else "masks from the bottleneck on each clean batch")
        if s["form"] == "linf":
            how = (f"L∞ eps {budget_text(s['eps'])}, {_count(s['steps'], 'step')} of α {budget_text(s['alpha'])}, "
                   f"{'random start' if s['random_start'] else 'no random start'}")
        else:
            how = (f"L2 unbounded, c {s['c']:g}, Adam lr {s['lr']:g}, {_count(s['steps'], 'step')}"
                   f"{', early stop' if s['early_stop'] else ''}, {s['form']} form" + (", the reference code's loop" if s["loop"] == "reference" else ""))
        return f"{push}; {how}; {masks}"

    def _channel_mask(self, x: Tensor, y: Tensor, indices: Tensor | None) -> Tensor:
        if self.mask is None:
            from .bottleneck import distill

            assert self.split is not None and self.ib is not None  # __post_init__: a split, and a config when no mask is given
            res = distill(self.split, x, y, self.ib, indices=indices)
            m = res.nonrobust_mask if self.channels == "nonrobust" else res.robust_mask
        else:
            m = self.mask
        m = m.float().to(x.device)
        m = m if m.dim() == 2 else m.expand(x.shape[0], -1)
        check(m.shape[0] == x.shape[0], f"mask has {m.shape[0]} rows for a batch of {x.shape[0]}")
        return m

    def _objective(self, mask: Tensor) -> Objective:
        split = self.split
        assert split is not None  # checked in __post_init__
        exact = self.form == "exact"
        with_l2 = self.form != "linf"

        def value(x_adv: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
            z, ctx = split.features_and_context(x_adv)
            logits = split.head(z, ctx)
            f = (-margin_loss(logits, y, reference=self.loop == "reference")).clamp_min(0)  # z_y − max_{i≠y} z_i, floored at 0
            (g,) = torch.autograd.grad(-f.sum(), z, create_graph=exact, retain_graph=True)
            masked = mask[:, :, None, None] * g if g.dim() == 4 else mask * g
            if exact:
                cost = masked.flatten(1).norm(dim=1).sum()
            elif self.form == "surrogate":
                cost = (z - (z.detach() - masked.detach())).norm()
            else:
                cost = (z - (z.detach() - masked.detach())).flatten(1).norm(dim=1).sum()
            base = self.c * f.sum()
            if with_l2:
                base = base + (x_adv - x).flatten(1).pow(2).sum()
            return -(base - self.sign * cost), logits

        return value

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None, indices: Tensor | None) -> Tensor:
        objective = self._objective(self._channel_mask(x, y, indices))
        if self.form == "linf":
            assert self.eps is not None  # checked in __post_init__
            ball = Ball("linf", self.eps)
            start = ball.random_start(x, generator) if self.random_start else x
            return optimise(model, x, y, objective, steps=self.steps, ball=ball, alpha=self.alpha, start=start)
        reference = self.loop == "reference"
        return optimise(model, x, y, objective, steps=self.steps, adam_lr=self.lr, variable=Variable("tanh", clamp=not reference),
                        select="min_l2_success", early_stop_every=max(self.steps // 3, 1) if self.early_stop else 0,
                        reference_loop=reference)


_AA_COMPONENTS = ("apgd-ce", "apgd-t", "fab-t", "square", "fab", "apgd-dlr")


_AA_NAMES = {"apgd-ce": "APGD-CE", "apgd-t": "APGD-T", "fab-t": "FAB-T", "square": "Square", "fab": "FAB", "apgd-dlr": "APGD-DLR"}
_AA_STANDARD = ("apgd-ce", "apgd-t", "fab-t", "square")


@dataclass
class AutoAttackRunner(_Base):
    """AutoAttack (Croce & Hein, ICML 2020) from the reference implementation (``pyautoattack``), with every setting explicit.

    ``version="standard"`` runs APGD-CE, APGD-T, FAB-T and Square in cascade (each on the points
    still correct); ``components`` picks single components (``apgd-ce``, ``apgd-t``, ``fab-t``,
    ``square``, ``fab``, ``apgd-dlr``) as a custom run, in that order. Whatever the version, the
    components run with this object's settings, set on pyautoattack's attack objects before the run
    (pyautoattack's own defaults for a custom run differ from the standard ones: APGD with 5
    restarts, FAB with 5), so :meth:`describe` is what runs:

    - ``apgd_restarts``, ``apgd_iterations``: APGD-CE / APGD-DLR restarts and iterations (standard: 1, 100);
      APGD-T runs 1 restart per target class with the same iterations;
    - ``targets``: target classes of APGD-T and FAB-T (standard 9; at most the model's classes − 1);
    - ``fab_restarts``: restarts of untargeted FAB (FAB-T always runs 1 per target: pyautoattack's rule);
    - ``square_queries``: Square's query budget (standard 5000).

    The seed comes from ``generator`` when one is passed, else ``seed``; the global RNG is restored
    afterwards. Defaults: L∞, eps 8/255, the standard version. pyautoattack's own checks of the model
    are silenced: nonrobust runs its own (:mod:`nonrobust.checks`) once per model and command.
    """

    eps: float = 8 / 255
    norm: Literal["linf", "l2"] = "linf"
    version: Literal["standard", "custom"] = "standard"
    components: tuple[str, ...] | None = None
    apgd_restarts: int = 1
    apgd_iterations: int = 100
    targets: int = 9
    fab_restarts: int = 1
    square_queries: int = 5000
    seed: int = 0
    batch_size: int = 500
    name: str = "autoattack"

    def __post_init__(self) -> None:
        check(self.norm in ("linf", "l2"), f"norm must be linf or l2, got {self.norm!r}")
        check_budget(self.norm, self.eps)
        if self.components is not None:
            self.components = tuple(self.components)
            bad = [c for c in self.components if c not in _AA_COMPONENTS]
            check(not bad, f"unknown AutoAttack component(s) {bad}: choose from {', '.join(_AA_COMPONENTS)}")
            self.version = "custom"
        check(self.version in ("standard", "custom"), f"version must be standard or custom, got {self.version!r}")
        check(self.version == "standard" or bool(self.components), "a custom AutoAttack run needs components")
        for name in ("apgd_restarts", "apgd_iterations", "targets", "fab_restarts", "square_queries", "batch_size"):
            check(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, f"{name} must be a positive integer, got {getattr(self, name)!r}")
        runs = self.runs
        check(not ("fab" in runs and "fab-t" in runs and runs.index("fab-t") < runs.index("fab")),
              "run fab before fab-t: after FAB-T, pyautoattack's FAB keeps 1 restart")

    @property
    def runs(self) -> tuple[str, ...]:
        """The components this attack runs, in order."""
        return _AA_STANDARD if self.version == "standard" else tuple(self.components or ())

    @classmethod
    def summarise(cls, s: Mapping[str, Any]) -> str:
        runs = tuple(s["components"]) if s.get("components") else _AA_STANDARD
        version = "custom" if s.get("components") else s["version"]
        per = {"apgd-ce": f"{_count(s['apgd_restarts'], 'restart')}, {s['apgd_iterations']} iterations",
               "apgd-dlr": f"{_count(s['apgd_restarts'], 'restart')}, {s['apgd_iterations']} iterations",
               "apgd-t": f"{_count(s['targets'], 'target class', 'target classes')}, 1 restart each, {s['apgd_iterations']} iterations",
               "fab-t": f"{_count(s['targets'], 'target class', 'target classes')}, 1 restart each",
               "fab": f"untargeted, {_count(s['fab_restarts'], 'restart')}",
               "square": f"{s['square_queries']} queries"}
        parts = ", then ".join(f"{_AA_NAMES[c]} ({per[c]})" for c in runs)
        return f"{_NORM_NAMES[s['norm']]} eps {budget_text(s['eps'])}, {version} version: {parts}"

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None, indices: Tensor | None) -> Tensor:
        import logging

        try:
            from pyautoattack import AutoAttack
        except ImportError:  # pragma: no cover - declared dependency
            raise UserError("AutoAttack needs the pyautoattack package: pip install pyautoattack") from None
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator, device=generator.device)) if generator is not None else self.seed
        with torch.no_grad():
            n_classes = model(x[:1]).shape[1]
        check(n_classes >= 2, "AutoAttack needs at least 2 classes")
        devices = [x.device.index or 0] if x.device.type == "cuda" else []
        aa_log = logging.getLogger("auto-attack")
        level = aa_log.level
        with torch.random.fork_rng(devices=devices):
            aa = AutoAttack(model, norm={"linf": "Linf", "l2": "L2"}[self.norm], eps=self.eps, version=self.version,
                            seed=seed, device=x.device, attacks=list(cast("tuple[str, ...]", self.components)) if self.version == "custom" else None)
            aa.verbose = False
            targets = min(self.targets, n_classes - 1)
            aa.apgd.n_restarts, aa.apgd.n_iter = self.apgd_restarts, self.apgd_iterations
            aa.apgd_targeted.n_restarts, aa.apgd_targeted.n_iter, aa.apgd_targeted.n_target_classes = 1, self.apgd_iterations, targets
            aa.fab.n_restarts, aa.fab.n_target_classes = self.fab_restarts, targets
            aa.square.n_queries = self.square_queries
            try:
                aa_log.setLevel(logging.ERROR)  # its checks of the model: nonrobust.checks runs its own, once per model
                x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=self.batch_size)
            finally:
                aa_log.setLevel(level)
        return Ball(self.norm, self.eps).fit(x_adv.detach(), x)  # AutoAttack projects in float32: undo its rounding


# --------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class AttackSpec:
    """A registered attack: how to build it, its norm, its display label and what it is.

    ``what`` says what the attack is in words, without numbers; :attr:`description` adds what its
    registered settings run, generated from them (:meth:`settings`), so the two cannot disagree.
    """

    name: str
    factory: type[_Base]
    defaults: dict[str, Any] = field(default_factory=dict)
    norm: str = "linf"
    label: str = ""
    what: str = ""
    needs_split: bool = False

    def settings(self, **overrides: Any) -> dict[str, Any]:
        """The settings this attack runs with (every field of its class, as :meth:`describe` reports them),
        built without a model: the class's defaults, the registered ones, then ``overrides``."""
        values: dict[str, Any] = {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
                                  for f in fields(self.factory)}
        values.update(self.defaults)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "alpha" in values and values.get("alpha") is None and values.get("eps") is not None:
            values["alpha"] = step_size(values["eps"], values["steps"], values["alpha_factor"])
        values.setdefault("eps", None)
        if self.factory is NRF:
            values["masks"] = None
        return values

    @property
    def description(self) -> str:
        """``what``, then the settings it runs with, in words (:meth:`_Base.summarise` of :meth:`settings`)."""
        return f"{self.what}: {self.factory.summarise(self.settings())}"


def _spec(name: str, factory: type[_Base], threat: str, label: str, what: str, needs_split: bool = False,
          **defaults: Any) -> AttackSpec:
    return AttackSpec(name, factory, dict(defaults, name=name), threat, label, what, needs_split)


_REF = "the reference code's setting, as in the paper's Table 3"
_F = STEP_FACTORS
ATTACKS: dict[str, AttackSpec] = {s.name: s for s in [
    _spec("fgsm", PGD, "linf", "FGSM", "FGSM (Goodfellow et al. 2015): one signed-gradient step of the whole budget", steps=1,
          alpha_factor=_F["fgsm"], random_start=False),
    _spec("bim", PGD, "linf", "BIM", f"BIM (Kurakin et al. 2017), {_REF}", steps=9, alpha=1 / 255, random_start=False),
    _spec("pgd", PGD, "linf", "PGD-10", f"PGD with α = 2.3·eps/steps, {_REF}", steps=10),
    _spec("pgd-20", PGD, "linf", "PGD-20", "PGD (Madry et al. 2018) with α = eps/4", steps=20, alpha_factor=_F["quarter"]),
    _spec("pgd-l2", PGD, "l2", "PGD-L2", "PGD in the L2 ball, α = 2.5·eps/steps", norm="l2", eps=0.5, steps=20, alpha_factor=_F["madry"]),
    _spec("cw-inf", PGD, "linf", "CW∞", "CW∞: PGD on the CW margin loss, α = eps/4", loss="margin", steps=20, alpha_factor=_F["quarter"]),
    _spec("cw-l2", CWL2, "l2", "CW-L2", f"Carlini–Wagner L2 in tanh space, {_REF}"),
    _spec("autoattack", AutoAttackRunner, "linf", "AutoAttack", "AutoAttack (Croce & Hein 2020)"),
    _spec("apgd-ce", AutoAttackRunner, "linf", "APGD-CE", "APGD-CE, AutoAttack's first component as the standard version runs it",
          version="custom", components=("apgd-ce",)),
    _spec("apgd-t", AutoAttackRunner, "linf", "APGD-T", "APGD-T (targeted DLR loss), an AutoAttack component", version="custom", components=("apgd-t",)),
    _spec("fab-t", AutoAttackRunner, "linf", "FAB-T", "FAB-T (targeted), an AutoAttack component", version="custom", components=("fab-t",)),
    _spec("fab", AutoAttackRunner, "linf", "FAB", f"FAB, untargeted, an AutoAttack component ({_REF})", version="custom", components=("fab",), fab_restarts=5),
    _spec("square", AutoAttackRunner, "linf", "Square", "Square (score-based, no gradients), an AutoAttack component",
          version="custom", components=("square",)),
    _spec("aa-reference", AutoAttackRunner, "linf", "AA (reference: APGD-CE)",
          "the reference code's 'AA', which is APGD-CE alone — NOT AutoAttack", version="custom", components=("apgd-ce",)),
    _spec("nrf", NRF, "l2", "NRF-L2", "NRF (Kim et al. 2021), the reference code's surrogate objective on nonrobust's loop; compare with cw-l2",
          True, form="surrogate"),
    _spec("nrf-reference", NRF, "l2", "NRF (L2, reference loop)",
          "NRF as the reference code runs it: its early stop, unclamped inverse tanh, no pick of the last iterate, its margin max", True,
          form="surrogate", loop="reference"),
    _spec("nrf-exact", NRF, "l2", "NRF-L2 (exact)", "NRF with Eq. 8's gradient-norm term differentiated through", True, form="exact"),
    _spec("nrf-linf", NRF, "linf", "NRF-L∞", "the NRF objective on PGD-20's schedule in the L∞ ball (comparable with PGD-20)", True,
          form="linf", eps=8 / 255, steps=20, alpha_factor=_F["quarter"]),
    _spec("nrf2", NRF, "l2", "G_nr ↓ (NRF2)", "Table 4's NRF2 (surrogate form)", True, form="surrogate", sign=-1),
    _spec("rf", NRF, "l2", "G_r ↑ (RF)", "Table 4's RF (surrogate form)", True, form="surrogate", channels="robust"),
    _spec("rf2", NRF, "l2", "G_r ↓ (RF2)", "Table 4's RF2 (surrogate form)", True, form="surrogate", channels="robust", sign=-1),
]}


def _folded(text: str) -> str:
    return text.lower().replace("∞", "inf").replace(" ", "").replace("_", "-")


def attack_name(text: str) -> str:
    """The registered name of an attack given by its name or its display label, in any case (``pgd-20``, ``PGD-20``,
    ``NRF-L∞``, ``nrf-linf``); :class:`UserError` with the closest names for anything else."""
    if text in ATTACKS:
        return text
    names = {_folded(k): k for k in ATTACKS} | {_folded(spec.label): k for k, spec in ATTACKS.items()}
    if _folded(text) in names:
        return names[_folded(text)]
    close = difflib.get_close_matches(_folded(text), list(names), n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(dict.fromkeys(names[c] for c in close))}? " if close else ""
    raise UserError(f"unknown attack {text!r}: {hint}choose from {', '.join(ATTACKS)}")


def make_attack(name: str, **overrides: Any) -> Attack:
    """Build a registered attack (by name or display label, :func:`attack_name`) with its defaults, overridden by ``overrides``.

    ``overrides`` whose value is ``None`` are ignored. NRF-family attacks need
    ``split=`` and ``mask=``. Raises :class:`UserError` for an unknown name or setting.
    """
    name = attack_name(name)
    spec = ATTACKS[name]
    settings = dict(spec.defaults)
    settings.update({k: v for k, v in overrides.items() if v is not None})
    allowed = {f.name for f in fields(spec.factory)}
    unknown = sorted(set(settings) - allowed)
    check(not unknown, f"attack {name!r} has no setting(s) {', '.join(unknown)}; it takes {', '.join(sorted(allowed - {'name'}))}")
    return spec.factory(**settings)


def point_sizes(x: Tensor, x_adv: Tensor) -> dict[str, Tensor]:
    """Per-image measurements of an attack's output, each ``[B]``.

    ``linf``, ``l2``: sizes of ``x_adv − x`` in float64 (exact: float32 arithmetic would
    round them, possibly past the budget); ``nan``: count of non-finite values in
    ``x_adv`` (int64); ``min``, ``max``: value range of ``x_adv`` (its dtype).
    """
    delta, flat = exact_delta(x_adv, x).flatten(1), x_adv.flatten(1)
    return {"linf": delta.abs().amax(1), "l2": delta.norm(dim=1), "nan": (~torch.isfinite(flat)).sum(1),
            "min": flat.amin(1), "max": flat.amax(1)}


CHANGE_FLOOR = 1e-4
"""An image counts as *changed* by an attack when its perturbation's L∞ size exceeds this (in [0,1] pixel units, 1/39 of
one 8-bit grey level). Float round trips (AutoAttack's float32 projection, tanh space and back) move images that no attack
step changed by about 1e-7; those are not changes."""


def summarise_sizes(sizes: Mapping[str, Tensor]) -> dict[str, float | int | None]:
    """The one summary of an attack's perturbations that every result reports, as AutoAttack reports them.

    Args:
        sizes: per-point measurements (the columns of :func:`point_sizes`, of any number of points).

    Returns:
        ``points``; ``linf_max``, ``l2_median``, ``l2_max`` (sizes of ``x_adv − x``); ``nan`` (count of
        non-finite values in ``x_adv``); ``min``/``max`` (value range of ``x_adv``). Every value but
        ``points`` is ``None`` when there are no points.
    """
    points = int(sizes["l2"].numel())
    if points == 0:
        return {"points": 0, **{k: None for k in ("linf_max", "l2_median", "l2_max", "nan", "min", "max")}}
    return {"points": points, "linf_max": float(sizes["linf"].max()), "l2_median": float(sizes["l2"].median()),
            "l2_max": float(sizes["l2"].max()), "nan": int(sizes["nan"].sum()), "min": float(sizes["min"].min()),
            "max": float(sizes["max"].max())}


def perturbation_norms(x: Tensor, x_adv: Tensor) -> dict[str, float | int | None]:
    """:func:`summarise_sizes` of the batch ``x_adv`` of ``x`` (both ``[B, C, H, W]``)."""
    return summarise_sizes(point_sizes(x, x_adv))


# --------------------------------------------------------------------------- named lists of attacks
@dataclass(frozen=True)
class AttackSet:
    """A named list of ``(attack name, settings, display label)``, e.g. one table of the paper.

    A label of ``None`` means the attack's registered :attr:`AttackSpec.label`.
    """

    name: str
    description: str
    attacks: tuple[tuple[str, dict[str, Any], str | None], ...]

    @property
    def names(self) -> tuple[str, ...]:
        """The registered attack names, in order."""
        return tuple(a for a, _, _ in self.attacks)


_P = 0.03  # the reference code's eps for every attack
ATTACK_SETS: dict[str, AttackSet] = {s.name: s for s in [
    AttackSet("paper-table3", "the paper's Table 3 as the reference code ran it: eps 0.03, its PGD/BIM/CW settings, "
              "'AA' = APGD-CE with 1 restart (not AutoAttack), NRF unbounded L2 (compare it with CW only)", (
        ("fgsm", {"eps": _P}, None), ("bim", {"eps": _P}, None), ("pgd", {"eps": _P}, "PGD"),
        ("cw-l2", {}, "CW"), ("aa-reference", {"eps": _P}, None),
        ("fab", {"eps": _P}, None), ("nrf-reference", {}, None))),
    AttackSet("standard", "one L∞ budget for every attack (eps 8/255): PGD-20, CW∞, AutoAttack and NRF in its L∞ "
              "form, so the numbers compare", (
        ("fgsm", {}, None), ("pgd-20", {}, None), ("cw-inf", {}, None), ("autoattack", {}, None), ("nrf-linf", {}, None))),
    AttackSet("table4", "the paper's Table 4: maximise / minimise the gradient norm of non-robust / robust features "
              "(surrogate form, unbounded L2)", (
        ("nrf", {}, "G_nr ↑ (NRF)"), ("nrf2", {}, None), ("rf", {}, None), ("rf2", {}, None))),
]}


def make_attack_set(name: str, split: LayerSplit | None = None, **overrides: Any) -> dict[str, Attack]:
    """Build every attack of :data:`ATTACK_SETS` ``[name]``: display name -> attack.

    ``split`` (a :class:`nonrobust.split.LayerSplit`) is handed to the NRF family;
    ``overrides`` (e.g. ``ib=IBConfig(...)``) go to every attack that takes them.
    """
    spec = ATTACK_SETS.get(name)
    if spec is None:
        raise UserError(f"unknown attack set {name!r}: choose from {', '.join(ATTACK_SETS)}")
    out = {}
    for attack, settings, label in spec.attacks:
        label = label or ATTACKS[attack].label
        allowed = {f.name for f in fields(ATTACKS[attack].factory)}
        extra = {k: v for k, v in overrides.items() if k in allowed}
        if ATTACKS[attack].needs_split:
            check(split is not None, f"attack set {name!r} includes {attack}: pass split=split_model(model, layer)")
            extra["split"] = split
        out[label] = make_attack(attack, **{**settings, **extra})
    return out
