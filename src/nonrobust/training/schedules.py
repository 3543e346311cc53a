"""Learning-rate schedules: the factor by which the base rate is multiplied, a pure function of the position in training."""

from __future__ import annotations

import math

from ..errors import UserError, check


def lr_factor(schedule: str, epoch: int, step: int, steps_per_epoch: int, epochs: int) -> float:
    """The learning-rate multiplier at step ``step`` of epoch ``epoch`` (both from 0).

    Schedules: ``constant``; ``step:S:G`` (×G every S epochs, as StepLR);
    ``multistep:M1,M2,...:G`` (×G after each milestone epoch, as MultiStepLR);
    ``cosine`` (per step, from 1 to 0 over all epochs); ``cyclic`` (Wong et al.
    2020 one-cycle: per step, linear 0 → 1 at 2/5 of training → 0);
    ``piecewise:E0=F0,E1=F1,...`` (per step, linear between the knots: factor Fi at
    epoch Ei, non-decreasing epochs, the first and last factors held outside them;
    an epoch given twice is a jump, its first factor ending the segment before it,
    e.g. ``piecewise:0=0,3=1,8=0,8=0.625,13=0`` is a one-cycle over 8 epochs then a
    second descent over 5). Per-step schedules place step ``step`` at
    ``epoch + (step + 1) / steps_per_epoch``.
    Raises :class:`UserError` for an unknown or malformed schedule.
    """
    kind, *args = str(schedule).split(":")
    try:
        if kind == "constant" and not args:
            return 1.0
        if kind == "step" and len(args) == 2:
            size, gamma = int(args[0]), float(args[1])
            check(size >= 1 and gamma > 0, "step size must be ≥ 1 and gamma > 0")
            return gamma ** (epoch // size)
        if kind == "multistep" and len(args) == 2:
            milestones, gamma = [int(m) for m in args[0].split(",") if m], float(args[1])
            check(bool(milestones) and gamma > 0, "give at least one milestone and gamma > 0")
            return gamma ** sum(epoch >= m for m in milestones)
        if kind == "cosine" and not args:
            t = (epoch + step / steps_per_epoch) / epochs
            return 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))
        if kind == "cyclic" and not args:
            t = epoch + (step + 1) / steps_per_epoch
            peak = epochs * 2 // 5
            if t <= peak:
                return t / peak
            return max(0.0, (epochs - t) / (epochs - peak))
        if kind == "piecewise" and len(args) == 1:
            return _piecewise(_knots(args[0]), epoch + (step + 1) / steps_per_epoch)
    except UserError as e:  # a well-formed schedule with bad values: say which
        raise UserError(f"bad schedule {schedule!r}: {e}") from None
    except ValueError:  # malformed: fall through to the list of schedules
        pass
    raise UserError(f"bad schedule {schedule!r}: use constant, step:S:G (e.g. step:20:0.2), multistep:M1,M2:G (e.g. multistep:100,150:0.1), cosine, cyclic or "
                    "piecewise:E0=F0,E1=F1,... (e.g. piecewise:0=0,3=1,8=0)")


def _knots(spec: str) -> list[tuple[float, float]]:
    """``E0=F0,E1=F1,...`` as ``[(epoch, factor), ...]``; raises ValueError / UserError when malformed."""
    knots = [(float(e), float(f)) for e, f in (pair.split("=") for pair in spec.split(","))]
    check(len(knots) >= 2 and all(f >= 0 for _, f in knots) and all(a[0] <= b[0] for a, b in zip(knots, knots[1:], strict=False)),
          "give at least two knots EPOCH=FACTOR, epochs non-decreasing, factors ≥ 0")
    return knots


def _piecewise(knots: list[tuple[float, float]], t: float) -> float:
    """The factor at training position ``t`` (in epochs) of the piecewise-linear schedule through ``knots``."""
    if t <= knots[0][0]:
        return knots[0][1]
    for (e0, f0), (e1, f1) in zip(knots, knots[1:], strict=False):
        if e0 < e1 and t <= e1:
            return (f0 * (e1 - t) + f1 * (t - e0)) / (e1 - e0)
    return knots[-1][1]


