"""Checks of a model that make an evaluation of it unreliable: nonrobust's own version of AutoAttack's ``checks.py``.

Croce & Hein ship these checks with AutoAttack (``autoattack/checks.py``) because each one names a way
in which a robustness figure can be wrong without any error: a randomised model, probabilities
instead of logits, gradients that vanish (obfuscation), or a class count that does not fit the data.
:func:`model_warnings` runs them on one batch; ``attack``, ``split`` and ``report`` run them once per
model and command (:func:`warn_about_model`), each problem as one ``warning:`` line, whatever attack
follows. pyautoattack's own copies are silenced inside nonrobust's AutoAttack runner.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .runtime import frozen

__all__ = ["model_warnings", "warn_about_model"]


def model_warnings(model: nn.Module, x: Tensor, y: Tensor, num_classes: int) -> list[str]:
    """The problems found with ``model`` on the batch ``x`` (images ``[B, C, H, W]`` in [0,1]) with labels ``y`` (int64 ``[B]``).

    Runs the model as nonrobust's attacks do (eval mode, parameters frozen; both restored after):
    two identical forward passes, one input gradient of the cross-entropy. Returns one sentence per
    problem (empty when none): outputs that change between identical calls, outputs that are
    probabilities, zero or non-finite input gradients, a logit count other than ``num_classes``.
    """
    problems: list[str] = []
    x = x.detach()
    with frozen(model), torch.no_grad():
        first, second = model(x), model(x)
    scale = first.abs().max().clamp_min(1e-12)
    if first.shape != second.shape or float((first - second).abs().max() / scale) > 1e-4:
        problems.append("the model's outputs change between two identical calls in eval mode (randomness: dropout, noise or a "
                        "randomised defence): attacks and the bottleneck assume a deterministic model, so their figures are "
                        "unreliable; evaluate a randomised defence with expectation over transformation")
    if first.dim() == 2 and bool((first >= -1e-5).all()) and bool((first <= 1 + 1e-5).all()) and \
            bool(((first.sum(1) - 1).abs() < 1e-4).all()):
        problems.append("the model's outputs are probabilities (each row lies in [0,1] and sums to 1), not logits: the attacks' "
                        "losses and the bottleneck assume logits, so return the scores before the softmax")
    if first.dim() == 2 and first.shape[1] != num_classes:
        problems.append(f"the model returns {first.shape[1]} logits, the data has {num_classes} classes: labels are compared with "
                        "the model's outputs by index, so the accuracies are only meaningful if label i is the model's class i")
    with frozen(model), torch.enable_grad():
        xg = x.clone().requires_grad_(True)
        logits = model(xg)
        if logits.dim() == 2 and int(y.max()) < logits.shape[1]:
            (grad,) = torch.autograd.grad(F.cross_entropy(logits, y.to(logits.device), reduction="sum"), xg, allow_unused=True)
            grad = torch.zeros_like(xg) if grad is None else grad
            flat = grad.flatten(1)
            bad = int((~torch.isfinite(flat)).any(1).sum())
            zero = int((flat.abs().sum(1) == 0).sum())
            if bad:
                problems.append(f"{bad} of {x.shape[0]} images have non-finite input gradients: gradient-based attacks and the "
                                "bottleneck cannot use them (numerical trouble or a non-differentiable defence)")
            if zero:
                problems.append(f"{zero} of {x.shape[0]} images have an input gradient of exactly zero (gradient masking or "
                                "obfuscation, e.g. saturated softmax or a non-differentiable step): gradient-based attacks then "
                                "over-state robustness; check with a gradient-free attack (square)")
    return problems


def warn_about_model(model: nn.Module, x: Tensor, y: Tensor, num_classes: int) -> list[str]:
    """:func:`model_warnings`, each problem issued as a ``UserWarning`` (one ``warning:`` line on the command line)."""
    problems = model_warnings(model, x, y, num_classes)
    for problem in problems:
        warnings.warn(problem, stacklevel=2)
    return problems
