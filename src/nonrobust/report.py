"""Every analysis of the paper on one model and data set, written up as one self-contained HTML page.

:func:`run_report` runs, in order (each a *step*, cached under the output folder):

1. each attack of Table 3 and Table 4 over the evaluated images, streamed to
   ``DIR/adversarial/<key>.safetensors`` by :func:`nonrobust.evaluation.attack_to_file`
   (resumable inside the step) — every later table reads these files, so each
   attack runs once;
2. the ``population`` split, fitted on other images than the evaluated ones
   where the data set has them (the training split, else the rest of the split);
3. Table 1 and Table 2 under the per-image protocol (``paper`` by default) and
   under ``population``, side by side;
4. Fig. 2 (t-SNE), Fig. 3 (feature visualisation), Fig. 5 (β sweep) and the
   σ² distribution against T.

A step's result is stored in ``DIR/steps/<name>.json`` with a key made of
everything it depends on (model weights, images, its settings, the seed); a
rerun with the same settings reuses it, a killed run redoes only the step it
was in (and an attack resumes at its first unfinished batch). Only one report
may write into a folder at a time (``DIR/.lock``).

Outputs: ``report.html`` (tables, figures embedded as PNG, settings, versions,
seeds, machine, wall time of each step and a plain-language reading of each
result), ``results.json``, one CSV per table and ``figures/*.png``.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import functools
import html
import io
import json
import logging
import os
import socket
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from . import __version__
from .errors import UserError, check
from .attacks import ATTACK_SETS, ATTACKS
from .io import atomic_write, check_output_folder, digest, load_tensors, read_json, save_tensors, tensor_fingerprint, write_json

__all__ = ["ReportSettings", "TABLE3_ATTACKS", "TABLE4", "PROFILES", "run_report", "profile"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- settings
TABLE3_ATTACKS = ("fgsm", "bim", "pgd-20", "cw-l2", "autoattack", "apgd-ce", "fab", "nrf-linf", "nrf")
"""The registered attacks (:data:`nonrobust.attacks.ATTACKS`) Table 3 can run, with their registered settings and labels.
The L∞ ones take the report's ``eps`` (PGD-20 and NRF-L∞ both run 20 steps of eps/4, so they compare);
CW-L2 and the NRF L2 family share c 0.1, Adam lr 0.1 and the report's ``l2_steps``."""

TABLE4 = ATTACK_SETS["table4"].names
"""Table 4's attacks: :data:`nonrobust.attacks.ATTACK_SETS` ``["table4"]``."""


def _attack_overrides(key: str, s: "ReportSettings") -> dict[str, Any]:
    """The report's settings for registered attack ``key``: its ``eps`` for an L∞ attack, ``l2_steps`` for an unbounded L2 one."""
    return {"eps": s.eps} if ATTACKS[key].norm == "linf" else {"steps": s.l2_steps}


@dataclass(frozen=True)
class ReportSettings:
    """What a report runs. Defaults are the full analysis; :data:`PROFILES` ``["demo"]`` is the trimmed one.

    Attributes:
        model: a checkpoint, a shipped pretrained name or ``file.py:function``.
        data, split, data_dir, image_size: the data set (see :func:`nonrobust.data.load_dataset`).
        n: evaluate the first ``n`` images (None: all).
        attacks: Table 3's attacks, from :data:`TABLE3_ATTACKS`.
        table4: also run Table 4 (NRF, NRF2, RF, RF2).
        eps: L∞ budget of every L∞ attack, in [0,1] pixel units.
        l2_steps: Adam steps of CW-L2 and the NRF L2 family.
        layer: split layer (None: the model's own).
        protocol: per-image bottleneck protocol of Table 1/2 (``paper`` or ``batch-free``).
        beta, ib_iterations: the bottleneck's β and Adam steps.
        population_n, population_iterations: images and Adam steps of the population split.
        betas, beta_n: Fig. 5's β values and number of images.
        tsne_n: images in Fig. 2.
        featvis_images, featvis_steps: images and optimisation steps of Fig. 3.
        trimmed: what a trimmed run left out, for the record.
    """

    model: str
    data: str
    split: str = "test"
    data_dir: str | None = None
    image_size: int | None = None
    n: int | None = None
    batch_size: int = 128
    seed: int = 0
    device: str = "auto"
    layer: str | None = None
    attacks: tuple[str, ...] = ("fgsm", "bim", "pgd-20", "cw-l2", "autoattack", "fab", "nrf-linf", "nrf")
    table4: bool = True
    eps: float = 8 / 255
    l2_steps: int = 200
    protocol: str = "paper"
    beta: float = 0.3
    ib_iterations: int = 200
    population_n: int = 5000
    population_iterations: int = 200
    betas: tuple[float, ...] = (0.0, 0.01, 0.1, 0.3, 1.0, 3.0, 5.0, 10.0)
    beta_n: int = 500
    tsne_n: int = 1000
    featvis_images: int = 3
    featvis_steps: int = 512
    trimmed: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = [a for a in self.attacks if a not in TABLE3_ATTACKS]
        check(not unknown, f"unknown report attack(s) {', '.join(unknown)}: choose from {', '.join(TABLE3_ATTACKS)}")
        check(len(self.attacks) > 0, "a report needs at least one attack")
        check(0 < self.eps <= 1, f"eps must be in (0, 1] (pixel units), got {self.eps}")
        check(self.protocol in ("paper", "batch-free"), f"the per-image protocol must be paper or batch-free, got {self.protocol!r}")
        for name in ("batch_size", "l2_steps", "ib_iterations", "population_n", "population_iterations", "beta_n", "tsne_n",
                     "featvis_steps"):
            check(getattr(self, name) >= 1, f"{name} must be ≥ 1, got {getattr(self, name)}")
        check(self.featvis_images >= 0, "featvis_images must be ≥ 0")
        check(self.n is None or self.n >= 1, f"n must be ≥ 1, got {self.n}")
        check(all(b >= 0 for b in self.betas), "every β must be ≥ 0")


PROFILES: dict[str, dict[str, Any]] = {
    "demo": {
        "settings": dict(model="cifar10-small-at", data="cifar10-slice", n=200, attacks=("fgsm", "bim", "pgd-20", "cw-l2", "apgd-ce", "nrf-linf", "nrf"),
                         l2_steps=100, population_n=800, population_iterations=100, betas=(0.0, 0.1, 0.3, 1.0, 3.0, 10.0),
                         beta_n=128, tsne_n=200, featvis_images=2, featvis_steps=96, table4=True),
        "trimmed": ("200 of the shipped slice's 1,000 CIFAR-10 test images (the population split is fitted on the other 800)",
                    "AutoAttack trimmed to its first component, APGD-CE (an upper bound on AutoAttack accuracy); FAB left out",
                    "CW-L2 and the NRF L2 family run 100 Adam steps instead of 200",
                    "population split: 100 Adam steps; β sweep: 6 values of β on 128 images",
                    "feature visualisation: 2 images, 96 steps instead of 512"),
    },
    "full": {
        "settings": dict(model="cifar10-small-at", data="cifar10", n=None),
        "trimmed": (),
    },
}
"""Named report settings: ``demo`` (``nonrobust demo``: under 5 minutes on 2 CPU cores) and ``full``."""


def profile(name: str, **overrides: Any) -> ReportSettings:
    """The :data:`PROFILES` ``[name]`` settings with ``overrides`` (None values ignored)."""
    check(name in PROFILES, f"unknown report profile {name!r}: choose from {', '.join(PROFILES)}")
    p = PROFILES[name]
    values = {**p["settings"], "trimmed": p["trimmed"], **{k: v for k, v in overrides.items() if v is not None}}
    return ReportSettings(**values)


# --------------------------------------------------------------------------- folder lock and step cache
@contextlib.contextmanager
def _exclusive(out_dir: Path) -> Iterator[None]:
    """Hold ``out_dir/.lock`` for the run; a second report into the same folder fails clearly.

    A lock left by a killed run on this machine (its process is gone) is taken over.
    """
    path = out_dir / ".lock"
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                other = json.loads(path.read_text() or "{}")
            except (OSError, json.JSONDecodeError):
                other = {}
            if other.get("host") == me["host"] and not _alive(int(other.get("pid", -1))):
                log.warning("taking over %s left by a stopped run (pid %s)", path, other.get("pid"))
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            raise UserError(f"{out_dir} is being written by another report (pid {other.get('pid', '?')} on "
                            f"{other.get('host', '?')} since {other.get('since', '?')}): wait for it, or pass another --out "
                            f"(if that process is gone, delete {path})") from None
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(me))
        break
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Steps:
    """Run named steps once: ``DIR/steps/<name>.json`` holds each result under a key of its inputs."""

    def __init__(self, out_dir: Path, base: dict) -> None:
        self.dir = out_dir / "steps"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.base = base
        self.timings: dict[str, dict] = {}

    def run(self, name: str, params: dict, fn: Callable[[], dict], files: tuple[Path, ...] = ()) -> dict:
        key = digest({"base": self.base, "step": name, "params": params})
        path = self.dir / f"{name}.json"
        if path.is_file():
            try:
                record = read_json(path)
            except UserError:
                record = {}
            if record.get("key") == key and all(Path(f).is_file() for f in files):
                self.timings[name] = {"seconds": record["seconds"], "reused": True}
                log.info("step %s: reusing %s", name, path)
                return record["result"]
        log.info("step %s", name)
        t0 = time.perf_counter()
        result = fn()
        seconds = round(time.perf_counter() - t0, 2)
        write_json(path, {"key": key, "params": params, "seconds": seconds, "result": result})
        self.timings[name] = {"seconds": seconds, "reused": False}
        return result

    def file(self, name: str) -> Path:
        """Where step ``name`` keeps its tensors."""
        return self.dir / f"{name}.safetensors"


# --------------------------------------------------------------------------- the run
@dataclass
class _Context:
    settings: ReportSettings
    out: Path
    model: nn.Module
    split: Any
    ds: Any
    device: torch.device
    ib: Any
    steps: _Steps
    progress: bool
    notes: list[str] = field(default_factory=list)
    attack_rows: dict[str, dict] = field(default_factory=dict)  # each attack's Table 3 row, once per run

    def batches(self, n: int | None = None):
        ds = self.ds if n is None else self.ds.first(min(n, len(self.ds)))
        return ds.batches(self.settings.batch_size, device=self.device)

    def adv_path(self, key: str) -> Path:
        return self.out / "adversarial" / f"{key}.safetensors"

    @functools.cached_property
    def first_batch(self) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """``(x, y, split)``: the first batch and its bottleneck split (per-image protocol), shared by the σ² plot and Fig. 3."""
        from .bottleneck import distill

        x, y = next(iter(self.batches()))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return x, y, distill(self.split, x, y, self.ib)


SECTIONS = ("table3", "table4", "table1", "table2", "tsne", "featvis", "beta", "sigma")
"""The report's parts; ``nonrobust evaluate NAME`` runs one of them (and what it needs)."""


def run_report(settings: ReportSettings, out_dir: str | Path, *, only: tuple[str, ...] | None = None,
               progress: bool = True) -> dict:
    """Run every analysis for ``settings`` into ``out_dir`` and write the report; returns ``results.json``'s content.

    ``only`` restricts the run to some of :data:`SECTIONS` (plus the attacks they need).

    Raises :class:`UserError` for bad settings, data or model, and when another
    report is writing into ``out_dir``.
    """
    from . import data, models
    from .bottleneck import IBConfig
    from .runtime import environment, resolve_device
    from .split import check_feature_map, split_model

    out = check_output_folder(out_dir)
    wanted = set(SECTIONS) if only is None else set(only)
    unknown = sorted(wanted - set(SECTIONS))
    check(not unknown, f"unknown report section(s) {', '.join(unknown)}: choose from {', '.join(SECTIONS)}")
    t_start = time.perf_counter()
    # everything a user can get wrong is checked before the folder is touched
    device = resolve_device(settings.device)
    full = data.load_dataset(settings.data, settings.split, settings.data_dir, image_size=settings.image_size)
    ds = full.first(settings.n) if settings.n and settings.n < len(full) else full
    model, meta = models.resolve(settings.model, device=device, input_shape=ds.input_shape)
    models.check_compatible(model, meta, ds.input_shape, ds.num_classes, device)
    layer = settings.layer or meta.split_layer
    check(layer, "the model has no default split layer: pass --layer (see `nonrobust models layers`)")
    split = split_model(model, layer)
    check_feature_map(split, next(ds.batches(1, device=device))[0])
    out.mkdir(parents=True, exist_ok=True)
    with _exclusive(out):
        ib = IBConfig(protocol=settings.protocol, beta=settings.beta, iterations=settings.ib_iterations, seed=settings.seed)
        base = {"model": tensor_fingerprint(iter(model.state_dict().items())),
                "data": tensor_fingerprint(iter([("x", ds.images), ("y", ds.labels)])),
                "layer": layer, "seed": settings.seed, "batch_size": settings.batch_size, "version": __version__}
        ctx = _Context(settings, out, model, split, ds, device, ib, _Steps(out, base), progress)
        results: dict[str, Any] = {
            "settings": asdict(settings), "layer": layer, "arch": meta.arch, "n": len(ds), "classes": ds.classes,
            "data": {"name": ds.name, "split": ds.split, "input_shape": list(ds.input_shape), "n_available": len(full)},
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
            results["table4"] = _table_attacks(ctx, TABLE4)
        if wanted & {"table1", "table2"}:
            population = _population(ctx, full)
            results["population"] = population["summary"]
            stored = _stored(ctx, settings.attacks)
            for which in ("table1", "table2"):
                if which in wanted:
                    results[which] = {p: _feature_table(ctx, which, stored, p, population) for p in (settings.protocol, "population")}
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
        _write_outputs(ctx, results)
        return results


def _reference_attack(attacks: tuple[str, ...]) -> str:
    """The attack figures use as "the" attack: PGD-20 when run, else the first L∞ one, else the first."""
    for key in ("pgd-20", "bim", "fgsm", "nrf-linf", "apgd-ce", "autoattack"):
        if key in attacks:
            return key
    return attacks[0]


def _make_attack(ctx: _Context, key: str):
    from .attacks import make_attack

    overrides = _attack_overrides(key, ctx.settings)
    if ATTACKS[key].needs_split:
        overrides.update(split=ctx.split, ib=ctx.ib)
    return make_attack(key, **overrides)


def _table_attacks(ctx: _Context, keys: tuple[str, ...]) -> dict:
    """Run (or reuse) each attack over the images; rows of accuracy and measured perturbation sizes."""
    from .evaluation import attack_to_file, summarise_file, worst_case

    for key in keys:
        if key in ctx.attack_rows:  # met before in this run (NRF-L2 is in Table 3 and Table 4)
            continue
        attack = _make_attack(ctx, key)
        path = ctx.adv_path(key)
        desc = attack.describe()

        def compute(attack=attack, path=path) -> dict:
            s = attack_to_file(ctx.model, ctx.ds, attack, path, batch_size=ctx.settings.batch_size, device=ctx.device,
                               seed=ctx.settings.seed, progress=ctx.progress)
            return {"seconds_attacking": s.get("seconds_this_run")}

        timing = ctx.steps.run(f"attack-{key}", {"attack": desc}, compute, files=(path,))
        s = summarise_file(path)
        p, pf = s["perturbation"], s["perturbation_fooled"]
        ctx.attack_rows[key] = {
            "label": ATTACKS[key].label, "attack": key, "norm": attack.norm, "eps": desc["eps"],
            "settings": desc, "clean_accuracy": s["clean_accuracy"], "robust_accuracy": s["robust_accuracy"],
            "success_rate": s["success_rate"], "linf_max": p["linf_max"], "l2_median": p["l2_median"],
            "l2_max": p["l2_max"], "nan": p["nan"], "min": p["min"], "max": p["max"],
            "fooled": pf["points"], "l2_median_fooled": pf["l2_median"], "seconds": timing.get("seconds_attacking")}
    rows = [ctx.attack_rows[key] for key in keys]
    linf = [ctx.adv_path(r["attack"]) for r in rows if r["norm"] == "linf"]
    clean = rows[0]["clean_accuracy"] if rows else None
    return {"n": len(ctx.ds), "clean_accuracy": clean, "rows": rows,
            "worst_case_linf": worst_case(linf)["worst_case_accuracy"] if linf else None}


def _stored(ctx: _Context, keys: tuple[str, ...]) -> dict:
    from .evaluation import StoredAdversarial

    return {ATTACKS[k].label: StoredAdversarial(ctx.adv_path(k)) for k in keys}


def _population(ctx: _Context, full) -> dict:
    """Fit (or reuse) the population split on images other than the evaluated ones where there are some."""
    from . import data
    from .bottleneck import IBResult, _Batches, distill_population

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
            fit = data.ImageDataset(full.name, full.split, full.images[rest].clone(), full.labels[rest].clone(), list(full.classes))
            source = f"{full.split} split, images {len(ctx.ds)}…{len(full) - 1} (not evaluated)"
        else:
            fit = ctx.ds
            source = "the evaluated images themselves (the data set has no others)"
            ctx.notes.append("The population split was fitted on the evaluated images, because the data set has no other images; "
                             "its masks are label-free at use time but were not learned on held-out data.")
    fit = fit.first(min(s.population_n, len(fit)))
    config = replace(ctx.ib, protocol="population", iterations=s.population_iterations)
    path = ctx.out / "population.safetensors"

    def compute() -> dict:
        res = distill_population(ctx.split, _Batches(lambda: fit.batches(s.batch_size, device=ctx.device)), config,
                                 total=-(-len(fit) // s.batch_size), progress=ctx.progress)
        res.save(path)
        return {"fitted_on": source, "n": len(fit), **res.counts(), "threshold": float(res.threshold),
                "config": asdict(config)}

    params = {"config": asdict(config), "fit": tensor_fingerprint(iter([("x", fit.images), ("y", fit.labels)]))}
    summary = ctx.steps.run("population", params, compute, files=(path,))
    return {"summary": summary, "result": IBResult.load(path, ctx.device)}


def _feature_table(ctx: _Context, which: str, stored: dict, protocol: str, population: dict) -> dict:
    """Table 1 (``which="table1"``) or Table 2 (``"table2"``) under one protocol, from the stored adversarial examples."""
    from .analyses import adversarial_agreement, feature_accuracy

    analysis = feature_accuracy if which == "table1" else adversarial_agreement
    kwargs = {"population": population["result"]} if protocol == "population" else {"config": ctx.ib}
    params = {"protocol": protocol, "ib": asdict(ctx.ib), "attacks": {k: v.describe() for k, v in stored.items()},
              "population": population["summary"] if protocol == "population" else None}
    return ctx.steps.run(f"{which}-{protocol}", params, lambda: analysis(
        ctx.model, ctx.split, ctx.batches(), stored, seed=ctx.settings.seed, total=len(ctx.ds), progress=ctx.progress, **kwargs))


def _sigma(ctx: _Context) -> dict:
    """σ², σ_z², T and masks of the first batch (per-image protocol), for the σ² plot."""
    path = ctx.steps.file("sigma")

    def compute() -> dict:
        x, _, res = ctx.first_batch
        save_tensors(path, {"sigma": res.sigma, "var_z": res.var_z, "threshold": res.threshold, "robust": res.robust_mask.to(torch.uint8)})
        sq = res.sigma.pow(2)
        return {"images": int(x.shape[0]), "threshold": float(res.threshold[0]), **res.counts(),
                "sigma_sq_median_robust": float(sq[res.robust_mask].median()) if res.robust_mask.any() else None,
                "sigma_sq_median_nonrobust": float(sq[~res.robust_mask].median()) if (~res.robust_mask).any() else None}

    return ctx.steps.run("sigma", {"ib": asdict(ctx.ib)}, compute, files=(path,))


def _beta_sweep(ctx: _Context, pgd: str) -> dict:
    from .analyses import beta_sweep

    s = ctx.settings
    stored = _stored(ctx, (pgd,))
    n = min(s.beta_n, len(ctx.ds))

    def compute() -> dict:
        rows = beta_sweep(ctx.model, ctx.split, lambda: ctx.batches(n), stored, s.betas, config=ctx.ib, seed=s.seed,
                          progress=ctx.progress)
        return {"n": n, "attack": ATTACKS[pgd].label, "rows": rows}

    return ctx.steps.run("beta-sweep", {"betas": list(s.betas), "n": n, "ib": asdict(ctx.ib),
                                        "attack": stored[ATTACKS[pgd].label].describe()}, compute)


def _tsne(ctx: _Context, pgd: str) -> dict:
    from .analyses import pooled_features, tsne_embedding

    s = ctx.settings
    n = min(s.tsne_n, len(ctx.ds))
    label = ATTACKS[pgd].label
    path = ctx.steps.file("tsne")

    def compute() -> dict:
        feats = pooled_features(ctx.model, ctx.split, ctx.batches(n), _stored(ctx, (pgd,)), config=ctx.ib, seed=s.seed,
                                progress=ctx.progress)
        emb = {}
        for key, value in feats.items():
            if key != "y":
                emb[key.replace(label, "attack")] = tsne_embedding(value, seed=s.seed)
        save_tensors(path, {"y": feats["y"], **emb})
        return {"n": n, "attack": label, "method": "scikit-learn TSNE, 2-D, PCA init, perplexity min(30, (n-1)/3)"}

    attack = _stored(ctx, (pgd,))[label].describe()  # the settings, so that other adversarial examples are not mistaken for these
    return ctx.steps.run("tsne", {"n": n, "ib": asdict(ctx.ib), "attack": label, "settings": attack}, compute, files=(path,))


def _featvis(ctx: _Context, pgd: str) -> dict:
    """Fig. 3 on the first images of the first batch that the attack fooled (masks from each input's own batch)."""
    from .bottleneck import distill, masked_predictions
    from .evaluation import StoredAdversarial
    from .featvis import FeatVisConfig, invert_features

    s = ctx.settings
    path = ctx.steps.file("featvis")
    config = FeatVisConfig(steps=s.featvis_steps, seed=s.seed)
    stored = StoredAdversarial(ctx.adv_path(pgd))

    def compute() -> dict:
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
        for i in pick:
            for kind, xi, pred in (("clean", x, clean_pred), ("adv", x_adv, adv_pred)):
                res = masks[kind].select(slice(i, i + 1))
                with torch.no_grad():
                    z = ctx.split.features(xi[i:i + 1])
                targets += [z, res.robust(z), res.nonrobust(z)]
                inputs.append(xi[i])
                captions.append([f"model: {ctx.ds.classes[int(pred[i])]}"]
                                + [f"head: {ctx.ds.classes[int(heads[kind][part][i])]}" for part in ("int", "robust", "nonrobust")])
                rows.append(f"#{i} {'clean' if kind == 'clean' else ATTACKS[pgd].label} (true {ctx.ds.classes[int(y[i])]})")
        visuals = invert_features(ctx.split, torch.cat(targets), ctx.ds.input_shape, config, progress=ctx.progress)
        save_tensors(path, {"inputs": torch.stack(inputs), "visuals": visuals.view(len(inputs), 3, *ctx.ds.input_shape)})
        return {"images": pick, "captions": captions, "rows": rows, "config": asdict(config)}

    return ctx.steps.run("featvis", {"config": asdict(config), "ib": asdict(ctx.ib), "n": s.featvis_images, "attack": pgd,
                                     "settings": stored.describe()}, compute, files=(path,))


# --------------------------------------------------------------------------- reading the numbers
def _pct(v: float | None) -> str:
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
        out["table4"] = (f"Maximising the non-robust gradient norm (NRF) leaves {_pct(t4['nrf']['robust_accuracy'])} accuracy, "
                         f"minimising it (NRF2) {_pct(t4['nrf2']['robust_accuracy'])}; for the robust channels, RF leaves "
                         f"{_pct(t4['rf']['robust_accuracy'])} and RF2 {_pct(t4['rf2']['robust_accuracy'])}. "
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
    rows = {r["label"]: r for r in t3["rows"]}
    linf = sorted((r for r in t3["rows"] if r["norm"] == "linf"), key=lambda r: r["robust_accuracy"])
    text = [f"The model classifies {_pct(t3['clean_accuracy'])} of the {t3['n']} images correctly."]
    if linf:
        eps = linf[0]["eps"]
        text.append(f"Within the L∞ ball of radius {eps:.4f} ({eps * 255:.1f}/255) the strongest attack here is {linf[0]['label']} "
                    f"({_pct(linf[0]['robust_accuracy'])} accuracy left); the per-point worst case over all L∞ attacks is "
                    f"{_pct(t3['worst_case_linf'])}.")
        if "NRF-L∞" in rows and "PGD-20" in rows:
            d = rows["NRF-L∞"]["robust_accuracy"] - rows["PGD-20"]["robust_accuracy"]
            text.append(f"At the same budget and schedule NRF-L∞ leaves {_pct(rows['NRF-L∞']['robust_accuracy'])} against PGD-20's "
                        f"{_pct(rows['PGD-20']['robust_accuracy'])}: it is {'stronger' if d < 0 else 'weaker' if d > 0 else 'as strong'} "
                        f"by {abs(100 * d):.1f} points.")
    if "NRF-L2" in rows and "CW-L2" in rows:
        a, b = rows["NRF-L2"], rows["CW-L2"]
        text.append(f"NRF-L2 and CW-L2 are unbounded: they are compared by accuracy and by the median L2 size of their successful "
                    f"perturbations ({_pct(a['robust_accuracy'])} at median L2 {_fmt(a['l2_median_fooled'])} for NRF-L2, "
                    f"{_pct(b['robust_accuracy'])} at {_fmt(b['l2_median_fooled'])} for CW-L2); accuracies of unbounded attacks must "
                    f"not be compared with the L∞ rows.")
    return " ".join(text)


def _reading_table1(table1: dict, ref: str, chance: float) -> str:
    parts = []
    for protocol, t in table1.items():
        c, a = t["rows"]["clean"], t["rows"].get(ref)
        if a is None:
            continue
        keeps = a["robust"] >= 0.8 * c["robust"] and c["robust"] > 2 * chance  # R features at chance keep nothing
        collapses = a["nonrobust"] <= 0.5 * c["nonrobust"]
        verdict = "holds" if keeps and collapses else "holds only in part" if keeps or collapses else "does not hold"
        if t["channels"]["robust"] < 1:
            parts.append(f"Under the {protocol} protocol fewer than one channel per image came out robust "
                         f"({t['channels']['robust']:.2f} of {t['channels']['total']}): Z_r is (almost) all zeros, so its "
                         f"accuracy is that of a near-constant prediction.")
        parts.append(f"Under the {protocol} protocol, with masks from the clean images, the robust features give {_pct(c['robust'])} "
                     f"clean and {_pct(a['robust'])} under {ref}; the non-robust features {_pct(c['nonrobust'])} and "
                     f"{_pct(a['nonrobust'])}; the whole layer {_pct(c['int'])} and {_pct(a['int'])}. The paper's pattern "
                     f"(robust features keep at least 80% of their clean accuracy under attack, non-robust ones lose at least half) "
                     f"{verdict} here.")
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
                         f"predict the adversarial label for {_pct(r['nonrobust_agrees'])} of them and the robust features for "
                         f"{_pct(r['robust_agrees'])}.")
    return (" ".join(parts) + " The paper reports 56–97% for the non-robust features.") if parts else f"{ref} fooled no point."


# --------------------------------------------------------------------------- writing
def _write_outputs(ctx: _Context, results: dict) -> None:
    from . import figures

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
        figs["sigma"] = figures.sigma_figure(sg["sigma"], sg["var_z"], float(sg["threshold"][0]), sg["robust"].bool())
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


def _csv_tables(results: dict) -> dict[str, tuple[list[str], list[list]]]:
    """One CSV per table present in ``results``: name -> (header, rows)."""
    attack_cols = ["label", "attack", "norm", "eps", "clean_accuracy", "robust_accuracy", "success_rate", "linf_max", "l2_median",
                   "l2_max", "fooled", "l2_median_fooled", "nan", "seconds"]
    out = {}
    for name in ("table3", "table4"):
        if name in results:
            out[name] = (attack_cols, [[r[c] for c in attack_cols] for r in results[name]["rows"]])
    if "table1" in results:
        out["table1"] = (["protocol", "input", "int", "robust", "nonrobust"],
                         [[p, k, r["int"], r["robust"], r["nonrobust"]] for p, t in results["table1"].items() for k, r in t["rows"].items()])
    if "table2" in results:
        out["table2"] = (["protocol", "attack", "fooled", "nonrobust_agrees", "robust_agrees"],
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


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c if isinstance(c, _Raw) else _fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class _Raw(str):
    """Already-escaped HTML for a table cell."""


def _p(v: float | None) -> _Raw:
    return _Raw(html.escape(_pct(v)))


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _reading(results: dict, key: str) -> str:
    text = results["readings"].get(key)
    return f'<p class="reading">{html.escape(text)}</p>' if text else ""


def _attack_rows(table: dict) -> list[list[Any]]:
    rows = []
    for r in table["rows"]:
        budget = f"L∞ ≤ {r['eps']:.4f} ({r['eps'] * 255:.1f}/255)" if r["norm"] == "linf" else "L2, unbounded"
        rows.append([r["label"], budget, _p(r["robust_accuracy"]), _p(r["success_rate"]), r["linf_max"], r["l2_median"],
                     r["l2_median_fooled"], r["l2_max"], r["nan"], f"[{r['min']:.3g}, {r['max']:.3g}]", r["seconds"]])
    return rows


_ATTACK_HEADER = ["attack", "threat model", "accuracy", "success rate", "L∞ max", "L2 median (all)", "L2 median (fooled)", "L2 max",
                  "NaN", "value range", "seconds"]


def render_html(results: dict, figs: dict[str, bytes]) -> str:
    """The self-contained report page (no scripts, no external resources)."""
    s = results["settings"]
    e = results["environment"]
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>nonrobust report — {html.escape(str(s['model']))}</title>"
             f"<style>{_CSS}</style></head><body>",
             "<h1>Robust and non-robust features: report</h1>",
             f"<p>Model <b>{html.escape(str(s['model']))}</b> ({html.escape(str(results['arch']))}), split at layer "
             f"<code>{html.escape(results['layer'])}</code>; data <b>{html.escape(results['data']['name'])}</b> "
             f"({html.escape(results['data']['split'])} split, {results['n']} of {results['data']['n_available']} images, shape "
             f"{results['data']['input_shape']}); seed {s['seed']}. Method: Kim, Lee, Ro, <i>Distilling Robust and Non-Robust Features "
             f"in Adversarial Examples by Information Bottleneck</i>, NeurIPS 2021. Total wall time {results['wall_seconds']:.0f} s.</p>"]
    if "cifar10" in results["data"]["name"]:
        parts.append('<p class="note">CIFAR-10 here is the JPEG-re-encoded copy prepared by <code>cifar10_from_jpeg.py</code>, '
                     "not the original files: numbers can differ slightly from the official data set.</p>")
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
        parts.append(f"<pre>{html.escape(json.dumps(results['model_metrics'], indent=1, default=str))}</pre>")
    parts.append("<h2>Steps and wall time</h2>")
    parts.append(_table(["step", "seconds", "this run"], [[k, v["seconds"], "reused" if v["reused"] else "computed"]
                                                          for k, v in results["steps"].items()]))
    parts.append("<h2>Settings and environment</h2>")
    parts.append(f"<pre>{html.escape(json.dumps({'settings': s, 'environment': e}, indent=1, default=str))}</pre>")
    parts.append(f"<p class=\"small\">Written by nonrobust {html.escape(__version__)}.</p></body></html>")
    return "\n".join(parts)


def _html_table3(results: dict, figs: dict) -> list[str]:
    t3 = results["table3"]
    return ["<h2>Table 3 — accuracy under attack</h2>", _table(_ATTACK_HEADER, _attack_rows(t3)),
            f"<p class=\"small\">Clean accuracy {_pct(t3['clean_accuracy'])}; per-point worst case over the L∞ attacks "
            f"{_pct(t3['worst_case_linf'])}. Perturbation sizes are measured on every image (all) and on the points each attack "
            f"turned from correct to wrong (fooled).</p>", _reading(results, "table3")]


def _html_table1(results: dict, figs: dict) -> list[str]:
    parts = ["<h2>Table 1 — accuracy of intermediate, robust and non-robust features</h2>",
             "<p class=\"small\">Masks from the clean images, applied to the features of each input; the head after the layer "
             "classifies Z, Z_r = i_r·Z and Z_nr = i_nr·Z.</p>"]
    for protocol, t in results["table1"].items():
        ch = t["channels"]
        parts.append(f"<h3>{html.escape(protocol)} protocol ({ch['robust']:.1f} robust / {ch['nonrobust']:.1f} non-robust of "
                     f"{ch['total']} channels)</h3>")
        parts.append(_table(["input", "Int. (Z)", "R (Z_r)", "NR (Z_nr)"],
                            [[k, _p(r["int"]), _p(r["robust"]), _p(r["nonrobust"])] for k, r in t["rows"].items()]))
    return parts + [_img(figs["table1"], "Table 1 as bars"), _reading(results, "table1")]


def _html_table2(results: dict, figs: dict) -> list[str]:
    parts = ["<h2>Table 2 — do non-robust features predict the adversarial label?</h2>",
             "<p class=\"small\">On the points each attack fooled; masks from the adversarial images (with the true labels for "
             "the per-image protocol).</p>"]
    for protocol, t in results["table2"].items():
        parts.append(f"<h3>{html.escape(protocol)} protocol</h3>")
        parts.append(_table(["attack", "fooled points", "NR predicts adversarial label", "R predicts adversarial label"],
                            [[k, r["fooled"], _p(r["nonrobust_agrees"]), _p(r["robust_agrees"])] for k, r in t["rows"].items()]))
    return parts + [_reading(results, "table2")]


def _html_table4(results: dict, figs: dict) -> list[str]:
    return ["<h2>Table 4 — maximising / minimising the gradient norm of non-robust and robust features</h2>",
            _table(_ATTACK_HEADER, _attack_rows(results["table4"])), _reading(results, "table4")]


def _html_tsne(results: dict, figs: dict) -> list[str]:
    t = results["tsne"]
    return [f"<h2>Fig. 2 — t-SNE of pooled robust and non-robust features, clean and {html.escape(t['attack'])}</h2>",
            _img(figs["tsne"], "t-SNE"), f"<p class=\"small\">{t['n']} images; {html.escape(t['method'])}.</p>",
            _reading(results, "tsne")]


def _html_featvis(results: dict, figs: dict) -> list[str]:
    c = results["featvis"]["config"]
    return ["<h2>Fig. 3 — feature visualisation</h2>", _img(figs["featvis"], "feature visualisation"),
            f"<p class=\"small\">Fourier parameterisation{', colour decorrelation' if c.get('decorrelate') else ''}, Adam lr "
            f"{c['lr']}, {c['steps']} steps, random pad/jitter/scale/rotate each step; masks of each input from its own bottleneck "
            f"run on its batch.</p>", _reading(results, "featvis")]


def _html_beta(results: dict, figs: dict) -> list[str]:
    b = results["beta_sweep"]
    ref = b["attack"]
    return [f"<h2>Fig. 5 — β sweep ({b['n']} images)</h2>", _img(figs["beta"], "beta sweep"),
            _table(["β", "robust ch.", "non-robust ch.", "R clean", "NR clean", f"R {ref}", f"NR {ref}"],
                   [[r["beta"], r["robust_channels"], r["nonrobust_channels"], _p(r["rows"]["clean"]["robust"]),
                     _p(r["rows"]["clean"]["nonrobust"]), _p(r["rows"].get(ref, {}).get("robust")),
                     _p(r["rows"].get(ref, {}).get("nonrobust"))] for r in b["rows"]]),
            _reading(results, "beta")]


def _html_sigma(results: dict, figs: dict) -> list[str]:
    return ["<h2>σ² against the threshold T</h2>", _img(figs["sigma"], "sigma distribution"), _reading(results, "sigma")]


def _html_population(results: dict, figs: dict) -> list[str]:
    pop = results["population"]
    return ["<h2>Population split</h2>",
            f"<p>Fitted on {html.escape(pop['fitted_on'])} ({pop['n']} images): {pop['robust']:.0f} robust and "
            f"{pop['nonrobust']:.0f} non-robust of {pop['channels']} channels, T = {pop['threshold']:.4g}.</p>"]


_SECTION_HTML: dict[str, Callable[[dict, dict], list[str]]] = {
    "table3": _html_table3, "table1": _html_table1, "table2": _html_table2, "table4": _html_table4, "tsne": _html_tsne,
    "featvis": _html_featvis, "beta_sweep": _html_beta, "sigma": _html_sigma, "population": _html_population,
}
