"""The uncertainty of a reported number: Wilson intervals for accuracies, exact McNemar tests for paired comparisons."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

__all__ = ["wilson", "mcnemar", "paired_counts", "SIGNIFICANCE"]

SIGNIFICANCE = 0.05
"""The level below which a paired test's p-value lets a reading call one result stronger than another."""


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion ``k / n`` (95% for the default ``z``); None when ``n`` is 0.

    >>> [round(v, 4) for v in wilson(8, 10)]
    [0.4902, 0.9433]
    """
    if n <= 0:
        return None
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value for ``b`` and ``c`` discordant pairs (a binomial test of b against Bin(b+c, ½)).

    >>> mcnemar(0, 0), round(mcnemar(10, 2), 4), round(mcnemar(2, 10), 4)
    (1.0, 0.0386, 0.0386)
    """
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    p: float = 2 * tail / 2 ** n
    return min(1.0, p)


def paired_counts(a_correct: Iterable[Any], b_correct: Iterable[Any]) -> dict[str, float | int]:
    """Compare two results on the same images (bool sequences or tensors, one entry per image).

    Returns ``a_only`` (images right under A and wrong under B), ``b_only``, and ``p`` (:func:`mcnemar`).
    """
    a = [bool(v) for v in a_correct]
    b = [bool(v) for v in b_correct]
    if len(a) != len(b):
        raise ValueError(f"paired results need the same images: {len(a)} against {len(b)}")
    a_only = sum(x and not y for x, y in zip(a, b, strict=True))
    b_only = sum(y and not x for x, y in zip(a, b, strict=True))
    return {"a_only": a_only, "b_only": b_only, "p": mcnemar(a_only, b_only)}
