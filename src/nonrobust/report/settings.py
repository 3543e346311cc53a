"""What a report runs: its settings, the named profiles, and the attacks its tables may use."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..attacks import ATTACK_SETS, ATTACKS, attack_name
from ..bottleneck import IBConfig, threshold_quantile
from ..errors import UserError, check
from ..fields import default_of, setting
from ..foreign import ModelOptions

PER_IMAGE_PROTOCOLS = ("paper", "batch-free")
"""The bottleneck protocols Tables 1 and 2 show next to ``population``."""

TABLE3_ATTACKS = ATTACK_SETS["report"].names
"""The registered attacks Table 3 can run: :data:`nonrobust.attacks.ATTACK_SETS` ``["report"]``."""

TABLE4 = ATTACK_SETS["table4"].names
"""Table 4's attacks: :data:`nonrobust.attacks.ATTACK_SETS` ``["table4"]``."""
TABLE4_LABELS = {name: label or ATTACKS[name].label for name, _, label in ATTACK_SETS["table4"].attacks}
"""Table 4's row names (the paper's: which gradient norm each attack pushes, and which way)."""


def _registered(name: str) -> str:
    """The registered name of attack ``name`` (a name or a display label), or ``name`` itself when it is neither."""
    try:
        return attack_name(name)
    except UserError:
        return name


def attack_overrides(key: str, s: "ReportSettings") -> dict[str, Any]:
    """The report's settings for registered attack ``key``: its ``eps`` for an L∞ attack, ``l2_steps`` for an unbounded L2 one."""
    return {"eps": s.eps} if ATTACKS[key].norm == "linf" else {"steps": s.l2_steps}


@dataclass(frozen=True)
class ReportSettings:
    """What a report runs. Defaults are the full analysis; :data:`PROFILES` ``["demo"]`` is the trimmed one.

    Attributes:
        model: anything :func:`nonrobust.models.resolve` takes (a checkpoint, a shipped name, ``ARCH=weights.pt``, …).
        model_options: what a model from outside nonrobust needs (:class:`nonrobust.foreign.ModelOptions`).
        data, split, data_dir, image_size, order: the data set (see :func:`nonrobust.data.load_dataset`).
        n: evaluate the first ``n`` images (None: all).
        attacks: Table 3's attacks, from :data:`TABLE3_ATTACKS`.
        table4: also run Table 4 (NRF, NRF2, RF, RF2).
        table4_n: run Table 4 on the first ``table4_n`` evaluated images only (None: all of them).
        eps: L∞ budget of every L∞ attack, in [0,1] pixel units.
        l2_steps: Adam steps of CW-L2 and the NRF L2 family.
        layer: split layer (None: the model's own).
        protocol: per-image bottleneck protocol of Table 1/2 (``paper`` or ``batch-free``).
        beta, ib_iterations: the bottleneck's β and Adam steps.
        threshold, population_threshold: the threshold rules of the per-image and the population split.
        stability: noise seeds Table 1 compares the per-image split over (1: off).
        label_control: Table 1's label control (masks from a seeded wrong label).
        population_n, population_iterations: images and Adam steps of the population split.
        betas, beta_n: Fig. 5's β values and number of images.
        tsne_n: images in Fig. 2.
        featvis_images, featvis_steps: images and optimisation steps of Fig. 3.
        sanity_n, sanity_layers, randomisation_blocks, adaptive_attacks: the sanity checks (:mod:`nonrobust.sanity`):
            images of the costlier checks, the layer sweep's layers, model randomisation's blocks, the adaptive attacks.
        trimmed: what a trimmed run left out, for the record.
    """

    model: str
    data: str
    model_options: ModelOptions = field(default_factory=ModelOptions)
    split: str = "test"
    data_dir: str | None = None
    image_size: int | None = None
    order: Literal["balanced", "file"] = "balanced"
    n: int | None = setting(None, "evaluate the first N images (default: all)", "positive_int")
    batch_size: int = setting(128, "images per batch", "positive_int")
    seed: int = setting(0, "seed of every random draw", "int")
    device: str = "auto"
    layer: str | None = setting(None, "split layer (default: the model's own, see `nonrobust models layers`)")
    attacks: tuple[str, ...] = ATTACK_SETS["report-full"].names
    table4: bool = True
    table4_n: int | None = setting(None, "run Table 4 on the first N evaluated images only (default: all; its 200-step L2 "
                                   "attacks are the report's slowest part)", "positive_int")
    eps: float = setting(8 / 255, "L∞ budget of every L∞ attack, in [0,1] pixel units", "positive")
    l2_steps: int = setting(200, "Adam steps of CW-L2 and the NRF L2 family", "positive_int")
    protocol: Literal["paper", "batch-free"] = setting("paper", "per-image bottleneck protocol shown next to population", "choice")
    beta: float = setting(default_of(IBConfig, "beta"), "KL weight β of the bottleneck", "non_negative")
    ib_iterations: int = setting(default_of(IBConfig, "iterations"), "bottleneck Adam steps", "positive_int")
    threshold: str = setting(default_of(IBConfig, "threshold"), "threshold rule of the per-image split: max (the paper), "
                             "channel or quantile:Q")
    population_threshold: str = setting("channel", "threshold rule of the population split: channel (σ² above the channel's own "
                                        "σ_z²; the paper's max left 0 channels robust on both shipped robust models), max or quantile:Q")
    stability: int = setting(3, "noise seeds Table 1 compares the per-image split over (1: off; each seed costs one more split)",
                             "positive_int")
    label_control: bool = setting(True, "Table 1's control: masks made with a seeded wrong label, and how often Z_r follows it",
                                  "flag")
    population_n: int = setting(5000, "images the population split is fitted on", "positive_int")
    population_iterations: int = setting(200, "Adam steps of the population split", "positive_int")
    betas: tuple[float, ...] = setting((0.0, 0.01, 0.1, 0.3, 1.0, 3.0, 5.0, 10.0), "β values of Fig. 5", "list")
    beta_n: int = setting(500, "images of the β sweep", "positive_int")
    tsne_n: int = setting(1000, "images of the t-SNE (Fig. 2)", "positive_int")
    featvis_images: int = setting(3, "images of the feature visualisation (Fig. 3), 0 to skip", "int")
    featvis_steps: int = setting(512, "optimisation steps of the feature visualisation", "positive_int")
    sanity_n: int | None = setting(None, "images of the costlier sanity checks (model randomisation, adaptive attacks, layers); "
                                   "default: all evaluated images", "positive_int")
    sanity_layers: tuple[str, ...] = setting((), "layers of the sanity checks' layer sweep, comma-separated (default: the split "
                                             "layer and up to two earlier layers of its type at larger feature maps)")
    randomisation_blocks: int = setting(3, "blocks below the split that model randomisation re-initialises in turn", "positive_int")
    adaptive_attacks: tuple[str, ...] = setting(("pgd-20", "apgd-ce"), "attacks run against Z_r's own path (the adaptive check), "
                                                "comma-separated L∞ attacks")
    trimmed: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.model_options, dict):  # e.g. read back from results.json
            object.__setattr__(self, "model_options", ModelOptions(**self.model_options))
        attacks = (ATTACK_SETS[a].names if a in ATTACK_SETS else (_registered(a),) for a in self.attacks)  # a set's name: its attacks
        object.__setattr__(self, "attacks", tuple(dict.fromkeys(a for names in attacks for a in names)))  # labels name attacks too
        for name in ("sanity_layers", "adaptive_attacks"):  # a comma-separated option, or a list read back from results.json
            value = getattr(self, name)
            object.__setattr__(self, name, tuple(v.strip() for v in value.split(",") if v.strip()) if isinstance(value, str) else tuple(value))
        object.__setattr__(self, "adaptive_attacks", tuple(_registered(a) for a in self.adaptive_attacks))
        bad = [a for a in self.adaptive_attacks if a not in ATTACKS or ATTACKS[a].norm != "linf" or ATTACKS[a].needs_split]
        check(not bad, f"adaptive attack(s) {', '.join(bad)} unknown or not a plain L∞ attack: choose from "
              + ", ".join(k for k in TABLE3_ATTACKS if ATTACKS[k].norm == "linf" and not ATTACKS[k].needs_split))
        check(self.randomisation_blocks >= 1, f"randomisation_blocks must be ≥ 1, got {self.randomisation_blocks}")
        unknown = [a for a in self.attacks if a not in TABLE3_ATTACKS]
        check(not unknown, f"unknown report attack(s) {', '.join(unknown)}: choose from {', '.join(TABLE3_ATTACKS)}")
        check(len(self.attacks) > 0, "a report needs at least one attack")
        check(0 < self.eps <= 1, f"eps must be in (0, 1] (pixel units), got {self.eps}")
        for rule in (self.threshold, self.population_threshold):
            threshold_quantile(rule)  # UserError for a bad rule
        check(self.protocol in PER_IMAGE_PROTOCOLS, f"the per-image protocol must be {' or '.join(PER_IMAGE_PROTOCOLS)}, got {self.protocol!r}")
        for name in ("batch_size", "l2_steps", "ib_iterations", "population_n", "population_iterations", "beta_n", "tsne_n",
                     "featvis_steps"):
            check(getattr(self, name) >= 1, f"{name} must be ≥ 1, got {getattr(self, name)}")
        check(self.featvis_images >= 0, "featvis_images must be ≥ 0")
        for name in ("n", "table4_n", "sanity_n"):
            check(getattr(self, name) is None or getattr(self, name) >= 1, f"{name} must be ≥ 1, got {getattr(self, name)}")
        check(all(b >= 0 for b in self.betas), "every β must be ≥ 0")


_QUICK: dict[str, Any] = dict(n=200, attacks=ATTACK_SETS["report-quick"].names, l2_steps=50, table4_n=64,
                              population_n=800, population_iterations=100, betas=(0.0, 0.1, 0.3, 1.0, 3.0, 10.0), beta_n=128, tsne_n=200,
                              featvis_images=2, featvis_steps=96, table4=True, sanity_n=32, randomisation_blocks=2,
                              adaptive_attacks=("pgd-20",))


def _default(name: str) -> Any:
    return default_of(ReportSettings, name)


_QUICK_TRIMMED = (ATTACK_SETS["report-quick"].description.split(": ", 1)[1],  # what the set leaves out of Table 3
                  f"CW-L2 and the NRF L2 family run {_QUICK['l2_steps']} Adam steps instead of {_default('l2_steps')}",
                  f"Table 4 on the first {_QUICK['table4_n']} of the {_QUICK['n']} images",
                  f"population split: {_QUICK['population_iterations']} Adam steps on up to {_QUICK['population_n']} images; "
                  f"β sweep: {len(_QUICK['betas'])} values of β on {_QUICK['beta_n']} images",
                  f"feature visualisation: {_QUICK['featvis_images']} images, {_QUICK['featvis_steps']} steps instead of "
                  f"{_default('featvis_steps')}",
                  f"sanity checks: model randomisation ({_QUICK['randomisation_blocks']} blocks instead of {_default('randomisation_blocks')}), "
                  f"the adaptive attacks ({', '.join(_QUICK['adaptive_attacks'])} only) and the layer sweep on the first {_QUICK['sanity_n']} images")

PROFILES: dict[str, dict[str, Any]] = {
    "quick": {"settings": _QUICK, "trimmed": (f"the first {_QUICK['n']} images", *_QUICK_TRIMMED)},
    "demo": {
        "settings": dict(_QUICK, model="cifar10-small-at", data="cifar10-slice"),
        "trimmed": (f"{_QUICK['n']} of the shipped slice's 1,000 CIFAR-10 test images (the population split is fitted on the others)",
                    *_QUICK_TRIMMED),
    },
    "full": {
        "settings": dict(model="cifar10-small-at", data="cifar10", n=None),
        "trimmed": (),
    },
}
"""Named report settings: ``quick`` (``report --profile quick``: a few minutes of a 2-core CPU on a small model),
``demo`` (``nonrobust demo``: ``quick`` on the shipped model and slice, under 5 minutes) and ``full`` (every
analysis at full size). Values given explicitly win over a profile's."""


def profile(name: str, **overrides: Any) -> ReportSettings:
    """The :data:`PROFILES` ``[name]`` settings with ``overrides`` (None values ignored)."""
    check(name in PROFILES, f"unknown report profile {name!r}: choose from {', '.join(PROFILES)}")
    p = PROFILES[name]
    values = {**p["settings"], "trimmed": p["trimmed"], **{k: v for k, v in overrides.items() if v is not None}}
    return ReportSettings(**values)
