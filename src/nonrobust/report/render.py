"""Writing the report: ``results.json``, one CSV per table, the figures, and the self-contained ``report.html``."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from typing import TYPE_CHECKING, Any, Callable

from .._version import __version__
from ..attacks import CHANGE_FLOOR
from ..bottleneck import describe_agreement
from ..io import atomic_write, load_tensors, write_json
from .readings import ci, fmt, pct, summary

if TYPE_CHECKING:
    from .context import Context


def write_outputs(ctx: Context, results: dict[str, Any]) -> None:
    from .. import figures

    out = ctx.out
    figs: dict[str, bytes] = {}
    if "table1" in results:
        figs["table1"] = figures.table1_figure(results["table1"])
    if "tsne" in results:
        t, _ = load_tensors(ctx.steps.file("tsne"))
        figs["tsne"] = figures.tsne_figure({k: v for k, v in t.items() if k != "y"}, t["y"].long(), ctx.ds.classes, "attack",
                                           attack_label=results["tsne"]["attack"])
    if "beta_sweep" in results:
        figs["beta"] = figures.beta_figure(results["beta_sweep"]["rows"], results["beta_sweep"]["attack"])
    if "sigma" in results:
        sg, _ = load_tensors(ctx.steps.file("sigma"))
        figs["sigma"] = figures.sigma_figure(sg["sigma"], sg["var_z"], results["sigma"]["threshold"], sg["robust"].bool())
    if results.get("featvis"):
        fv, _ = load_tensors(ctx.steps.file("featvis"))
        figs["featvis"] = figures.featvis_figure(fv["inputs"], fv["visuals"], results["featvis"]["captions"], results["featvis"]["rows"])
    (out / "figures").mkdir(exist_ok=True)
    for name, png in figs.items():
        with atomic_write(out / "figures" / f"{name}.png") as fh:
            fh.write(png)
    for name, (header, rows) in _csv_tables(results).items():
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(header)
        w.writerows(rows)
        with atomic_write(out / f"{name}.csv", "w") as fh:
            fh.write(buf.getvalue())
    write_json(out / "results.json", results)
    with atomic_write(out / "report.html", "w") as fh:
        fh.write(render_html(results, figs))


def _csv_tables(results: dict[str, Any]) -> dict[str, tuple[list[str], list[list[Any]]]]:
    """One CSV per table present in ``results``: name -> (header, rows)."""
    attack_cols = ["label", "attack", "norm", "eps", "clean_accuracy", "robust_accuracy", "success_rate", "linf_max", "l2_median",
                   "l2_max", "changed", "l2_median_changed", "fooled", "l2_median_fooled", "nan", "seconds"]
    out: dict[str, tuple[list[str], list[list[Any]]]] = {}
    for name in ("table3", "table4"):
        if name in results:
            out[name] = (attack_cols, [[r[c] for c in attack_cols] for r in results[name]["rows"]])
    if "table1" in results:
        out["table1"] = (["protocol", "input", "int", "robust", "nonrobust"],
                         [[p, k, r["int"], r["robust"], r["nonrobust"]] for p, t in results["table1"].items() for k, r in t["rows"].items()])
    if "table2" in results:
        out["table2"] = (["protocol", "attack", "misclassified", "nonrobust_agrees", "robust_agrees"],
                         [[p, k, r["fooled"], r["nonrobust_agrees"], r["robust_agrees"]] for p, t in results["table2"].items()
                          for k, r in t["rows"].items()])
    if "beta_sweep" in results:
        out["beta_sweep"] = (["beta", "input", "robust_channels", "nonrobust_channels", "robust_accuracy", "nonrobust_accuracy"],
                             [[r["beta"], k, r["robust_channels"], r["nonrobust_channels"], v["robust"], v["nonrobust"]]
                              for r in results["beta_sweep"]["rows"] for k, v in r["rows"].items()])
    return out


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.25em .55em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.reading{background:#f7f9fc;border-left:4px solid #1f77b4;padding:.5em .8em}
.note{background:#fff8e6;border-left:4px solid #e6a700;padding:.5em .8em}img{max-width:100%}pre{background:#f6f6f6;padding:.8em;overflow:auto;font-size:.8em}
.small{color:#666;font-size:.85em}"""


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c if isinstance(c, _Raw) else fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class _Raw(str):
    """Already-escaped HTML for a table cell."""


def _p(v: float | None) -> _Raw:
    return _Raw(html.escape(pct(v)))


def _c(v: float | None, n: int | None) -> _Raw:
    """A share with its 95% Wilson interval over ``n`` images."""
    return _Raw(html.escape(ci(v, n)))


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _reading(results: dict[str, Any], key: str) -> str:
    text = results["readings"].get(key)
    return f'<p class="reading">{html.escape(text)}</p>' if text else ""


def _attack_rows(table: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for r in table["rows"]:
        budget = f"L∞ ≤ {r['eps']:.4f} ({r['eps'] * 255:.1f}/255)" if r["norm"] == "linf" else "L2, unbounded"
        rows.append([r["label"], budget, _c(r["robust_accuracy"], table["n"]), _p(r["success_rate"]), r["linf_max"],
                     r.get("changed"), r.get("l2_median_changed"), r["fooled"], r["l2_median_fooled"], r["l2_max"], r["nan"],
                     f"[{r['min']:.3g}, {r['max']:.3g}]", r["seconds"]])
    return rows


_ATTACK_HEADER = ["attack", "threat model", "accuracy [95% CI]", "success rate", "L∞ max", "changed images", "L2 median (changed)",
                  "turned wrong", "L2 median (turned wrong)", "L2 max", "NaN", "value range", "seconds"]

WORDS = (("turned wrong", "an image the model classifies correctly, whose adversarial version it classifies wrongly (Tables 3, 4)"),
         ("misclassified under attack", "an adversarial image the model classifies wrongly, whether or not it was right on the clean "
                                        "image (Table 2, as in the paper)"),
         ("changed images", f"images the attack changed beyond rounding (L∞ size above {CHANGE_FLOOR:g}); an attack that stops early "
                            "leaves the others as they were, and float round trips move them by about 1e-7, which is not a change"),
         ("accuracy [95% CI]", "the share of all images classified correctly both clean and attacked, with its 95% Wilson interval"),
         ("stronger", "said of one attack against another on the same images only when an exact McNemar test gives p < 0.05"))
"""The report's words with more than one possible meaning, each defined once at the top of the page."""


def _paired(table: dict[str, Any]) -> str:
    if not table.get("paired"):
        return ""
    rows = [[pr["a"], pr["b"], pr["a_only"], pr["b_only"], f"{pr['p']:.3g}"] for pr in table["paired"]]
    return ("<details><summary>Paired comparisons (exact McNemar test on the same images)</summary>"
            + _table(["attack A", "attack B", "survive only A", "survive only B", "p"], rows) + "</details>")


def _arch_note(model: str, arch: str) -> str:
    """`` (arch)`` after the model's name, unless the name already says it (a user's ``file.py:function`` model)."""
    return "" if arch in model or model in arch else f" ({html.escape(arch)})"


def render_html(results: dict[str, Any], figs: dict[str, bytes]) -> str:
    """The self-contained report page (no scripts, no external resources)."""
    s = results["settings"]
    e = results["environment"]
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>nonrobust report — {html.escape(str(s['model']))}</title>"
             f"<style>{_CSS}</style></head><body>",
             "<h1>Robust and non-robust features: report</h1>",
             f"<p>Model <b>{html.escape(str(s['model']))}</b>{_arch_note(str(s['model']), str(results['arch']))}, split at layer "
             f"<code>{html.escape(results['layer'])}</code>; data <b>{html.escape(results['data']['name'])}</b> "
             f"({html.escape(results['data']['split'])} split, {results['n']} of {results['data']['n_available']} images, shape "
             f"{results['data']['input_shape']}); seed {s['seed']}. Method: Kim, Lee, Ro, <i>Distilling Robust and Non-Robust Features "
             f"in Adversarial Examples by Information Bottleneck</i>, NeurIPS 2021. Total wall time {results['wall_seconds']:.0f} s.</p>"]
    parts.append('<div class="reading"><b>Summary</b><ul>' + "".join(f"<li>{html.escape(x)}</li>" for x in summary(results)) + "</ul></div>")
    parts.append("<details><summary>Words used on this page</summary><ul>"
                 + "".join(f"<li><b>{html.escape(w)}</b>: {html.escape(d)}</li>" for w, d in WORDS) + "</ul></details>")
    if results["data"].get("provenance"):
        parts.append(f'<p class="note">The data: {html.escape(results["data"]["provenance"])}.</p>')
    if s["trimmed"]:
        parts.append('<div class="note"><b>This run was trimmed</b> to finish quickly:<ul>'
                     + "".join(f"<li>{html.escape(t)}</li>" for t in s["trimmed"]) + "</ul>Run the full analysis for publishable numbers.</div>")
    for note in results["notes"]:
        parts.append(f'<p class="note">{html.escape(note)}</p>')
    for section, render in _SECTION_HTML.items():
        if results.get(section):
            parts += render(results, figs)
    if results.get("model_metrics"):
        parts.append("<h2>The model's recorded measurements</h2>")
        parts.append(f"<details><summary>as stored in the checkpoint</summary><pre>"
                     f"{html.escape(json.dumps(results['model_metrics'], indent=1, default=str, ensure_ascii=False))}</pre></details>")
    parts.append("<h2>Steps and wall time</h2>")
    parts.append(_table(["step", "seconds", "this run"], [[k, v["seconds"], "reused" if v["reused"] else "computed"]
                                                          for k, v in results["steps"].items()]))
    parts.append("<h2>Settings and environment</h2>")
    parts.append(f"<details><summary>every setting of this run, and the machine</summary><pre>"
                 f"{html.escape(json.dumps({'settings': s, 'environment': e}, indent=1, default=str, ensure_ascii=False))}</pre></details>")
    parts.append(f"<p class=\"small\">Written by nonrobust {html.escape(__version__)}.</p></body></html>")
    return "\n".join(parts)


def _html_table3(results: dict[str, Any], figs: dict[str, Any]) -> list[str]:
    t3 = results["table3"]
    return ["<h2>Table 3 — accuracy under attack</h2>", _table(_ATTACK_HEADER, _attack_rows(t3)),
            f"<p class=\"small\">Clean accuracy {html.escape(ci(t3['clean_accuracy'], t3['n']))} of {t3['n']} images; per-point "
            f"worst case over the L∞ attacks {pct(t3['worst_case_linf'])}. Perturbation sizes are measured on the images each attack "
            f"changed and on those it turned wrong (medians over all images are in table3.csv).{_autoattack_note(t3)}</p>",
            _paired(t3), _reading(results, "table3")]


def _autoattack_note(table: dict[str, Any]) -> str:
    """Why an AutoAttack-backed row's "changed" sizes do not compare with PGD's, when the table has such a row."""
    from ..attacks import ATTACKS, AutoAttackRunner

    labels = [r["label"] for r in table["rows"] if r.get("attack") in ATTACKS and ATTACKS[r["attack"]].factory is AutoAttackRunner]
    if not labels:
        return ""
    return (f" {', '.join(labels)} return{'s' if len(labels) == 1 else ''} the clean image for every image not turned wrong, so "
            "the changed images are the ones turned wrong: compare their L2 median with the other attacks' "
            "\u201cL2 median (turned wrong)\u201d, not with their \u201cL2 median (changed)\u201d.")


def _html_table1(results: dict[str, Any], figs: dict[str, Any]) -> list[str]:
    parts = ["<h2>Table 1 — accuracy of intermediate, robust and non-robust features</h2>",
             "<p class=\"small\">Masks from the clean images, applied to the features of each input; the head after the layer "
             "classifies Z, Z_r = i_r·Z and Z_nr = i_nr·Z.</p>"]
    for protocol, t in results["table1"].items():
        ch = t["channels"]
        parts.append(f"<h3>{html.escape(protocol)} protocol, threshold rule {html.escape(str(t.get('threshold', 'max')))}: "
                     f"{ch['robust']:.2f} robust / {ch['nonrobust']:.2f} non-robust of {ch['total']} channels per image "
                     f"(mean over the {t['n']} clean images)</h3>")
        if "stability" in t:
            sentence = describe_agreement(t["stability"])
            parts.append(f"<p class=\"small\">{html.escape(sentence[0].upper() + sentence[1:])}.</p>")
        n = t["n"]
        rows = [[k, _c(r["int"], n), _c(r["robust"], n), _c(r["nonrobust"], n)] for k, r in t["rows"].items()]
        if "label_control" in t:
            lc = t["label_control"]
            rows.append(["control: clean, masks from a random wrong label ŷ — predicts ŷ", "—", _c(lc["robust_predicts_mask_label"], n),
                         _c(lc["nonrobust_predicts_mask_label"], n)])
            rows.append(["control: clean, masks from a random wrong label ŷ — predicts y", "—", _c(lc["robust_predicts_true_label"], n),
                         _c(lc["nonrobust_predicts_true_label"], n)])
        parts.append(_table(["input", "Int. (Z) [95% CI]", "R (Z_r)", "NR (Z_nr)"], rows))
    return parts + [_img(figs["table1"], "Table 1 as bars"), _reading(results, "table1")]


def _html_sanity(results: dict[str, Any], figs: dict[str, Any]) -> list[str]:
    """The sanity checks: each check's table and its verdict."""
    sn, ref = results["sanity"], results["reference_attack"]
    n, inp = sn["n"], ref if ref in sn["ib"]["rows"] else "clean"
    reading = results["readings"]
    parts = ["<h2>Sanity checks</h2>",
             "<p class=\"small\">Each check compares the bottleneck's split with something that should do worse if the split means "
             "what the paper says (random masks, a label-conditioned choice with no bottleneck, re-initialised weights, an attacker "
             "who knows the mask, other layers). Masks from the clean images as in Table 1; p: exact McNemar test against the IB "
             "split on the same images.</p>", "<h3>Random subset and label oracle</h3>"]
    lo, rs = sn["label_oracle"], sn["random_subset"]

    def row(name: str, table: dict[str, Any], rows: str = "rows", versus: str | None = "versus") -> list[Any]:
        r = table[rows]
        test = table.get(versus or "", {}).get(inp, {}).get("robust")
        return [name, _c(r["clean"]["robust"], n), _c(r["clean"].get("nonrobust"), n), _c(r[inp]["robust"], n),
                _c(r[inp].get("nonrobust"), n), f"{test['p']:.2g}" if test else "—"]

    ch = sn["channels"]
    parts.append(_table(["robust mask (channels per image)", "R clean [95% CI]", "NR clean", f"R {inp}", f"NR {inp}", f"p vs IB (R {inp})"], [
        row(f"IB split ({ch['ib']:.1f})", sn["ib"], versus=None),
        row(f"random subset of the IB mask's size ({ch['random_subset']:.1f})", rs),
        row(f"label oracle, true label ({ch['oracle_true']:.1f})", lo["true"]),
        row(f"IB, wrong label ŷ: predicts ŷ ({ch['ib_wrong']:.1f})", lo["ib_wrong"], "predicts_mask_label", None),
        row(f"label oracle, wrong label ŷ: predicts ŷ ({ch['oracle_wrong']:.1f})", lo["wrong"], "predicts_mask_label", "predicts_mask_label_versus"),
        row(f"population split ({ch['population']:.0f})", rs["population_split"], versus=None),
        row(f"random mask of the population split's size ({ch['random_population']:.0f})", rs["population"]),
    ]))
    parts += [f'<p class="reading">{html.escape(reading.get(k, ""))}</p>' for k in ("sanity_random_subset", "sanity_label_oracle") if reading.get(k)]
    mr = sn.get("model_randomisation")
    if mr:
        m = mr["n"]
        parts.append(f"<h3>Model randomisation ({m} images; attacks: the trained model's examples)</h3>")
        parts.append(_table(["re-initialised", "Int. clean", "R clean [95% CI]", f"R {inp}", "robust ch.", "Jaccard with trained masks",
                             "p vs trained (R clean)"],
                            [[st["name"], _c(st["rows"]["clean"]["int"], m), _c(st["rows"]["clean"]["robust"], m),
                              _c(st["rows"].get(inp, st["rows"]["clean"])["robust"], m), f"{st['channels']['robust']:.1f}",
                              f"{st['jaccard_mean']:.3f}", f"{st['versus_trained']['clean']['robust']['p']:.2g}"] for st in mr["stages"]]))
        if reading.get("sanity_model_randomisation"):
            parts.append(f'<p class="reading">{html.escape(reading["sanity_model_randomisation"])}</p>')
    ad = sn.get("adaptive")
    if ad:
        m = ad["n"]
        parts.append(f"<h3>Adaptive attacks on Z_r's own path ({m} images)</h3>")
        rows = []
        for kind in ("population", "per_image"):
            for label, r in ad[kind]["rows"].items():
                size = r["perturbation"]
                rows.append([f"{kind.replace('_', '-')} mask", label, f"L∞ ≤ {r['eps']:.4f}" if r.get("eps") else r["norm"],
                             _c(ad[kind]["clean"], m), _c(r["transfer"], m), _c(r["adaptive"], m), _c(r["worst_case"], m), f"{r['paired']['p']:.2g}",
                             size.get("linf_max"), size.get("l2_median")])
        parts.append(_table(["mask", "attack", "budget", "Z_r clean", "Z_r, full model's attack (transfer)", "Z_r, attack on Z_r",
                             "Z_r, worst of the two", "p", "L∞ max", "L2 median"], rows))
        if reading.get("sanity_adaptive"):
            parts.append(f'<p class="reading">{html.escape(reading["sanity_adaptive"])}</p>')
    layers = sn.get("layers")
    if layers:
        parts.append("<h3>Layers</h3>")
        rows = []
        for layer, r in layers.items():
            pi, po = r["per_image"], r["population"]
            m, lc = pi["n"], pi.get("label_control", {})
            at = inp if inp in pi["rows"] else "clean"
            rows.append([layer, "×".join(map(str, r["shape"])), f"{pi['channels']['robust']:.1f}", _c(pi["rows"]["clean"]["int"], m),
                         _c(pi["rows"]["clean"]["robust"], m), _c(pi["rows"]["clean"]["nonrobust"], m), _c(pi["rows"][at]["int"], m),
                         _c(pi["rows"][at]["robust"], m), _c(pi["rows"][at]["nonrobust"], m), _c(lc.get("robust_predicts_mask_label"), m),
                         f"{po['channels']['robust']:.0f}", _c(po["rows"][at]["robust"], m), _c(po["rows"][at]["nonrobust"], m)])
        parts.append(_table(["layer", "C×H×W", "robust ch.", "Int clean", "R clean", "NR clean", f"Int {inp}", f"R {inp}", f"NR {inp}",
                             "wrong-label masks: R predicts ŷ", "population robust ch.", f"population R {inp}", f"population NR {inp}"], rows))
        if reading.get("sanity_layers"):
            parts.append(f'<p class="reading">{html.escape(reading["sanity_layers"])}</p>')
    return parts


def _html_table2(results: dict[str, Any], figs: dict[str, Any]) -> list[str]:
    parts = ["<h2>Table 2 — do non-robust features predict the adversarial label?</h2>",
             "<p class=\"small\">On the images misclassified under each attack; masks from the adversarial images (with the "
             "true labels for the per-image protocol).</p>"]
    for protocol, t in results["table2"].items():
        parts.append(f"<h3>{html.escape(protocol)} protocol</h3>")
        parts.append(_table(["attack", "misclassified under attack", "NR predicts adversarial label [95% CI]", "R predicts adversarial label"],
                            [[k, r["fooled"], _c(r["nonrobust_agrees"], r["fooled"]), _c(r["robust_agrees"], r["fooled"])]
                             for k, r in t["rows"].items()]))
    return parts + [_reading(results, "table2")]


def _html_table4(results: dict[str, Any], figs: dict[str, Any]) -> list[str]:
    t4 = results["table4"]
    on = f" (on the first {t4['n']} of the {results['n']} images: clean accuracy {pct(t4['clean_accuracy'])})" if t4["n"] < results["n"] else ""
    return [f"<h2>Table 4 — maximising / minimising the gradient norm of non-robust and robust features{on}</h2>",
            _table(_ATTACK_HEADER, _attack_rows(results["table4"])), _paired(results["table4"]), _reading(results, "table4")]


def _html_tsne(results: dict[str, Any], figs: dict[str, Any]) -> list[str]:
    t = results["tsne"]
    sep = t.get("separation", {})
    table = _table(["features", "k-NN accuracy on the embedding", "silhouette"],
                   [[k.replace("attack", t["attack"]), _p(v["knn_accuracy"]), v["silhouette"]] for k, v in sep.items()]) if sep else ""
    return [f"<h2>Fig. 2 — t-SNE of pooled robust and non-robust features, clean and {html.escape(t['attack'])}</h2>",
            _img(figs["tsne"], "t-SNE"), f"<p class=\"small\">{t['n']} images; {html.escape(t['method'])}.</p>", table,
            _reading(results, "tsne")]


def _html_featvis(results: dict[str, Any], figs: dict[str, Any]) -> list[str]:
    c = results["featvis"]["config"]
    return ["<h2>Fig. 3 — feature visualisation</h2>", _img(figs["featvis"], "feature visualisation"),
            f"<p class=\"small\">Fourier parameterisation{', colour decorrelation' if c.get('decorrelate') else ''}, Adam lr "
            f"{c['lr']}, {c['steps']} steps, random pad/jitter/scale/rotate each step; masks of each input from its own bottleneck "
            f"run on its batch.</p>", _reading(results, "featvis")]


def _html_beta(results: dict[str, Any], figs: dict[str, Any]) -> list[str]:
    b = results["beta_sweep"]
    ref = b["attack"]
    return [f"<h2>Fig. 5 — β sweep ({b['n']} images)</h2>", _img(figs["beta"], "beta sweep"),
            _table(["β", "robust ch. per image", "non-robust ch.", "R clean [95% CI]", "NR clean", f"R {ref}", f"NR {ref}"],
                   [[r["beta"], f"{r['robust_channels']:.2f}", f"{r['nonrobust_channels']:.2f}", _c(r["rows"]["clean"]["robust"], b["n"]),
                     _c(r["rows"]["clean"]["nonrobust"], b["n"]), _c(r["rows"].get(ref, {}).get("robust"), b["n"]),
                     _c(r["rows"].get(ref, {}).get("nonrobust"), b["n"])] for r in b["rows"]]),
            _reading(results, "beta")]


def _html_sigma(results: dict[str, Any], figs: dict[str, Any]) -> list[str]:
    return ["<h2>σ² against the threshold T</h2>", _img(figs["sigma"], "sigma distribution"), _reading(results, "sigma")]


def _html_population(results: dict[str, Any], figs: dict[str, Any]) -> list[str]:
    pop = results["population"]
    return ["<h2>Population split</h2>",
            f"<p>Fitted on {html.escape(pop['fitted_on'])} ({pop['n']} images): {pop['robust']:.0f} robust and "
            f"{pop['nonrobust']:.0f} non-robust of {pop['channels']} channels; threshold rule {html.escape(str(pop.get('threshold_rule', 'max')))}, "
            + (f"T = {pop['threshold']:.4g}" if pop.get("threshold") is not None else "T = each channel's own σ_z² over the fitted images")
            + ".</p>"]


_SECTION_HTML: dict[str, Callable[[dict[str, Any], dict[str, Any]], list[str]]] = {
    "table3": _html_table3, "table1": _html_table1, "sanity": _html_sanity, "table2": _html_table2, "table4": _html_table4, "tsne": _html_tsne,
    "featvis": _html_featvis, "beta_sweep": _html_beta, "sigma": _html_sigma, "population": _html_population,
}
