"""The paper's reported figures, each with where it comes from: the one home every comparison with the paper reads.

Kim, Lee, Ro, *Distilling Robust and Non-Robust Features in Adversarial Examples by Information Bottleneck*,
NeurIPS 2021. The report's readings (Table 2's paper figure), README's findings table
(``scripts/findings_table.py``) and the docs quote these; none writes a paper figure of its own.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Figure", "VGG16_CIFAR10", "WRN28_10_CIFAR10", "TABLE2", "TABLE2_SOURCE", "table2_range", "table2_figure"]


class Figure(NamedTuple):
    """A figure as the paper reports it (text, e.g. ``"94.35%"``) and where it is."""

    value: str
    source: str


TABLE2: dict[str, dict[tuple[str, str], float]] = {
    "FGSM": {("cifar10", "vgg16"): 60.82, ("cifar10", "wrn28_10"): 92.78, ("svhn", "vgg16"): 63.64, ("svhn", "wrn28_10"): 93.43,
             ("tiny-imagenet", "vgg16"): 56.84, ("tiny-imagenet", "wrn28_10"): 93.72},
    "PGD": {("cifar10", "vgg16"): 94.35, ("cifar10", "wrn28_10"): 95.06, ("svhn", "vgg16"): 94.42, ("svhn", "wrn28_10"): 96.13,
            ("tiny-imagenet", "vgg16"): 96.44, ("tiny-imagenet", "wrn28_10"): 97.65},
    "CW": {("cifar10", "vgg16"): 63.39, ("cifar10", "wrn28_10"): 65.84, ("svhn", "vgg16"): 55.68, ("svhn", "wrn28_10"): 94.90,
           ("tiny-imagenet", "vgg16"): 96.21, ("tiny-imagenet", "wrn28_10"): 95.75},
}
"""Table 2: % of the successfully attacked images whose adversarial non-robust features predict the adversarial label,
by attack, then (data set, network)."""
TABLE2_SOURCE = "Table 2 of the paper (as extracted from its text, row by row)"

VGG16_CIFAR10: dict[str, Figure] = {
    "clean": Figure("79.7%", "Table 1, Int., clean"),
    "pgd": Figure("44.7%", "Table 1, Int., PGD (10 steps, γ = 0.03 ≈ 7.65/255)"),
    "aa": Figure("not run", "Table 3's 'AA' is APGD-CE alone with 1 restart in the reference code, not AutoAttack"),
    "t1_clean": Figure("79.7 / 99.8 / 34.8", "Table 1, clean"),
    "t1_pgd": Figure("44.7 / 97.9 / 20.6", "Table 1, PGD"),
    "t2_pgd": Figure(f"{TABLE2['PGD'][('cifar10', 'vgg16')]}%", "Table 2, CIFAR-10 VGG, PGD"),
    "nrf_vs_pgd": Figure("≈17% vs ≈47% (NRF unbounded L2)", "Table 3, ADV rows"),
    "channels": Figure("not reported per image", "Fig. 5(c) gives channel counts against β"),
    "stability": Figure("not reported", "the paper shows one split per image"),
    "label": Figure("not reported", "the paper makes every mask with the true label"),
    "t1_pop_clean": Figure("not run", "every mask of the paper is per image and made with its label"),
    "t1_pop_pgd": Figure("not run", "every mask of the paper is per image and made with its label"),
}
"""The paper's figures for CIFAR-10 VGG-16 (PGD-AT, γ = 0.03), the setting of README's findings table."""

WRN28_10_CIFAR10: dict[str, Figure] = {
    "clean": Figure("82.6%", "Table 1, WRN, Int., clean"),
    "pgd": Figure("51.6%", "Table 1, WRN, Int., PGD"),
    "aa": VGG16_CIFAR10["aa"],
    "t1_clean": Figure("82.6 / 99.4 / 44.7", "Table 1, WRN, clean"),
    "t1_pgd": Figure("51.6 / 96.3 / 29.4", "Table 1, WRN, PGD"),
    "t2_pgd": Figure(f"{TABLE2['PGD'][('cifar10', 'wrn28_10')]}%", "Table 2, CIFAR-10 WRN, PGD"),
    "nrf_vs_pgd": Figure("not legible", "Table 3's WRN-28-10 rows do not survive the text extraction"),
    "channels": Figure("not reported per image", "Fig. 5(c) gives channel counts against β"),
    **{key: VGG16_CIFAR10[key] for key in ("stability", "label", "t1_pop_clean", "t1_pop_pgd")},
}
"""The paper's figures for CIFAR-10 WRN-28-10 (PGD-AT, γ = 0.03, split at its final BatchNorm, 8×8).

Table 1's text comes out of the PDF as one column of eight figures at a time (CIFAR-10's Int., R. and NR.;
in each, VGG's clean, FGSM, PGD, CW, then WRN's); VGG's figures read that way are the ones above."""


_TABLE2_ROWS = {"fgsm": "FGSM", "pgd": "PGD", "cw": "CW"}
"""Which row of Table 2 an attack of ours compares with: FGSM; every PGD (any steps); CW-L2."""


def table2_range() -> str:
    """Table 2's range over every attack, data set and network, e.g. ``"55.7–97.7%"``."""
    values = [v for row in TABLE2.values() for v in row.values()]
    return f"{min(values):.1f}–{max(values):.1f}%"


def table2_figure(attack: str, dataset: str, arch: str) -> str | None:
    """The paper's Table 2 figure for our registered ``attack`` (e.g. ``pgd-20`` compares with its PGD row) on
    ``dataset`` and ``arch``, as text (``"94.35%"``); ``None`` where the paper has no such cell."""
    row = next((r for prefix, r in _TABLE2_ROWS.items() if attack.startswith(prefix) and attack != "cw-inf"), None)
    value = TABLE2.get(row, {}).get((dataset, arch)) if row else None
    return None if value is None else f"{value:.2f}%"
