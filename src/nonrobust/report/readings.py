"""Plain-language readings of the report's numbers, and the headline the CLI prints."""

from __future__ import annotations

import html
from typing import Any, cast

PAPER_PATTERN = {"robust_keeps": 0.8, "robust_above_chance": 2.0, "nonrobust_loses": 0.5}
"""The thresholds of Table 1's verdict: under attack the robust features keep at least ``robust_keeps`` of their clean
accuracy (and that clean accuracy is above ``robust_above_chance`` × chance), and the non-robust features keep at most
``nonrobust_loses`` of theirs."""



def fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}%"


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """The few numbers ``nonrobust demo`` prints: accuracies clean and under each attack, and Table 1's and
    Table 2's rows for the reference attack (PGD-20 when it ran), per protocol."""
    t3 = results.get("table3", {"clean_accuracy": None, "rows": []})
    ref = results["reference_attack"]
    return {"n": results["n"], "clean_accuracy": t3["clean_accuracy"],
            "robust_accuracy": {r["label"]: r["robust_accuracy"] for r in t3["rows"]}, "reference_attack": ref,
            "table1": {p: t["rows"][ref] for p, t in results.get("table1", {}).items()},
            "table2": {p: t["rows"][ref] for p, t in results.get("table2", {}).items()}}


def ci(v: float | None, n: int | None) -> str:
    """``38.7% [35.7–41.8]``: a share with its 95% Wilson interval over ``n`` images."""
    from ..stats import wilson

    if v is None or not n:
        return pct(v)
    lo, hi = cast("tuple[float, float]", wilson(round(v * n), n))  # n is an image count, not 0
    return f"{100 * v:.1f}% [{100 * lo:.1f}–{100 * hi:.1f}]"


def _pair(table: dict[str, Any], a: str, b: str) -> dict[str, Any] | None:
    """The paired test of rows labelled ``a`` and ``b``, oriented so that ``a_only`` counts images that survive ``a`` only."""
    for pr in table.get("paired", []):
        if (pr["a"], pr["b"]) == (a, b):
            return cast("dict[str, Any]", pr)
        if (pr["a"], pr["b"]) == (b, a):
            return {**pr, "a": a, "b": b, "a_only": pr["b_only"], "b_only": pr["a_only"]}
    return None


def versus(table: dict[str, Any], a: dict[str, Any], b: dict[str, Any]) -> str:
    """Which of attacks ``a`` and ``b`` (rows of one table, the same images) is stronger, by an exact McNemar test."""
    from ..stats import SIGNIFICANCE

    pr = _pair(table, a["label"], b["label"])
    if pr is None:
        return "(no paired test)"
    counts = f"{pr['a_only']} images survive only {a['label']}, {pr['b_only']} only {b['label']}"
    if pr["p"] < SIGNIFICANCE:
        stronger = b if pr["a_only"] > pr["b_only"] else a
        return f"{stronger['label']} is stronger (exact McNemar p = {pr['p']:.2g}: {counts})"
    return f"the difference is not significant (exact McNemar p = {pr['p']:.2g}: {counts})"


def readings(results: dict[str, Any]) -> dict[str, str]:
    """A short plain-language reading of each result, written from the measured numbers."""
    out: dict[str, str] = {}
    if "table3" in results:
        out["table3"] = _reading_table3(results["table3"])
    ref = results["reference_attack"]
    chance = 1 / len(results["classes"])
    if "table1" in results:
        out["table1"] = _reading_table1(results["table1"], ref, chance)
        if results.get("sanity"):  # a figure a control explains away is read with that control
            out["table1"] += " " + sanity_summary(results["sanity"], ref, chance)
    if "table2" in results:
        out["table2"] = _reading_table2(results["table2"], ref, _paper_table2(results))
    if results.get("sanity"):
        out.update({f"sanity_{k}": v for k, v in sanity_readings(results["sanity"], ref, chance).items()})
    if "table4" in results:
        t4 = results["table4"]
        r = {row["attack"]: row for row in t4["rows"]}
        n = t4["n"]
        out["table4"] = (f"On {n} images, maximising the non-robust gradient norm ({r['nrf']['label']}) leaves "
                         f"{ci(r['nrf']['robust_accuracy'], n)} accuracy and minimising it ({r['nrf2']['label']}) "
                         f"{ci(r['nrf2']['robust_accuracy'], n)}: {versus(t4, r['nrf'], r['nrf2'])}. For the robust channels, "
                         f"{r['rf']['label']} leaves {ci(r['rf']['robust_accuracy'], n)} and {r['rf2']['label']} "
                         f"{ci(r['rf2']['robust_accuracy'], n)}: {versus(t4, r['rf'], r['rf2'])}. All four are unbounded L2 attacks, "
                         f"so their sizes matter as much as their accuracies (median L2 of the images each turned wrong: "
                         + ", ".join(f"{row['label']} {fmt(row['l2_median_fooled'])} over {row['fooled']}" for row in t4["rows"]) + ").")
    if results.get("beta_sweep"):
        sweep = results["beta_sweep"]["rows"]
        first, last = sweep[0], sweep[-1]
        out["beta"] = (f"From β = {first['beta']:g} to β = {last['beta']:g} the mean number of robust channels per image goes from "
                       f"{first['robust_channels']:.2f} to {last['robust_channels']:.2f} (of "
                       f"{first['robust_channels'] + first['nonrobust_channels']:.0f}), on the first {results['beta_sweep']['n']} "
                       f"images. The paper reports fewer robust channels as β grows.")
    if "sigma" in results:
        sg = results["sigma"]
        t = "T is each image's own σ_z² per channel" if sg["threshold"] is None else f"T = {sg['threshold']:.3g}"
        out["sigma"] = (f"On the first batch ({sg['images']} images), {t}; {sg['robust']:.2f} channels per image "
                        f"have σ² above it (robust) and {sg['nonrobust']:.2f} below (non-robust).")
    if "tsne" in results:
        out["tsne"] = _reading_tsne(results["tsne"], chance)
    if results.get("featvis"):
        out["featvis"] = ("Images optimised so that their features at the split layer match the input's Z, Z_r or Z_nr (feature "
                          "inversion). Under each, the class the head after the layer predicts from that target.")
    return out


def label_control_verdict(t: dict[str, Any]) -> tuple[str, float]:
    """What Table 1's label control (masks from a seeded wrong label ŷ) says, by an exact sign test of "Z_r predicts ŷ"
    against "Z_r predicts y" on the same images: ``("mask label" | "true label" | "neither", p)``."""
    from ..stats import SIGNIFICANCE, mcnemar

    lc, n = t["label_control"], t["n"]
    k_mask, k_true = round(lc["robust_predicts_mask_label"] * n), round(lc["robust_predicts_true_label"] * n)
    p_value = mcnemar(k_mask, k_true)  # the two outcomes exclude each other on every image: a sign test
    return ("neither" if p_value >= SIGNIFICANCE else "mask label" if k_mask > k_true else "true label"), p_value


def label_caveat(t: dict[str, Any], chance: float) -> str:
    """What a per-image Table 1's own label control says next to its Z_r (``""`` without one): every place that shows
    Z_r's accuracy says it (the report's summary, Table 1's reading, ``split``'s printout)."""
    if "label_control" not in t:
        return ""
    verdict, p_value = label_control_verdict(t)
    share = pct(t["label_control"]["robust_predicts_mask_label"])
    if verdict == "mask label":
        return (f"; but its own label control explains it away: masks made from a wrong label make Z_r predict that label for {share} "
                f"of the images (p = {p_value:.2g}), so Z_r's accuracy is the label read back through the mask")
    return f"; its label control: masks from a wrong label make Z_r predict that label for {share} (chance {pct(chance)})"


def _verdict(clean: dict[str, Any], attacked: dict[str, Any], chance: float) -> str:
    """Whether Table 1's paper pattern holds for one protocol: ``holds``, ``holds only in part`` or ``does not hold``."""
    keeps = attacked["robust"] >= PAPER_PATTERN["robust_keeps"] * clean["robust"] and clean["robust"] > PAPER_PATTERN["robust_above_chance"] * chance
    collapses = attacked["nonrobust"] <= PAPER_PATTERN["nonrobust_loses"] * clean["nonrobust"]
    return "holds" if keeps and collapses else "holds only in part" if keeps or collapses else "does not hold"


def _reading_table3(t3: dict[str, Any]) -> str:
    rows = {r["attack"]: r for r in t3["rows"]}  # keyed by registered attack, not by display label
    n = t3["n"]
    linf = sorted((r for r in t3["rows"] if r["norm"] == "linf"), key=lambda r: r["robust_accuracy"])
    text = [f"The model classifies {ci(t3['clean_accuracy'], n)} of the {n} images correctly (95% Wilson intervals in brackets)."]
    if linf:
        eps = linf[0]["eps"]
        text.append(f"Within the L∞ ball of radius {eps:.4f} ({eps * 255:.1f}/255) the lowest accuracy is {linf[0]['label']}'s "
                    f"({ci(linf[0]['robust_accuracy'], n)})"
                    + (f"; against the next, {linf[1]['label']} ({pct(linf[1]['robust_accuracy'])}), {versus(t3, linf[0], linf[1])}"
                       if len(linf) > 1 else "")
                    + f". The per-point worst case over all L∞ attacks is {pct(t3['worst_case_linf'])}.")
        if "nrf-linf" in rows and "pgd-20" in rows:
            nrf, pgd = rows["nrf-linf"], rows["pgd-20"]
            text.append(f"At the same budget and schedule {nrf['label']} leaves {pct(nrf['robust_accuracy'])} against "
                        f"{pgd['label']}'s {pct(pgd['robust_accuracy'])}: {versus(t3, nrf, pgd)}.")
    if "nrf" in rows and "cw-l2" in rows:
        a, b = rows["nrf"], rows["cw-l2"]
        text.append(f"NRF-L2 and CW-L2 are unbounded: they are compared by accuracy and by the median L2 size of their successful "
                    f"perturbations ({pct(a['robust_accuracy'])} at median L2 {fmt(a['l2_median_fooled'])} for NRF-L2, "
                    f"{pct(b['robust_accuracy'])} at {fmt(b['l2_median_fooled'])} for CW-L2); accuracies of unbounded attacks must "
                    f"not be compared with the L∞ rows.")
    return " ".join(text)


def _reading_table1(table1: dict[str, Any], ref: str, chance: float) -> str:
    """One comparative reading of Table 1 over the protocols shown."""
    shown = {p: t for p, t in table1.items() if ref in t["rows"]}
    if not shown:
        return ""
    names = list(shown)

    def each(part: str, row: str) -> str:
        return ", ".join(f"{ci(t['rows'][row][part], t['n'])} ({p})" for p, t in shown.items())

    parts = [f"With masks from the clean images, the robust features Z_r classify {each('robust', 'clean')} of the clean images "
             f"and {each('robust', ref)} under {ref}; the non-robust features Z_nr {each('nonrobust', 'clean')} and "
             f"{each('nonrobust', ref)}; the whole layer {ci(shown[names[0]]['rows']['clean']['int'], shown[names[0]]['n'])} and "
             f"{ci(shown[names[0]]['rows'][ref]['int'], shown[names[0]]['n'])}."]
    verdicts = {p: _verdict(t["rows"]["clean"], t["rows"][ref], chance) for p, t in shown.items()}
    rule = (f"robust features keep at least {PAPER_PATTERN['robust_keeps']:.0%} of their clean accuracy under attack, "
            f"non-robust ones lose at least {1 - PAPER_PATTERN['nonrobust_loses']:.0%}")
    if len(set(verdicts.values())) == 1:
        parts.append(f"The paper's pattern ({rule}) {next(iter(verdicts.values()))} under "
                     f"{'both protocols' if len(verdicts) == 2 else 'the ' + names[0] + ' protocol'}.")
    else:
        parts.append(f"The paper's pattern ({rule}) " + "; ".join(f"{v} under {p}" for p, v in verdicts.items()) + ".")
    for p, t in shown.items():
        if t["channels"]["robust"] < 1:
            parts.append(f"Under {p}, fewer than one channel per image came out robust ({t['channels']['robust']:.2f} of "
                         f"{t['channels']['total']}): Z_r is (almost) all zeros, so its accuracy is that of a near-constant prediction.")
        if "label_control" in t:
            lc = t["label_control"]
            n = t["n"]
            which, p_value = label_control_verdict(t)
            verdict = {"neither": "neither label significantly more often than the other",
                       "mask label": "the label the mask was made with, so the robust mask encodes the label and the Z_r figures "
                                     "above are that label read back, not features that survive the attack",
                       "true label": "the true label more than the mask's label, so the robust mask carries features of the image"}[which]
            parts.append(f"Control ({p}): with masks made from a random wrong label ŷ, Z_r predicts ŷ for "
                         f"{ci(lc['robust_predicts_mask_label'], n)} of the images and the true label for "
                         f"{ci(lc['robust_predicts_true_label'], n)} (chance {pct(chance)}): it follows {verdict} "
                         f"(exact sign test, p = {p_value:.2g}).")
    if len(shown) == 2:  # both protocols: compare them
        gap = shown[names[0]]["rows"][ref]["robust"] - shown[names[1]]["rows"][ref]["robust"]
        if gap > 0:
            parts.append(f"The per-image masks of the {names[0]} protocol are chosen with each image's true label; the label-free "
                         f"population masks give {100 * gap:.1f} points less robust-feature accuracy under {ref}, so up to that much "
                         f"of the {names[0]} figure may come from the labels rather than from the features.")
        else:
            parts.append(f"The label-free population masks give {abs(100 * gap):.1f} points more robust-feature accuracy under {ref} "
                         f"than the label-informed per-image masks of the {names[0]} protocol.")
    return " ".join(parts)


def _paper_table2(results: dict[str, Any]) -> str:
    """What the paper's Table 2 says for this run's attack, data set and network (else its range), from :mod:`nonrobust.paper`."""
    from ..paper import table2_figure, table2_range

    attack = next((r["attack"] for r in results.get("table3", {}).get("rows", []) if r["label"] == results["reference_attack"]), "")
    data = str(results["data"]["name"]).removesuffix("-slice")
    figure = table2_figure(attack, data, str(results["arch"]))
    spread = f"its Table 2 spans {table2_range()} over attacks, data sets and networks"
    return f"the paper reports {figure} for this attack, data set and network ({spread})" if figure else f"the paper: {spread}"


def _reading_table2(table2: dict[str, Any], ref: str, paper: str) -> str:
    parts = []
    for protocol, t in table2.items():
        r = t["rows"].get(ref)
        if r and r["fooled"]:
            parts.append(f"{protocol}: on the {r['fooled']} images misclassified under {ref}, the non-robust features of the "
                         f"adversarial image predict the adversarial label for {ci(r['nonrobust_agrees'], r['fooled'])} of them and "
                         f"the robust features for {ci(r['robust_agrees'], r['fooled'])}.")
    return (" ".join(parts) + f" For the non-robust features {paper}.") if parts else f"{ref} misclassified no image."


def _reading_tsne(tsne: dict[str, Any], chance: float) -> str:
    sep = tsne.get("separation")
    if not sep:
        return ("Each point is one image's spatially averaged masked features. Separated class clusters in the robust panel "
                "under attack, and mixed ones in the non-robust panel, are the paper's Fig. 2 pattern.")
    k = next(iter(sep.values()))["k"]
    acc = {key: v["knn_accuracy"] for key, v in sep.items()}
    pattern = _verdict({"robust": acc["clean/robust"], "nonrobust": acc["clean/nonrobust"]},
                       {"robust": acc["attack/robust"], "nonrobust": acc["attack/nonrobust"]}, chance)
    return (f"Each point is one image's spatially averaged masked features. Class separation on each 2-D embedding, as the "
            f"leave-one-out {k}-nearest-neighbour accuracy (chance {pct(chance)}; 100% for separated clusters): robust features "
            f"{pct(acc['clean/robust'])} clean and {pct(acc['attack/robust'])} under {tsne['attack']}; non-robust features "
            f"{pct(acc['clean/nonrobust'])} and {pct(acc['attack/nonrobust'])}. The paper's Fig. 2 pattern (robust clusters stay "
            f"separated under attack, non-robust ones mix; the thresholds of Table 1's verdict) {pattern} here.")


def summary(results: dict[str, Any]) -> list[str]:
    """The report's headline as a short list, verdicts first: Table 1's pattern per protocol, the controls, Table 2,
    then what was run and how accurate the model is. Every item is measured; at most seven, the run last."""
    ref = results["reference_attack"]
    chance = 1 / len(results["classes"])
    s = results["settings"]
    out = []
    if "table1" in results:
        out += [f"Table 1's pattern (robust features survive the attack, non-robust ones do not) {_verdict(t['rows']['clean'], t['rows'][ref], chance)} "
                f"under the {p} protocol: Z_r {pct(t['rows'][ref]['robust'])} under {ref}, {t['channels']['robust']:.2f} robust channels "
                f"per image{label_caveat(t, chance)}." for p, t in results["table1"].items() if ref in t["rows"]]
        if results.get("sanity"):
            out.append(sanity_summary(results["sanity"], ref, chance))
        for p, t in results["table1"].items():
            if "stability" in t and t["stability"]["jaccard_nonempty_pairs"] is not None:
                out.append(f"Stability ({p}): {t['stability']['seeds']} noise seeds agree on {t['stability']['jaccard_nonempty_pairs']:.2f} of "
                           "an image's robust channels (mean Jaccard over pairs with any).")
    if "table2" in results:
        rows = [(p, t["rows"][ref]) for p, t in results["table2"].items() if ref in t["rows"] and t["rows"][ref]["fooled"]]
        if rows:
            out.append(f"Table 2: on the images misclassified under {ref}, the non-robust features predict the adversarial label for "
                       + ", ".join(f"{pct(r['nonrobust_agrees'])} ({p})" for p, r in rows) + f"; {_paper_table2(results)}.")
    run = (f"Run: {results['arch']} ({s['model']}), split at {results['layer']}, on {results['n']} {results['data']['name']} "
           f"{results['data']['split']} images")
    t3 = results.get("table3")
    if t3:
        linf = sorted((r for r in t3["rows"] if r["norm"] == "linf"), key=lambda r: r["robust_accuracy"])
        run += (f"; clean accuracy {ci(t3['clean_accuracy'], t3['n'])}"
                + (f", the lowest under an L∞ attack {linf[0]['label']}'s, {ci(linf[0]['robust_accuracy'], t3['n'])}" if linf else ""))
    return [*out[:6], run + "."]


def _better(pair: dict[str, Any], a: str, b: str) -> str:
    """``a`` against ``b`` by an exact McNemar test (``pair`` from :func:`nonrobust.stats.paired_counts`, ``a_only`` counting ``a``):
    ``"a is higher than b (exact McNemar p = …: …)"``, or that they do not differ significantly."""
    from ..stats import SIGNIFICANCE

    images = "image" if pair["a_only"] == 1 else "images"
    counts = f"exact McNemar p = {pair['p']:.2g}: {pair['a_only']} {images} right only under {a}, {pair['b_only']} only under {b}"
    if pair["p"] >= SIGNIFICANCE:
        return f"{a} and {b} do not differ significantly ({counts})"
    return f"{a} is {'higher' if pair['a_only'] > pair['b_only'] else 'lower'} than {b} ({counts})"


def sanity_readings(sanity: dict[str, Any], ref: str, chance: float) -> dict[str, str]:
    """One verdict sentence (or a few) per sanity check, from its numbers; keys are :data:`nonrobust.sanity.CHECKS`."""
    from ..stats import SIGNIFICANCE

    out: dict[str, str] = {}
    n = sanity["n"]
    ib = sanity["ib"]["rows"]
    inp = ref if ref in ib else "clean"
    rs = sanity["random_subset"]
    gap = ib[inp]["robust"] - rs["rows"][inp]["robust"]
    pop, rpop = rs["population_split"]["rows"][inp], rs["population"]["rows"][inp]
    out["random_subset"] = (
        f"Under {inp}, the IB split's Z_r classifies {ci(ib[inp]['robust'], n)} and a uniformly random mask of the same size per image "
        f"{ci(rs['rows'][inp]['robust'], n)}: {_better(rs['versus'][inp]['robust'], 'the random mask', 'the IB mask')}, "
        f"so the bottleneck's choice of channels {'beats' if gap > 0 and rs['versus'][inp]['robust']['p'] < SIGNIFICANCE else 'does not beat'} "
        f"chance (difference {100 * gap:+.1f} points). Label-free: the population split's Z_r {ci(pop['robust'], n)} against a random mask of its "
        f"size {ci(rpop['robust'], n)}: {_better(rs['population']['versus'][inp]['robust'], 'the random mask', 'the population split')}.")
    lo = sanity["label_oracle"]
    true, wrong, ib_wrong = lo["true"]["rows"][inp], lo["wrong"]["predicts_mask_label"]["clean"], lo["ib_wrong"]["predicts_mask_label"]["clean"]
    pair = lo["true"]["versus"][inp]["robust"]
    verdict = ("the bottleneck adds nothing measurable to a label-conditioned choice" if pair["p"] >= SIGNIFICANCE
               else "the label alone, with no bottleneck, gives more" if pair["a_only"] > pair["b_only"]
               else "the bottleneck adds to what the label alone gives")
    out["label_oracle"] = (
        f"A choice with no bottleneck at all, per image the IB mask's number of channels contributing most (gradient × activation) to "
        f"the true label's logit, gives Z_r {ci(true['robust'], n)} under {inp} against the IB split's {pct(ib[inp]['robust'])}: "
        f"{_better(pair, 'the oracle', 'the IB mask')}, so {verdict}. Made with the label control's wrong label ŷ, the "
        f"oracle makes Z_r predict ŷ for {ci(wrong['robust'], n)} of the clean images, the wrong-label IB masks for "
        f"{ci(ib_wrong['robust'], n)}: {_better(lo['wrong']['predicts_mask_label_versus']['clean']['robust'], 'the oracle', 'the IB')}.")
    mr = sanity.get("model_randomisation")
    if mr and mr["stages"]:
        m = mr["n"]
        head = mr["stages"][0]
        cascade = [st for st in mr["stages"] if st["variant"] == "cascading"]
        last = cascade[-1]
        # a stage whose whole layer is at chance while its Z_r is not: the mask alone carries the label
        reading_back = [st for st in mr["stages"] if st["rows"]["clean"]["int"] <= 2 * chance < st["rows"]["clean"]["robust"]]
        best = max(reading_back or mr["stages"], key=lambda st: st["rows"]["clean"]["robust"])
        out["model_randomisation"] = (
            f"With the head re-initialised (the whole layer now classifies {pct(head['rows']['clean']['int'])} of the clean images), the "
            f"split rerun with the true labels gives Z_r {ci(head['rows']['clean']['robust'], m)} clean and "
            f"{ci(head['rows'].get(inp, head['rows']['clean'])['robust'], m)} under {inp} (transfer), with "
            f"{head['channels']['robust']:.1f} robust channels per image and a mean Jaccard overlap of {head['jaccard_mean']:.2f} with the "
            f"trained model's masks; with every layer re-initialised ({last['name']}), Z_r {ci(last['rows']['clean']['robust'], m)} clean, "
            f"{last['channels']['robust']:.1f} channels, Jaccard {last['jaccard_mean']:.2f}. "
            + (f"In {len(reading_back)} of {len(mr['stages'])} stages the re-initialised model itself classifies at most twice chance "
               f"({pct(2 * chance)}) of the clean images while its Z_r classifies more (best: {best['name']}, Z_r "
               f"{pct(best['rows']['clean']['robust'])}): a split whose Z_r is accurate when the weights that "
               "made the features are destroyed reads the label back through the mask, not a property of the trained features."
               if reading_back else
               "In no stage is Z_r above twice chance once the model itself is at chance: the split changes when the trained "
               "weights are destroyed, as a split that means something about them must.")
            + " Independent stages (one block alone): "
            + "; ".join(f"{st['name']}: Z_r {pct(st['rows']['clean']['robust'])} clean" for st in mr["stages"] if st["variant"] == "independent")
            + ".")
    ad = sanity.get("adaptive")
    if ad:
        m = ad["n"]
        parts = []
        for kind, words in (("population", "the label-free population mask"), ("per_image", "each image's mask, held at its clean value")):
            for label, r in ad[kind]["rows"].items():
                parts.append(f"with {words}, Z_r keeps {ci(r['transfer'], m)} under the full model's {ad['transfer_of'][label]} "
                             f"(transfer) and {ci(r['adaptive'], m)} under {label} against its own path "
                             f"({_better(r['paired'], 'transfer', 'the adaptive attack')}; worst case of the two per image "
                             f"{pct(r['worst_case'])})")
        keeps = {k: all(r["worst_case"] >= PAPER_PATTERN["robust_keeps"] * ad[k]["clean"] for r in ad[k]["rows"].values())
                 for k in ("population", "per_image")}
        worst = {k: min(r["worst_case"] for r in ad[k]["rows"].values()) for k in keeps}
        verdicts: list[str] = []
        for kind, words in (("per_image", "each image's own mask"), ("population", "the label-free population mask")):
            numbers = f"({pct(ad[kind]['clean'])} → {pct(worst[kind])}, the worst case over the attacks per image)"
            if ad[kind]["clean"] <= PAPER_PATTERN["robust_above_chance"] * chance:
                verdicts.append(f"with {words} Z_r is near chance even on clean images {numbers}")
                keeps[kind] = False
            else:
                how = "keeps" if keeps[kind] else "does not keep"
                verdicts.append(f"with {words} Z_r {how} {PAPER_PATTERN['robust_keeps']:.0%} of its clean accuracy {numbers}")
        caveat = (" The per-image mask is made with the image's true label and held fixed, so the attack cannot remove the label it "
                  "carries: read it with the label control and the label oracle, which show that such masks encode the label; a deployed "
                  "classifier has no label to make them with." if keeps["per_image"] else "")
        out["adaptive"] = ("Attacking Z_r itself, x ↦ f_l+(i_r · f_l(x)), at the same budget (the per-image case is the attacker who "
                           "knows the mask): " + "; ".join(parts) + ". Against an attacker who knows the mask, " + "; ".join(verdicts)
                           + "." + caveat)
    layers = sanity.get("layers")
    if layers:
        bits = []
        for layer, r in layers.items():
            pi, po = r["per_image"], r["population"]
            row = pi["rows"].get(inp, pi["rows"]["clean"])
            lc = pi.get("label_control", {})
            bits.append(f"{layer} ({'×'.join(map(str, r['shape']))}): Z_r {pct(pi['rows']['clean']['robust'])} clean and "
                        f"{pct(row['robust'])} under {inp} with {pi['channels']['robust']:.1f} robust channels per image, "
                        f"following a wrong label {pct(lc.get('robust_predicts_mask_label'))}; population split Z_r "
                        f"{pct(po['rows'].get(inp, po['rows']['clean'])['robust'])} under {inp}")
        out["layers"] = "Per layer (per-image protocol, its label control, and the population split): " + "; ".join(bits) + "."
    return out


def sanity_summary(sanity: dict[str, Any], ref: str, chance: float) -> str:
    """The controls in one summary item: random mask, label oracle and the adaptive attacker beside the IB split's Z_r."""
    ib = sanity["ib"]["rows"]
    inp = ref if ref in ib else "clean"
    parts = [f"Controls (under {inp}): IB split's Z_r {pct(ib[inp]['robust'])}, a random mask of its size "
             f"{pct(sanity['random_subset']['rows'][inp]['robust'])}, the label oracle (no bottleneck) "
             f"{pct(sanity['label_oracle']['true']['rows'][inp]['robust'])}"]
    ad = sanity.get("adaptive")
    if ad and ad["per_image"]["rows"]:
        label, r = min(ad["per_image"]["rows"].items(), key=lambda kv: kv[1]["adaptive"])
        parts.append(f"against an attacker who knows each image's mask ({label}) Z_r keeps {pct(r['adaptive'])} "
                     f"(transfer: {pct(r['transfer'])}; worst case of the two {pct(r['worst_case'])})")
    mr = sanity.get("model_randomisation")
    if mr and mr["stages"]:
        parts.append(f"with the head re-initialised Z_r still classifies {pct(mr['stages'][0]['rows']['clean']['robust'])} of the clean images")
    return "; ".join(parts) + "."
