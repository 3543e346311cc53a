"""AutoAttack and its components from the reference implementation (``pyautoattack``), with every setting explicit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Mapping, cast

import torch
from torch import Tensor, nn

from ..errors import UserError, check
from ..fields import setting
from .base import _NORM_NAMES, _Base, _count, budget_text
from .threat import EPS_HELP, Ball, check_budget

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

    eps: float = setting(8 / 255, EPS_HELP, "positive")
    norm: Literal["linf", "l2"] = setting("linf", "threat model", "choice")
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
    family: ClassVar[str] = "AutoAttack"

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


