"""Plain-language readings of the report's numbers, and the headline the CLI prints."""

from __future__ import annotations

import html
from typing import Any


PAPER_PATTERN = {"robust_keeps": 0.8, "robust_above_chance": 2.0, "nonrobust_loses": 0.5}
"""The thresholds of Table 1's verdict: under attack the robust features keep at least ``robust_keeps`` of their clean
accuracy (and that clean accuracy is above ``robust_above_chance`` × chance), and the non-robust features keep at most
``nonrobust_loses`` of theirs."""

TABLE2_PAPER_RANGE = "56–97%"
"""The paper's range for Table 2 (non-robust features predicting the adversarial label)."""


def fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}%"


def headline(results: dict) -> dict[str, Any]:
    """The few numbers ``nonrobust demo`` prints: accuracies clean and under each attack, and Table 1's and
    Table 2's rows for the reference attack (PGD-20 when it ran), per protocol."""
    t3 = results.get("table3", {"clean_accuracy": None, "rows": []})
    ref = results["reference_attack"]
    return {"n": results["n"], "clean_accuracy": t3["clean_accuracy"],
            "robust_accuracy": {r["label"]: r["robust_accuracy"] for r in t3["rows"]}, "reference_attack": ref,
            "table1": {p: t["rows"][ref] for p, t in results.get("table1", {}).items()},
            "table2": {p: t["rows"][ref] for p, t in results.get("table2", {}).items()}}


def readings(results: dict) -> dict[str, str]:
    """A short plain-language reading of each result, written from the measured numbers."""
    out: dict[str, str] = {}
    if "table3" in results:
        out["table3"] = _reading_table3(results["table3"])
    ref = results["reference_attack"]
    if "table1" in results:
        out["table1"] = _reading_table1(results["table1"], ref, 1 / len(results["classes"]))
    if "table2" in results:
        out["table2"] = _reading_table2(results["table2"], ref)
    if "table4" in results:
        t4 = {r["attack"]: r for r in results["table4"]["rows"]}
        out["table4"] = (f"Maximising the non-robust gradient norm (NRF) leaves {pct(t4['nrf']['robust_accuracy'])} accuracy, "
                         f"minimising it (NRF2) {pct(t4['nrf2']['robust_accuracy'])}; for the robust channels, RF leaves "
                         f"{pct(t4['rf']['robust_accuracy'])} and RF2 {pct(t4['rf2']['robust_accuracy'])}. "
                         f"All four are unbounded L2 attacks, compared by accuracy at the median L2 size of their successes.")
    if results.get("beta_sweep"):
        sweep = results["beta_sweep"]["rows"]
        first, last = sweep[0], sweep[-1]
        out["beta"] = (f"From β = {first['beta']:g} to β = {last['beta']:g} the mean number of robust channels goes from "
                       f"{first['robust_channels']:.1f} to {last['robust_channels']:.1f} (of "
                       f"{first['robust_channels'] + first['nonrobust_channels']:.0f}). The paper reports fewer robust channels as β grows.")
    if "sigma" in results:
        sg = results["sigma"]
        out["sigma"] = (f"On the first batch ({sg['images']} images), T = {sg['threshold']:.3g}; {sg['robust']:.1f} channels per image "
                        f"have σ² above it (robust) and {sg['nonrobust']:.1f} below (non-robust).")
    if "tsne" in results:
        out["tsne"] = ("Each point is one image's spatially averaged masked features. Separated class clusters in the robust panel "
                       "under attack, and mixed ones in the non-robust panel, are the paper's Fig. 2 pattern.")
    if results.get("featvis"):
        out["featvis"] = ("Images optimised so that their features at the split layer match the input's Z, Z_r or Z_nr (feature "
                          "inversion). Under each, the class the head after the layer predicts from that target.")
    return out


def _reading_table3(t3: dict) -> str:
    rows = {r["attack"]: r for r in t3["rows"]}  # keyed by registered attack, not by display label
    linf = sorted((r for r in t3["rows"] if r["norm"] == "linf"), key=lambda r: r["robust_accuracy"])
    text = [f"The model classifies {pct(t3['clean_accuracy'])} of the {t3['n']} images correctly."]
    if linf:
        eps = linf[0]["eps"]
        text.append(f"Within the L∞ ball of radius {eps:.4f} ({eps * 255:.1f}/255) the strongest attack here is {linf[0]['label']} "
                    f"({pct(linf[0]['robust_accuracy'])} accuracy left); the per-point worst case over all L∞ attacks is "
                    f"{pct(t3['worst_case_linf'])}.")
        if "nrf-linf" in rows and "pgd-20" in rows:
            nrf, pgd = rows["nrf-linf"], rows["pgd-20"]
            d = nrf["robust_accuracy"] - pgd["robust_accuracy"]
            text.append(f"At the same budget and schedule {nrf['label']} leaves {pct(nrf['robust_accuracy'])} against {pgd['label']}'s "
                        f"{pct(pgd['robust_accuracy'])}: it is {'stronger' if d < 0 else 'weaker' if d > 0 else 'as strong'} "
                        f"by {abs(100 * d):.1f} points.")
    if "nrf" in rows and "cw-l2" in rows:
        a, b = rows["nrf"], rows["cw-l2"]
        text.append(f"NRF-L2 and CW-L2 are unbounded: they are compared by accuracy and by the median L2 size of their successful "
                    f"perturbations ({pct(a['robust_accuracy'])} at median L2 {fmt(a['l2_median_fooled'])} for NRF-L2, "
                    f"{pct(b['robust_accuracy'])} at {fmt(b['l2_median_fooled'])} for CW-L2); accuracies of unbounded attacks must "
                    f"not be compared with the L∞ rows.")
    return " ".join(text)


def _reading_table1(table1: dict, ref: str, chance: float) -> str:
    parts = []
    for protocol, t in table1.items():
        c, a = t["rows"]["clean"], t["rows"].get(ref)
        if a is None:
            continue
        # R features at chance keep nothing
        keeps = a["robust"] >= PAPER_PATTERN["robust_keeps"] * c["robust"] and c["robust"] > PAPER_PATTERN["robust_above_chance"] * chance
        collapses = a["nonrobust"] <= PAPER_PATTERN["nonrobust_loses"] * c["nonrobust"]
        verdict = "holds" if keeps and collapses else "holds only in part" if keeps or collapses else "does not hold"
        if t["channels"]["robust"] < 1:
            parts.append(f"Under the {protocol} protocol fewer than one channel per image came out robust "
                         f"({t['channels']['robust']:.2f} of {t['channels']['total']}): Z_r is (almost) all zeros, so its "
                         f"accuracy is that of a near-constant prediction.")
        parts.append(f"Under the {protocol} protocol, with masks from the clean images, the robust features give {pct(c['robust'])} "
                     f"clean and {pct(a['robust'])} under {ref}; the non-robust features {pct(c['nonrobust'])} and "
                     f"{pct(a['nonrobust'])}; the whole layer {pct(c['int'])} and {pct(a['int'])}. The paper's pattern "
                     f"(robust features keep at least {PAPER_PATTERN['robust_keeps']:.0%} of their clean accuracy under attack, "
                     f"non-robust ones lose at least {1 - PAPER_PATTERN['nonrobust_loses']:.0%}) "
                     f"{verdict} here.")
        if "label_control" in t:
            lc = t["label_control"]
            follows = lc["robust_predicts_mask_label"] > lc["robust_predicts_true_label"]
            parts.append(f"Control: with masks made from a random wrong label ŷ, the robust features predict ŷ for "
                         f"{pct(lc['robust_predicts_mask_label'])} of the images and the true label for "
                         f"{pct(lc['robust_predicts_true_label'])}: they follow "
                         f"{'the label the mask was made with, so the robust mask encodes the label' if follows else 'the true label more than the mask label'}"
                         f" (chance is {pct(chance)}).")
    if len(table1) == 2 and all(ref in t["rows"] for t in table1.values()):  # both protocols: compare them
        p = list(table1)
        gap = table1[p[0]]["rows"][ref]["robust"] - table1[p[1]]["rows"][ref]["robust"]
        if gap > 0:
            parts.append(f"The per-image masks of the {p[0]} protocol are chosen with each image's true label; the label-free "
                         f"population masks give {100 * gap:.1f} points less robust-feature accuracy under {ref}, so up to that much "
                         f"of the {p[0]} figure may come from the labels rather than from the features.")
        else:
            parts.append(f"The label-free population masks give {abs(100 * gap):.1f} points more robust-feature accuracy under {ref} "
                         f"than the label-informed per-image masks of the {p[0]} protocol.")
    return " ".join(parts)


def _reading_table2(table2: dict, ref: str) -> str:
    parts = []
    for protocol, t in table2.items():
        r = t["rows"].get(ref)
        if r and r["fooled"]:
            parts.append(f"{protocol}: on the {r['fooled']} points {ref} fooled, the non-robust features of the adversarial image "
                         f"predict the adversarial label for {pct(r['nonrobust_agrees'])} of them and the robust features for "
                         f"{pct(r['robust_agrees'])}.")
    return (" ".join(parts) + f" The paper reports {TABLE2_PAPER_RANGE} for the non-robust features.") if parts else f"{ref} fooled no point."
