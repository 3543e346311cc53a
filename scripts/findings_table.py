"""README's side-by-side table: the paper's VGG-16 and WRN-28-10 against our models, each figure read from a results.json.

    python scripts/findings_table.py \
        --model "our VGG-16 (1,000 images)=docs/findings/cifar10-vgg16-at-test1k.results.json:cifar10-vgg16-at" \
        --model "our small_cnn (1,000 images)=docs/findings/cifar10-small-at-test1k.results.json:cifar10-small-at" \
        --model "our WRN-16-2 (1,000 images)=docs/findings/cifar10-wrn16-at-test1k.results.json:cifar10-wrn16-at"

``--no-paper`` leaves the paper's columns out (README's table of the other training methods: small_cnn under
TRADES and MART, and the paper's VGG-16 under standard training).

Each ``--model LABEL=RESULTS[:PRETRAINED]`` is one column: the report's results.json, and optionally
a shipped model whose metadata holds its AutoAttack / APGD-CE measurement. The paper's columns are
:data:`nonrobust.paper.VGG16_CIFAR10` and :data:`nonrobust.paper.WRN28_10_CIFAR10` (CIFAR-10, PGD-AT at γ = 0.03),
each entry with where it comes from.
Prints a Markdown table; every figure of ours is given with the number of images it was measured on.

    python scripts/findings_table.py --table3 \
        --model "ADV (fast AT)=DIR_AT/results.json" --model "TRADES=DIR_TRADES/results.json" --model "MART=DIR_MART/results.json"

prints the Table 3 block instead: one row per model (training method), its clean accuracy and each attack's
accuracy from the results' Table 3 (the same attacks on the same images in every row), and the per-image
worst case over the L∞ attacks.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nonrobust import models
from nonrobust.paper import VGG16_CIFAR10, WRN28_10_CIFAR10, Figure

PAPER: dict[str, dict[str, Figure]] = {"the paper's VGG-16": VGG16_CIFAR10, "the paper's WRN-28-10": WRN28_10_CIFAR10}
"""The paper's columns (CIFAR-10, PGD-AT, γ = 0.03): value and source of each figure (:mod:`nonrobust.paper`)."""

ROWS = (
    ("clean", "clean accuracy"),
    ("pgd", "PGD-20 accuracy (L∞ 8/255)"),
    ("aa", "AutoAttack (or APGD-CE) accuracy"),
    ("t1_clean", "Table 1, clean: Int / R / NR (%)"),
    ("t1_pgd", "Table 1, under PGD: Int / R / NR (%)"),
    ("t1_pop_clean", "Table 1, label-free population split, clean: Int / R / NR (%)"),
    ("t1_pop_pgd", "Table 1, label-free population split, under PGD: Int / R / NR (%)"),
    ("t2_pgd", "Table 2: NR features predict PGD's label on the images misclassified under it"),
    ("nrf_vs_pgd", "NRF-L∞ vs PGD-20 accuracy (same budget)"),
    ("channels", "robust channels per image (paper protocol)"),
    ("stability", "two noise seeds agree on an image's robust set (mean Jaccard, pairs with any robust channel)"),
    ("label", "masks made from a random wrong label: Z_r predicts that label / the true one"),
)


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}%"


def column(results_path: Path, pretrained: str | None) -> dict[str, str]:
    """Our figures for one model, from its report's results.json (and the shipped model's metadata)."""
    r = json.loads(results_path.read_text())
    n = r["n"]
    rows = {row["attack"]: row for row in r["table3"]["rows"]}
    t1 = r["table1"]["paper"]
    ref = r["reference_attack"]

    def int_r_nr(rows: dict, key: str) -> str:
        return " / ".join(f"{100 * rows[key][k]:.1f}" for k in ("int", "robust", "nonrobust"))

    population = r["table1"].get("population")
    out = {
        "clean": f"{_pct(r['table3']['clean_accuracy'])} (n={n})",
        "pgd": f"{_pct(rows['pgd-20']['robust_accuracy'])} (n={n})" if "pgd-20" in rows else "—",
        "t1_clean": int_r_nr(t1["rows"], "clean"),
        "t1_pgd": int_r_nr(t1["rows"], ref),
        "channels": f"{t1['channels']['robust']:.1f} of {t1['channels']['total']}",
    }
    if population:
        out["t1_pop_clean"], out["t1_pop_pgd"] = int_r_nr(population["rows"], "clean"), int_r_nr(population["rows"], ref)
    st = t1.get("stability")
    if st and st.get("jaccard_nonempty_pairs") is not None:
        out["stability"] = f"{st['jaccard_nonempty_pairs']:.2f} ({st['seeds']} seeds; empty pairs {100 * st['pairs_both_empty']:.0f}%)"
    lc = t1.get("label_control")
    if lc:
        out["label"] = f"{_pct(lc['robust_predicts_mask_label'])} / {_pct(lc['robust_predicts_true_label'])}"
    t2 = r["table2"]["paper"]["rows"].get(ref)
    out["t2_pgd"] = f"{_pct(t2['nonrobust_agrees'])} of {t2['fooled']}" if t2 else "—"
    if "nrf-linf" in rows and "pgd-20" in rows:
        out["nrf_vs_pgd"] = f"{_pct(rows['nrf-linf']['robust_accuracy'])} vs {_pct(rows['pgd-20']['robust_accuracy'])}"
    aa = None
    for key in ("autoattack", "apgd-ce"):
        if key in rows:
            aa = f"{_pct(rows[key]['robust_accuracy'])} ({rows[key]['label']}, n={n})"
            break
    if aa is None and pretrained:
        metrics = models.PRETRAINED[pretrained].meta().metrics
        for key, label in (("autoattack_accuracy", "AutoAttack"), ("apgd_ce_accuracy", "APGD-CE")):
            entry = metrics.get(key)
            if isinstance(entry, dict):
                aa = f"{_pct(entry['value'])} ({label}, n={entry['n']})"
                break
    out["aa"] = aa or "not measured"
    return out


def table(columns: dict[str, tuple[Path, str | None]], papers: dict[str, dict[str, Figure]] = PAPER) -> str:
    """The Markdown table and its notes on the paper's figures: one column per ``label: (results.json, shipped model or None)``,
    after the columns of ``papers`` (default :data:`PAPER`; ``{}`` for ours alone)."""
    ours = {label: column(path, pretrained) for label, (path, pretrained) in columns.items()}
    heads = [*papers, *ours]
    lines = ["| | " + " | ".join(heads) + " |", "| --- | " + " | ".join("---" for _ in heads) + " |"]
    for key, label in ROWS:
        lines.append(f"| {label} | " + " | ".join([*(paper[key].value for paper in papers.values()), *(c.get(key, "—") for c in ours.values())]) + " |")
    for name, paper in papers.items():
        lines += ["", f"Figures of {name}: " + "; ".join(f"{label.split(':')[0]}: {paper[key].source}" for key, label in ROWS) + "."]
    return "\n".join(lines)


def table3(rows: dict[str, Path]) -> str:
    """The Table 3 block: one row per ``label: results.json``, whose Table 3s must share their images and attacks."""
    results = {label: json.loads(path.read_text()) for label, path in rows.items()}
    first = next(iter(results.values()))["table3"]
    attacks = [row["label"] for row in first["rows"]]
    images = next(iter(results.values()))["provenance"]["data"]["digest"]
    for label, r in results.items():
        got = [row["label"] for row in r["table3"]["rows"]]
        if got != attacks or r["table3"]["n"] != first["n"]:
            raise SystemExit(f"{label}: Table 3 has {got} on {r['table3']['n']} images, not {attacks} on {first['n']}: run the same attacks")
        if r["provenance"]["data"]["digest"] != images:
            raise SystemExit(f"{label}: its images (data digest {r['provenance']['data']['digest'][:12]}) are not the first row's: "
                             "run every report on the same images")
    lines = ["| training | clean | " + " | ".join(attacks) + " | worst case (L∞) |", "| --- |" + " --- |" * (len(attacks) + 2)]
    for label, r in results.items():
        t3 = r["table3"]
        lines.append(f"| {label} | {_pct(t3['clean_accuracy'])} | " + " | ".join(_pct(row["robust_accuracy"]) for row in t3["rows"])
                     + f" | {_pct(t3.get('worst_case_linf'))} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--model", action="append", required=True, metavar="LABEL=RESULTS[:PRETRAINED]")
    ap.add_argument("--table3", action="store_true", help="print the Table 3 block (one row per model) instead")
    ap.add_argument("--no-paper", action="store_true", help="leave out the paper's columns")
    args = ap.parse_args()
    if args.table3:
        print(table3({label: Path(rest.partition(":")[0]) for label, _, rest in (item.partition("=") for item in args.model)}))
        return
    columns: dict[str, tuple[Path, str | None]] = {}
    for item in args.model:
        label, _, rest = item.partition("=")
        path, _, name = rest.partition(":")
        columns[label] = (Path(path), name or None)
    print(table(columns, {} if args.no_paper else PAPER))


if __name__ == "__main__":
    main()
