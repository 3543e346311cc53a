"""The report's orchestration: load the model and data, run each step (cached), gather ``results.json``."""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, cast

import torch

from ..attacks import ATTACK_SETS, ATTACKS, Attack
from ..errors import UserError, check
from ..identity import data_digest, model_digest, provenance
from ..io import check_output_folder, exclusive, load_tensors, read_json, save_tensors
from .context import Context
from .readings import headline, readings
from .render import write_outputs
from .settings import TABLE4, TABLE4_LABELS, ReportSettings, attack_overrides
from .steps import Steps

if TYPE_CHECKING:
    from ..bottleneck import IBConfig
    from ..data import ImageDataset


SECTIONS = ("table3", "table4", "table1", "table2", "sanity", "tsne", "featvis", "beta", "sigma")
"""The report's parts; ``nonrobust evaluate NAME`` runs one of them (and what it needs)."""


class ReportResults(TypedDict, total=False):
    """What :func:`run_report` returns and writes as ``results.json``: the one place its keys are described.

    A key is present when its section ran (``only=`` and the settings decide); accuracies are fractions in
    [0, 1], and every accuracy comes with the ``n`` it was measured on.
    """

    settings: dict[str, Any]  #: every :class:`ReportSettings` field, as run
    provenance: dict[str, Any]  #: model and data digests, versions, device, seeds, settings, command (nonrobust.identity)
    environment: dict[str, Any]  #: versions, platform, threads, device
    arch: str  #: the model's architecture (registry name, or the spec of a user's model)
    layer: str  #: the split layer
    classes: list[str]  #: class names
    data: dict[str, Any]  #: name, split, order, n_available, input_shape, indices
    n: int  #: images evaluated
    model_metrics: dict[str, Any]  #: the figures stored in the checkpoint's metadata (clean, PGD-20, APGD-CE, …)
    reference_attack: str  #: the label of the attack the figures and Tables 1–2 use (ATTACK_SETS["figure-attack"])
    table3: dict[str, Any]  #: n, clean_accuracy, rows (one per attack: label, attack, norm, eps, robust_accuracy, sizes …), paired
    table4: dict[str, Any]  #: Table 3's layout for NRF, NRF2, RF, RF2 on the first table4_n images
    population: dict[str, Any]  #: the label-free population split: robust channels, threshold, images it was fitted on
    table1: dict[str, Any]  #: per protocol: rows[input] = {int, robust, nonrobust}, channels, stability, label_control
    table2: dict[str, Any]  #: per protocol: rows[attack label] = {fooled, nonrobust_agrees, robust_agrees}
    sanity: dict[str, Any]  #: the controls (nonrobust.sanity): random_subset, label_oracle, model_randomisation, adaptive, layers
    tsne: dict[str, Any]  #: Fig. 2: the attack, images, and the class separation of each embedding
    featvis: dict[str, Any]  #: Fig. 3: the images and the head's prediction under each visualisation
    beta_sweep: list[dict[str, Any]]  #: Fig. 5: per β, rows like Table 1's and the channel counts
    sigma: dict[str, Any]  #: σ² against T on the first batch
    readings: dict[str, str]  #: one plain-language reading per section
    headline: dict[str, Any]  #: the few numbers the command prints
    notes: list[str]  #: what was trimmed or left out, and why
    steps: dict[str, Any]  #: each step's wall time and whether it came from the cache
    wall_seconds: float  #: wall time of this run


def run_report(settings: ReportSettings, out_dir: str | Path, *, only: tuple[str, ...] | None = None,
               progress: bool = True) -> dict[str, Any]:
    """Run every analysis for ``settings`` into ``out_dir`` and write the report; returns ``results.json``'s content,
    whose keys :class:`ReportResults` describes.

    ``only`` restricts the run to some of :data:`SECTIONS` (plus the attacks they need).

    Raises :class:`UserError` for bad settings, data or model, and when another
    report is writing into ``out_dir``.
    """
    from .. import data, loading, models
    from ..bottleneck import IBConfig
    from ..checks import warn_about_model
    from ..runtime import Distributed, environment, launch_device
    from ..split import check_feature_map, split_model

    out = check_output_folder(out_dir)
    wanted = set(SECTIONS) if only is None else set(only)
    unknown = sorted(wanted - set(SECTIONS))
    check(not unknown, f"unknown report section(s) {', '.join(unknown)}: choose from {', '.join(SECTIONS)}")
    if "sanity" in wanted:
        wanted.add("table1")  # the controls are read beside the IB split's own Table 1
    t_start = time.perf_counter()
    # everything a user can get wrong is checked before the folder is touched
    device = launch_device(settings.device)  # under torchrun: this rank's device, in the process group
    dist = Distributed.current()
    full = data.load_dataset(settings.data, settings.split, settings.data_dir, image_size=settings.image_size, order=settings.order)
    ds = full.first(settings.n) if settings.n and settings.n < len(full) else full
    model, meta = loading.resolve(settings.model, device=device, input_shape=ds.input_shape, options=settings.model_options,
                                 data_dir=settings.data_dir)
    models.check_compatible(model, meta, ds.input_shape, ds.num_classes, device, classes=ds.classes)
    layer = settings.layer or meta.split_layer
    check(bool(layer), "the model has no default split layer: pass --layer (see `nonrobust models layers`)")
    split = split_model(model, layer)
    check_feature_map(split, next(ds.batches(1, device=device))[0])
    warn_about_model(model, *next(ds.first(min(len(ds), 32)).batches(32, device=device)), ds.num_classes)
    out.mkdir(parents=True, exist_ok=True)
    with exclusive(out, out / ".lock") if dist.main else contextlib.nullcontext(), warnings.catch_warnings():
        # an all-robust or all-non-robust split is shown in the tables' channel counts, not warned about batch by batch
        warnings.filterwarnings("ignore", message=r"(every|no) channel came out robust")
        ib = IBConfig(protocol=settings.protocol, beta=settings.beta, iterations=settings.ib_iterations, seed=settings.seed,
                      threshold=settings.threshold)
        base = {"layer": layer, "seed": settings.seed, "batch_size": settings.batch_size}
        ctx = Context(settings, out, model, split, ds, device, ib, Steps(out, model_digest(model), data_digest(ds), base), progress)
        results: dict[str, Any] = {
            "provenance": provenance(model=model, data=ds, settings=asdict(settings), seeds={"report": settings.seed}),
            "settings": asdict(settings), "layer": layer, "arch": meta.arch, "n": len(ds), "classes": ds.classes,
            "data": {"name": ds.name, "split": ds.split, "input_shape": list(ds.input_shape), "n_available": len(full),
                     "provenance": ds.provenance},
            "environment": environment(device), "model_metrics": {k: v for k, v in (meta.metrics or {}).items()
                                                                   if k not in ("training_history", "environment")},
        }
        pgd = _reference_attack(settings.attacks)
        results["reference_attack"] = ATTACKS[pgd].label
        if wanted & {"table3", "table1", "table2"}:
            results["table3"] = _table_attacks(ctx, settings.attacks)
        elif wanted & {"tsne", "featvis", "beta"}:
            results["table3"] = _table_attacks(ctx, (pgd,))
        if "table4" in wanted and settings.table4:
            results["table4"] = _table_attacks(ctx.first(settings.table4_n), TABLE4, TABLE4_LABELS)
        if not dist.main:  # under torchrun the attacks above were sharded; rank 0 does the rest from their files
            dist.barrier()
            return cast("dict[str, Any]", read_json(out / "results.json"))
        if wanted & {"table1", "table2"}:
            population = _population(ctx, full)
            results["population"] = population["summary"]
            stored = _stored(ctx, settings.attacks)
            for which in ("table1", "table2"):
                if which in wanted:
                    results[which] = {p: _feature_table(ctx, which, stored, p, population) for p in (settings.protocol, "population")}
            if "sanity" in wanted:
                results["sanity"] = _sanity(ctx, full, stored, population, results["table1"])
        if "sigma" in wanted:
            results["sigma"] = _sigma(ctx)
        if "beta" in wanted:
            results["beta_sweep"] = _beta_sweep(ctx, pgd)
        if "tsne" in wanted:
            results["tsne"] = _tsne(ctx, pgd)
        if "featvis" in wanted and settings.featvis_images:
            results["featvis"] = _featvis(ctx, pgd)
        results["steps"] = ctx.steps.timings
        results["notes"] = ctx.notes
        results["wall_seconds"] = round(time.perf_counter() - t_start, 1)
        results["headline"] = headline(results)
        results["readings"] = readings(results)
        write_outputs(ctx, results)
        dist.barrier()  # results.json is written: the other ranks read it
        return results


def _reference_attack(attacks: tuple[str, ...]) -> str:
    """The attack figures use as "the" attack: :data:`nonrobust.attacks.ATTACK_SETS` ``["figure-attack"]``."""
    for key in ATTACK_SETS["figure-attack"].names:
        if key in attacks:
            return key
    return attacks[0]


def _make_attack(ctx: Context, key: str) -> Attack:
    from ..attacks import make_attack

    overrides = attack_overrides(key, ctx.settings)
    if ATTACKS[key].needs_split:
        overrides.update(split=ctx.split, ib=ctx.ib)
    return make_attack(key, **overrides)


def _table_attacks(ctx: Context, keys: tuple[str, ...], labels: dict[str, str] | None = None) -> dict[str, Any]:
    """Run (or reuse) each attack over the images; rows of accuracy (with 95% Wilson intervals) and measured
    perturbation sizes, and an exact McNemar test for every pair of attacks (same images: a paired comparison).

    ``labels`` overrides the registered display label of some attacks (Table 4 names its rows after the paper).
    """
    from ..stats import paired_counts, wilson
    from ..streams import attack_to_file, correct_under_attack, summarise_file, worst_case

    for key in keys:
        if key in ctx.attack_rows:  # met before in this run (NRF-L2 is in Table 3 and Table 4)
            continue
        attack = _make_attack(ctx, key)
        path = ctx.adv_path(key)
        desc = attack.describe()

        def compute(attack: Attack = attack, path: Path = path) -> dict[str, Any]:
            s = attack_to_file(ctx.model, ctx.ds, attack, path, batch_size=ctx.settings.batch_size, device=ctx.device,
                               seed=ctx.settings.seed, progress=ctx.progress)
            return {"seconds_attacking": s.get("seconds_this_run")}

        timing = ctx.steps.run(f"attack-{key}{ctx.subset}", {"attack": desc}, compute, files=(path,))
        s = summarise_file(path)
        p, pc, pf = s["perturbation"], s["perturbation_changed"], s["perturbation_fooled"]
        n = len(ctx.ds)
        ctx.attack_rows[key] = {
            "label": ATTACKS[key].label, "attack": key, "norm": attack.norm, "eps": desc["eps"],
            "settings": desc, "clean_accuracy": s["clean_accuracy"], "robust_accuracy": s["robust_accuracy"],
            "robust_accuracy_ci95": wilson(round(s["robust_accuracy"] * n), n),
            "success_rate": s["success_rate"], "linf_max": p["linf_max"], "l2_median": p["l2_median"],
            "l2_max": p["l2_max"], "nan": p["nan"], "min": p["min"], "max": p["max"],
            "changed": pc["points"], "l2_median_changed": pc["l2_median"],
            "fooled": pf["points"], "l2_median_fooled": pf["l2_median"], "seconds": timing.get("seconds_attacking")}
    rows = [{**ctx.attack_rows[key], "label": (labels or {}).get(key, ctx.attack_rows[key]["label"])} for key in keys]
    linf = [ctx.adv_path(r["attack"]) for r in rows if r["norm"] == "linf"]
    correct = {r["attack"]: correct_under_attack(ctx.adv_path(r["attack"])) for r in rows}
    paired = [{"a": a["label"], "b": b["label"], **paired_counts(correct[a["attack"]], correct[b["attack"]])}
              for i, a in enumerate(rows) for b in rows[i + 1:]]
    clean: Any = rows[0]["clean_accuracy"] if rows else None
    return {"n": len(ctx.ds), "clean_accuracy": clean, "clean_accuracy_ci95": wilson(round(clean * len(ctx.ds)), len(ctx.ds)) if rows else None,
            "rows": rows, "paired": paired, "worst_case_linf": worst_case(linf)["worst_case_accuracy"] if linf else None}


def _stored(ctx: Context, keys: tuple[str, ...]) -> dict[str, Any]:
    from ..streams import StoredAdversarial

    return {ATTACKS[k].label: StoredAdversarial(ctx.adv_path(k)) for k in keys}


def _population_fit(ctx: Context, full: ImageDataset) -> tuple[ImageDataset, str]:
    """The images the population split is fitted on (others than the evaluated ones where there are some), and where they are from."""
    from .. import data

    s = ctx.settings
    source = "train split"
    try:
        with warnings.catch_warnings():  # a training split smaller than population_n is simply used whole
            warnings.filterwarnings("ignore", message=".*has only .* images; using all of them")
            fit = data.load_dataset(s.data, "train", s.data_dir, n=s.population_n, image_size=s.image_size) if s.split == "test" else None
    except UserError:
        fit = None
    if fit is None or fit.input_shape != ctx.ds.input_shape:
        if len(full) > len(ctx.ds):
            rest = slice(len(ctx.ds), len(ctx.ds) + s.population_n)  # copy only the images the fit uses
            fit = full.rows(rest.start, rest.stop)
            source = f"{full.split} split, images {len(ctx.ds)}…{len(full) - 1} (not evaluated)"
        else:
            fit = ctx.ds
            source = "the evaluated images themselves (the data set has no others)"
            note = ("The population split was fitted on the evaluated images, because the data set has no other images; "
                    "its masks are label-free at use time but were not learned on held-out data.")
            if note not in ctx.notes:  # the layer sweep asks again
                ctx.notes.append(note)
    return fit.first(min(s.population_n, len(fit))), source


def _population_config(ctx: Context) -> IBConfig:
    s = ctx.settings
    return replace(ctx.ib, protocol="population", iterations=s.population_iterations, threshold=s.population_threshold)


def _population(ctx: Context, full: ImageDataset) -> dict[str, Any]:
    """Fit (or reuse) the population split on :func:`_population_fit`'s images."""
    from ..bottleneck import IBResult, ReiterableBatches, distill_population

    s = ctx.settings
    fit, source = _population_fit(ctx, full)
    config = _population_config(ctx)
    path = ctx.out / "population.safetensors"

    def compute() -> dict[str, Any]:
        res = distill_population(ctx.split, ReiterableBatches(lambda: fit.batches(s.batch_size, device=ctx.device)), config,
                                 total=-(-len(fit) // s.batch_size), progress=ctx.progress)
        res.save(path)
        return {"fitted_on": source, "n": len(fit), **res.counts(), "threshold_rule": config.threshold,
                "threshold": res.threshold_value, "config": asdict(config)}

    params = {"config": asdict(config), "fit": data_digest(fit)}
    summary = ctx.steps.run("population", params, compute, files=(path,))
    return {"summary": summary, "result": IBResult.load(path, ctx.device)}


def _feature_table(ctx: Context, which: str, stored: dict[str, Any], protocol: str, population: dict[str, Any]) -> dict[str, Any]:
    """Table 1 (``which="table1"``) or Table 2 (``"table2"``) under one protocol, from the stored adversarial examples."""
    from ..analyses import adversarial_agreement, feature_accuracy

    analysis = feature_accuracy if which == "table1" else adversarial_agreement
    kwargs: dict[str, Any] = {"population": population["result"]} if protocol == "population" else {"config": ctx.ib}
    if which == "table1" and protocol != "population":
        kwargs.update(stability=ctx.settings.stability, label_control=ctx.settings.label_control)
    params = {"protocol": protocol, "ib": asdict(ctx.ib), "attacks": {k: v.describe() for k, v in stored.items()},
              "population": population["summary"] if protocol == "population" else None,
              "options": {k: v for k, v in kwargs.items() if k not in ("population", "config")}}
    return ctx.steps.run(f"{which}-{protocol}", params, lambda: analysis(
        ctx.model, ctx.split, ctx.batches(), stored, seed=ctx.settings.seed, total=len(ctx.ds), progress=ctx.progress, **kwargs))


def _sanity(ctx: Context, full: ImageDataset, stored: dict[str, Any], population: dict[str, Any], table1: dict[str, Any]) -> dict[str, Any]:
    """The sanity checks (:mod:`nonrobust.sanity`), each a cached step; the costlier ones on the first ``sanity_n`` images."""
    from .. import sanity

    s = ctx.settings
    n = min(s.sanity_n or len(ctx.ds), len(ctx.ds))
    attacks = {k: v.describe() for k, v in stored.items()}
    path = ctx.steps.file("sanity-controls")
    pop = population["result"]

    def controls() -> dict[str, Any]:
        summary, tensors = sanity.mask_controls(ctx.model, ctx.split, ctx.batches(), stored, config=ctx.ib, population=pop,
                                                seed=s.seed, total=len(ctx.ds), progress=ctx.progress)
        save_tensors(path, {k: v.to(torch.uint8) for k, v in tensors.items()})
        return summary

    common = {"ib": asdict(ctx.ib), "attacks": attacks, "population": population["summary"]}
    out = dict(ctx.steps.run("sanity-controls", common, controls, files=(path,)))
    reference = {k: v.bool()[:n] for k, v in load_tensors(path)[0].items()}
    ref = ATTACKS[_reference_attack(s.attacks)].label
    out["model_randomisation"] = ctx.steps.run(
        "sanity-randomisation", {**common, "n": n, "blocks": s.randomisation_blocks},
        lambda: sanity.model_randomisation(ctx.model, ctx.split.layer, lambda: ctx.batches(n), stored, config=ctx.ib, reference=reference,
                                           blocks=s.randomisation_blocks, seed=s.seed, progress=ctx.progress))
    own = {ATTACKS[k].label: _make_attack(ctx, k) for k in s.adaptive_attacks}
    out["adaptive"] = ctx.steps.run(
        "sanity-adaptive", {**common, "n": n, "adaptive": {k: a.describe() for k, a in own.items()}},
        lambda: sanity.adaptive_attacks(ctx.model, ctx.split, ctx.batches(n), own, stored, population_mask=pop.robust_mask,
                                        image_masks=reference["ib_mask"], seed=s.seed, total=n, progress=ctx.progress))
    layers = list(s.sanity_layers) or sanity.sweep_layers(ctx.model, ctx.split.layer, next(ctx.batches(1))[0])
    fit, _ = _population_fit(ctx, full)
    config = _population_config(ctx)
    # on all the images, the split layer's two tables are the report's own Table 1 (same masks, same settings)
    known = {ctx.split.layer: {"per_image": table1[s.protocol], "population": table1["population"]}} if n == len(ctx.ds) else None
    out["layers"] = ctx.steps.run(
        "sanity-layers", {**common, "n": n, "layers": layers, "population_config": asdict(config), "fit": data_digest(fit),
                          "attack": ref},
        lambda: sanity.layer_sweep(ctx.model, layers, lambda: ctx.batches(n), {ref: stored[ref]}, config=ctx.ib, population_config=config,
                                   fit=lambda: fit.batches(s.batch_size, device=ctx.device), seed=s.seed, progress=ctx.progress,
                                   known=known))
    out["n_costly"] = n
    if n < len(ctx.ds):
        ctx.notes.append(f"Model randomisation, the adaptive attacks and the layer sweep ran on the first {n} of the {len(ctx.ds)} images "
                         "(--sanity-n), the random-subset and label-oracle checks on all of them.")
    return out


def _sigma(ctx: Context) -> dict[str, Any]:
    """σ², σ_z², T and masks of the first batch (per-image protocol), for the σ² plot."""
    path = ctx.steps.file("sigma")

    def compute() -> dict[str, Any]:
        x, _, res = ctx.first_batch
        save_tensors(path, {"sigma": res.sigma, "var_z": res.var_z, "threshold": res.threshold, "robust": res.robust_mask.to(torch.uint8)})
        sq = res.sigma.pow(2)
        return {"images": int(x.shape[0]), "threshold": res.threshold_value, **res.counts(),
                "sigma_sq_median_robust": float(sq[res.robust_mask].median()) if res.robust_mask.any() else None,
                "sigma_sq_median_nonrobust": float(sq[~res.robust_mask].median()) if (~res.robust_mask).any() else None}

    return ctx.steps.run("sigma", {"ib": asdict(ctx.ib)}, compute, files=(path,))


def _beta_sweep(ctx: Context, pgd: str) -> dict[str, Any]:
    from ..analyses import beta_sweep

    s = ctx.settings
    stored = _stored(ctx, (pgd,))
    n = min(s.beta_n, len(ctx.ds))

    def compute() -> dict[str, Any]:
        rows = beta_sweep(ctx.model, ctx.split, lambda: ctx.batches(n), stored, s.betas, config=ctx.ib, seed=s.seed,
                          progress=ctx.progress)
        return {"n": n, "attack": ATTACKS[pgd].label, "rows": rows}

    return ctx.steps.run("beta-sweep", {"betas": list(s.betas), "n": n, "ib": asdict(ctx.ib),
                                        "attack": stored[ATTACKS[pgd].label].describe()}, compute)


def _tsne(ctx: Context, pgd: str) -> dict[str, Any]:
    from ..analyses import cluster_separation, pooled_features, tsne_embedding

    s = ctx.settings
    n = min(s.tsne_n, len(ctx.ds))
    label = ATTACKS[pgd].label
    path = ctx.steps.file("tsne")

    def compute() -> dict[str, Any]:
        feats = pooled_features(ctx.model, ctx.split, ctx.batches(n), _stored(ctx, (pgd,)), config=ctx.ib, seed=s.seed,
                                progress=ctx.progress)
        emb = {}
        for key, value in feats.items():
            if key != "y":
                emb[key.replace(label, "attack")] = tsne_embedding(value, seed=s.seed)
        save_tensors(path, {"y": feats["y"], **emb})
        return {"n": n, "attack": label, "method": "scikit-learn TSNE, 2-D, PCA init, perplexity min(30, (n-1)/3)"}

    attack = _stored(ctx, (pgd,))[label].describe()  # the settings, so that other adversarial examples are not mistaken for these
    result = ctx.steps.run("tsne", {"n": n, "ib": asdict(ctx.ib), "attack": label, "settings": attack}, compute, files=(path,))
    t, _ = load_tensors(path)
    separation = {key: cluster_separation(emb, t["y"]) for key, emb in t.items() if key != "y"}
    return {**result, "separation": separation}


def _featvis(ctx: Context, pgd: str) -> dict[str, Any]:
    """Fig. 3 on the first images of the first batch that the attack fooled (masks from each input's own batch)."""
    from ..bottleneck import distill, masked_predictions
    from ..featvis import FeatVisConfig, invert_features
    from ..streams import StoredAdversarial

    s = ctx.settings
    path = ctx.steps.file("featvis")
    config = FeatVisConfig(steps=s.featvis_steps, seed=s.seed)
    stored = StoredAdversarial(ctx.adv_path(pgd))

    def compute() -> dict[str, Any]:
        x, y, clean_masks = ctx.first_batch
        x_adv = stored.rows(0, y)
        t, _ = load_tensors(stored.path, keys=("clean_pred", "adv_pred"))  # the model's predictions, stored with the attack
        clean_pred, adv_pred = t["clean_pred"][: len(y)], t["adv_pred"][: len(y)]
        fooled = ((clean_pred == y.cpu()) & (adv_pred != y.cpu())).nonzero().squeeze(1).tolist()
        others = [i for i in range(len(y)) if i not in fooled]
        pick = (fooled + others)[: s.featvis_images]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            masks = {"clean": clean_masks, "adv": distill(ctx.split, x_adv, y, ctx.ib)}
        heads = {"clean": masked_predictions(ctx.split, masks["clean"], x), "adv": masked_predictions(ctx.split, masks["adv"], x_adv)}
        targets, captions, inputs, rows = [], [], [], []
        for k, i in enumerate(pick):
            for kind, xi, pred in (("clean", x, clean_pred), ("adv", x_adv, adv_pred)):
                res = masks[kind].select(slice(i, i + 1))
                with torch.no_grad():
                    z = ctx.split.features(xi[i:i + 1])
                targets += [z, res.robust(z), res.nonrobust(z)]
                inputs.append(xi[i])
                captions.append([f"model: {ctx.ds.classes[int(pred[i])]}"]
                                + [f"head: {ctx.ds.classes[int(heads[kind][part][i])]}" for part in ("int", "robust", "nonrobust")])
                rows.append(f"example {k + 1} (image {i} of the data), {'clean' if kind == 'clean' else ATTACKS[pgd].label}, "
                            f"true class {ctx.ds.classes[int(y[i])]}")
        visuals = invert_features(ctx.split, torch.cat(targets), ctx.ds.input_shape, config, progress=ctx.progress)
        save_tensors(path, {"inputs": torch.stack(inputs), "visuals": visuals.view(len(inputs), 3, *ctx.ds.input_shape)})
        return {"images": pick, "captions": captions, "rows": rows, "config": asdict(config)}

    return ctx.steps.run("featvis", {"config": asdict(config), "ib": asdict(ctx.ib), "n": s.featvis_images, "attack": pgd,
                                     "settings": stored.describe()}, compute, files=(path,))
