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

The package, one module per part:

- :mod:`.threat`: budgets, the losses attacks maximise, threat models (:class:`Ball`) and exact sizes;
- :mod:`.loop`: the shared projected optimisation loop (:func:`optimise`), the :class:`Attack` protocol, step sizes;
- :mod:`.base`: what every attack class shares (validation, freezing the model, its settings record);
- :mod:`.families`: the attack families on the loop: :class:`PGD` (FGSM, BIM, PGD, CW∞), :class:`CWL2`, :class:`NRF`;
- :mod:`.autoattack`: :class:`AutoAttackRunner`, AutoAttack and its components with explicit settings;
- :mod:`.registry`: the registry of named attacks (:data:`ATTACKS`) and of attack sets (:data:`ATTACK_SETS`);
- :mod:`.sizes`: the measured perturbation sizes every result reports.
"""

from __future__ import annotations

from ..runtime import frozen
from .autoattack import AutoAttackRunner
from .base import budget_text, setting_value
from .families import CWL2, NRF, PGD
from .loop import STEP_FACTORS, Attack, Objective, Variable, optimise, step_size
from .registry import ATTACK_SETS, ATTACKS, AttackSet, AttackSpec, attack_name, attack_table, make_attack, make_attack_set, make_nrf
from .sizes import CHANGE_FLOOR, perturbation_norms, point_sizes, summarise_sizes
from .threat import LINF_WARN, LOSSES, Ball, Norm, ce_loss, check_budget, exact_delta, margin_loss

__all__ = [
    "frozen",
    "Attack",
    "PGD",
    "CWL2",
    "NRF",
    "AutoAttackRunner",
    "ATTACKS",
    "AttackSpec",
    "make_attack",
    "make_nrf",
    "attack_name",
    "attack_table",
    "budget_text",
    "check_budget",
    "ATTACK_SETS",
    "AttackSet",
    "make_attack_set",
    "STEP_FACTORS",
    "step_size",
    "setting_value",
    "optimise",
    "perturbation_norms",
    "summarise_sizes",
    "point_sizes",
    "CHANGE_FLOOR",
    "exact_delta",
    "Ball",
    "ce_loss",
    "margin_loss",
    "LINF_WARN",
    "LOSSES",
    "Objective",
    "Variable",
    "Norm",
]
