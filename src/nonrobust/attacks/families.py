"""The attack families on the shared loop: :class:`PGD` (FGSM, BIM, PGD, CW∞), :class:`CWL2` and :class:`NRF`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Mapping

import torch
from torch import Tensor, nn

from ..errors import check
from ..fields import setting
from .base import _NORM_NAMES, _Base, _count, budget_text
from .loop import STEP_FACTORS, Objective, Variable, optimise, step_size
from .threat import EPS_HELP, LOSSES, Ball, Norm, _flat_norm, check_budget, margin_loss

if TYPE_CHECKING:
    from ..bottleneck import IBConfig
    from ..split import LayerSplit



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

    eps: float = setting(8 / 255, EPS_HELP, "positive")
    steps: int = setting(10, "iterations", "positive_int")
    alpha: float | None = setting(None, "step size (default: a named factor · eps/steps)", "positive")
    alpha_factor: float = STEP_FACTORS["reference"]
    norm: Norm = setting("linf", "threat model", "choice")
    loss: Literal["ce", "margin"] = "ce"
    random_start: bool = True
    restarts: int = setting(1, "random restarts (each point keeps the first that fools the model)", "positive_int")
    targeted: bool = False
    name: str = "pgd"
    family: ClassVar[str] = "PGD family"

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

    c: float = setting(0.1, "constant c of the margin term", "positive")
    kappa: float = 0.0
    steps: int = setting(200, "Adam steps", "positive_int")
    lr: float = setting(0.1, "Adam learning rate", "positive")
    binary_search_steps: int = 1
    targeted: bool = False
    early_stop: bool = True
    name: str = "cw-l2"
    family: ClassVar[str] = "CW-L2"

    @property
    def norm(self) -> str:
        """Always ``l2``: an L2 attack (unbounded; its measured sizes are its budget)."""
        return "l2"

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
    c: float = setting(0.1, "constant c of the margin term", "positive")
    steps: int = setting(200, "Adam steps (L2 forms) or iterations (linf form)", "positive_int")
    lr: float = setting(0.1, "Adam learning rate", "positive")
    eps: float | None = setting(None, EPS_HELP, "positive")
    alpha: float | None = setting(None, "step size (default: a named factor · eps/steps)", "positive")
    alpha_factor: float = STEP_FACTORS["reference"]
    random_start: bool = True
    early_stop: bool = True
    loop: Literal["nonrobust", "reference"] = "nonrobust"
    name: str = "nrf"
    family: ClassVar[str] = "NRF family"

    def __post_init__(self) -> None:
        check(self.split is not None and hasattr(self.split, "features_and_context"), "NRF needs a LayerSplit (nonrobust.split.split_model(model, layer))")
        check(self.channels in ("nonrobust", "robust"), f"channels must be nonrobust or robust, got {self.channels!r}")
        if self.mask is None and self.ib is None:
            from ..bottleneck import IBConfig

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
            from ..bottleneck import distill

            assert self.split is not None and self.ib is not None  # __post_init__: a split, and a config when no mask is given
            res = distill(self.split, x, y, self.ib, indices=indices)
            m = res.mask(self.channels)
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


