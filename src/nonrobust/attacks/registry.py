"""Named attacks (:data:`ATTACKS`) and named lists of attacks (:data:`ATTACK_SETS`): data, each a name mapped to a factory and its settings."""

from __future__ import annotations

import dataclasses
import difflib
import warnings
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from ..errors import UserError, check
from .autoattack import AutoAttackRunner
from .base import _NORM_NAMES, _Base
from .families import CWL2, NRF, PGD
from .loop import STEP_FACTORS, Attack, step_size

if TYPE_CHECKING:
    from torch import nn

    from ..bottleneck import IBConfig, IBResult
    from ..split import LayerSplit


# --------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class AttackSpec:
    """A registered attack: how to build it, its norm, its display label and what it is.

    ``what`` says what the attack is in words, without numbers; :attr:`description` adds what its
    registered settings run, generated from them (:meth:`settings`), so the two cannot disagree.
    """

    name: str
    factory: type[_Base]
    defaults: dict[str, Any] = field(default_factory=dict)
    norm: str = "linf"
    label: str = ""
    what: str = ""
    needs_split: bool = False

    def settings(self, **overrides: Any) -> dict[str, Any]:
        """The settings this attack runs with (every field of its class, as :meth:`describe` reports them),
        built without a model: the class's defaults, the registered ones, then ``overrides``."""
        values: dict[str, Any] = {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
                                  for f in fields(self.factory)}
        values.update(self.defaults)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "alpha" in values and values.get("alpha") is None and values.get("eps") is not None:
            values["alpha"] = step_size(values["eps"], values["steps"], values["alpha_factor"])
        values.setdefault("eps", None)
        values.setdefault("norm", self.norm)  # a fixed norm (CW-L2) is a property, not a field
        if self.factory is NRF:
            values["masks"] = None
        return values

    @property
    def chooses_norm(self) -> bool:
        """Whether its threat model is a setting (``norm``: the PGD family and the AutoAttack ones) rather than fixed."""
        return "norm" in {f.name for f in fields(self.factory)}

    @property
    def description(self) -> str:
        """``what``, then the settings it runs with, in words (:meth:`_Base.summarise` of :meth:`settings`)."""
        return f"{self.what}: {self.factory.summarise(self.settings())}"


def _spec(name: str, factory: type[_Base], threat: str, label: str, what: str, needs_split: bool = False,
          **defaults: Any) -> AttackSpec:
    return AttackSpec(name, factory, dict(defaults, name=name), threat, label, what, needs_split)


_REF = "the reference code's setting, as in the paper's Table 3"
_F = STEP_FACTORS
ATTACKS: dict[str, AttackSpec] = {s.name: s for s in [
    _spec("fgsm", PGD, "linf", "FGSM", "FGSM (Goodfellow et al. 2015): one signed-gradient step of the whole budget", steps=1,
          alpha_factor=_F["fgsm"], random_start=False),
    _spec("bim", PGD, "linf", "BIM", f"BIM (Kurakin et al. 2017), {_REF}", steps=9, alpha=1 / 255, random_start=False),
    _spec("pgd", PGD, "linf", "PGD-10", f"PGD with α = 2.3·eps/steps, {_REF}", steps=10),
    _spec("pgd-20", PGD, "linf", "PGD-20", "PGD (Madry et al. 2018) with α = eps/4", steps=20, alpha_factor=_F["quarter"]),
    _spec("pgd-l2", PGD, "l2", "PGD-L2", "PGD in the L2 ball, α = 2.5·eps/steps", norm="l2", eps=0.5, steps=20, alpha_factor=_F["madry"]),
    _spec("cw-inf", PGD, "linf", "CW∞", "CW∞: PGD on the CW margin loss, α = eps/4", loss="margin", steps=20, alpha_factor=_F["quarter"]),
    _spec("cw-l2", CWL2, "l2", "CW-L2", f"Carlini–Wagner L2 in tanh space, {_REF}"),
    _spec("autoattack", AutoAttackRunner, "linf", "AutoAttack", "AutoAttack (Croce & Hein 2020)"),
    _spec("apgd-ce", AutoAttackRunner, "linf", "APGD-CE", "APGD-CE, AutoAttack's first component as the standard version runs it",
          version="custom", components=("apgd-ce",)),
    _spec("apgd-t", AutoAttackRunner, "linf", "APGD-T", "APGD-T (targeted DLR loss), an AutoAttack component", version="custom", components=("apgd-t",)),
    _spec("fab-t", AutoAttackRunner, "linf", "FAB-T", "FAB-T (targeted), an AutoAttack component", version="custom", components=("fab-t",)),
    _spec("fab", AutoAttackRunner, "linf", "FAB", f"FAB, untargeted, an AutoAttack component ({_REF})", version="custom", components=("fab",), fab_restarts=5),
    _spec("square", AutoAttackRunner, "linf", "Square", "Square (score-based, no gradients), an AutoAttack component",
          version="custom", components=("square",)),
    _spec("aa-reference", AutoAttackRunner, "linf", "AA (reference: APGD-CE)",
          "the reference code's 'AA', which is APGD-CE alone — NOT AutoAttack", version="custom", components=("apgd-ce",)),
    _spec("nrf", NRF, "l2", "NRF-L2", "NRF (Kim et al. 2021), the reference code's surrogate objective on nonrobust's loop; compare with cw-l2",
          True, form="surrogate"),
    _spec("nrf-reference", NRF, "l2", "NRF (L2, reference loop)",
          "NRF as the reference code runs it: its early stop, unclamped inverse tanh, no pick of the last iterate, its margin max", True,
          form="surrogate", loop="reference"),
    _spec("nrf-exact", NRF, "l2", "NRF-L2 (exact)", "NRF with Eq. 8's gradient-norm term differentiated through", True, form="exact"),
    _spec("nrf-linf", NRF, "linf", "NRF-L∞", "the NRF objective on PGD-20's schedule in the L∞ ball (comparable with PGD-20)", True,
          form="linf", eps=8 / 255, steps=20, alpha_factor=_F["quarter"]),
    _spec("nrf2", NRF, "l2", "G_nr ↓ (NRF2)", "Table 4's NRF2 (surrogate form)", True, form="surrogate", sign=-1),
    _spec("rf", NRF, "l2", "G_r ↑ (RF)", "Table 4's RF (surrogate form)", True, form="surrogate", channels="robust"),
    _spec("rf2", NRF, "l2", "G_r ↓ (RF2)", "Table 4's RF2 (surrogate form)", True, form="surrogate", channels="robust", sign=-1),
]}


def _folded(text: str) -> str:
    return text.lower().replace("∞", "inf").replace(" ", "").replace("_", "-")


def attack_name(text: str) -> str:
    """The registered name of an attack given by its name or its display label, in any case (``pgd-20``, ``PGD-20``,
    ``NRF-L∞``, ``nrf-linf``); :class:`UserError` with the closest names for anything else."""
    if text in ATTACKS:
        return text
    names = {_folded(k): k for k in ATTACKS} | {_folded(spec.label): k for k, spec in ATTACKS.items()}
    if _folded(text) in names:
        return names[_folded(text)]
    close = difflib.get_close_matches(_folded(text), list(names), n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(dict.fromkeys(names[c] for c in close))}? " if close else ""
    raise UserError(f"unknown attack {text!r}: {hint}choose from {', '.join(ATTACKS)}")


def make_attack(name: str, **overrides: Any) -> Attack:
    """Build a registered attack (by name or display label, :func:`attack_name`) with its defaults, overridden by ``overrides``.

    ``overrides`` whose value is ``None`` are ignored. NRF-family attacks need
    ``split=`` and ``mask=``. Raises :class:`UserError` for an unknown name or setting.
    """
    name = attack_name(name)
    spec = ATTACKS[name]
    settings = dict(spec.defaults)
    settings.update({k: v for k, v in overrides.items() if v is not None})
    allowed = {f.name for f in fields(spec.factory)}
    unknown = sorted(set(settings) - allowed)
    check(not unknown, f"attack {name!r} has no setting(s) {', '.join(unknown)}; it takes {', '.join(sorted(allowed - {'name'}))}")
    return spec.factory(**settings)


def make_nrf(name: str, model: nn.Module, *, layer: str | None = None, population: IBResult | None = None,
             ib: IBConfig | None = None, source: str = "the population split", **overrides: Any) -> Attack:
    """An attack of the NRF family (``nrf``, ``nrf-linf``, ``rf``, …) on ``model`` split at ``layer``.

    Args:
        name: a registered attack that needs a split (:attr:`AttackSpec.needs_split`), by name or label.
        model: the classifier (images in [0,1] to logits); ``layer`` defaults to its checkpoint's split
            layer, else :func:`nonrobust.split.default_layer`.
        population: a population split of that layer (from :func:`nonrobust.bottleneck.distill_population`
            or :meth:`IBResult.load`): its label-free masks are fixed for every image. Without it the
            bottleneck ``ib`` (default :class:`~nonrobust.bottleneck.IBConfig`, a per-image protocol) runs on
            each clean batch with its true labels, as the reference code does.
        source: what ``population`` is called in errors and warnings (e.g. its file name).
        **overrides: other settings of the attack (``eps``, ``steps``, …).

    Raises:
        UserError: a per-image split as ``population`` (its masks belong to the images it was made on), a
            population split of another layer, or ``ib`` with the population protocol but no ``population``.
    """
    from ..identity import find_provenance, model_digest
    from ..split import default_layer, split_model

    spec = ATTACKS[attack_name(name)]
    check(spec.needs_split, f"{spec.name} does not use channel masks: make it with make_attack")
    meta = getattr(model, "nonrobust_meta", None)
    layer = layer or getattr(meta, "split_layer", None) or default_layer(model)
    if layer is None:
        raise UserError("the model has no BatchNorm2d or Conv2d layer to split at: pass layer= (--layer)")
    split = split_model(model, layer)
    if population is None:
        check(ib is None or ib.protocol != "population", "NRF with the population protocol needs the population split: run "
              "`nonrobust split --protocol population` and pass it (--masks FILE)")
        return make_attack(spec.name, split=split, ib=ib, **overrides)
    check(population.sigma.dim() == 1, f"{source}: per-image masks belong to the images they were computed on; pass a "
          "population split (--protocol population), or none to split each clean batch")
    check(population.layer == split.layer, f"{source} was computed at layer {population.layer!r}, the attack uses "
          f"{split.layer!r}: pass --layer {population.layer}")
    made_on = ((find_provenance(population.extra) or {}).get("model") or {}).get("digest")
    if made_on is not None and made_on != model_digest(model):
        warnings.warn(f"{source} was made on another model (content digest {made_on[:12]}…, this one {model_digest(model)[:12]}…): "
                      "its channels need not mean the same here", stacklevel=2)
    channels = spec.settings().get("channels", "nonrobust")
    return make_attack(spec.name, split=split, mask=population.mask(channels), **overrides)


def attack_table() -> str:
    """README's table of the registered attacks, in Markdown, generated from :data:`ATTACKS`: each attack's name, label,
    norm (and whether ``--norm`` can change it) and :attr:`AttackSpec.description`, so the table says what runs."""
    rows = ["| name | label | norm | what runs (its registered settings) |", "| --- | --- | --- | --- |"]
    for spec in ATTACKS.values():
        norm = _NORM_NAMES[spec.norm] + (" (unbounded)" if spec.settings().get("eps") is None else "")
        norm += ", or L2 with `--norm l2`" if spec.chooses_norm and spec.norm == "linf" else ""
        rows.append(f"| `{spec.name}` | {spec.label} | {norm} | {spec.description} |")
    return "\n".join(rows)


# --------------------------------------------------------------------------- named lists of attacks
@dataclass(frozen=True)
class AttackSet:
    """A named list of ``(attack name, settings, display label)``, e.g. one table of the paper.

    A label of ``None`` means the attack's registered :attr:`AttackSpec.label`.
    """

    name: str
    description: str
    attacks: tuple[tuple[str, dict[str, Any], str | None], ...]

    @property
    def names(self) -> tuple[str, ...]:
        """The registered attack names, in order."""
        return tuple(a for a, _, _ in self.attacks)


def _registered(*names: str) -> tuple[tuple[str, dict[str, Any], str | None], ...]:
    """Attacks with their registered settings and labels."""
    return tuple((name, {}, None) for name in names)


_P = 0.03  # the reference code's eps for every attack
ATTACK_SETS: dict[str, AttackSet] = {s.name: s for s in [
    AttackSet("paper-table3", "the paper's Table 3 as the reference code ran it: eps 0.03, its PGD/BIM/CW settings, "
              "'AA' = APGD-CE with 1 restart (not AutoAttack), NRF unbounded L2 (compare it with CW only)", (
        ("fgsm", {"eps": _P}, None), ("bim", {"eps": _P}, None), ("pgd", {"eps": _P}, "PGD"),
        ("cw-l2", {}, "CW"), ("aa-reference", {"eps": _P}, None),
        ("fab", {"eps": _P}, None), ("nrf-reference", {}, None))),
    AttackSet("standard", "one L∞ budget for every attack (eps 8/255): PGD-20, CW∞, AutoAttack and NRF in its L∞ "
              "form, so the numbers compare", (
        ("fgsm", {}, None), ("pgd-20", {}, None), ("cw-inf", {}, None), ("autoattack", {}, None), ("nrf-linf", {}, None))),
    AttackSet("table4", "the paper's Table 4: maximise / minimise the gradient norm of non-robust / robust features "
              "(surrogate form, unbounded L2)", (
        ("nrf", {}, "G_nr ↑ (NRF)"), ("nrf2", {}, None), ("rf", {}, None), ("rf2", {}, None))),
    AttackSet("report", "every attack the report's Table 3 can run, with its registered settings (the L∞ ones at the "
              "report's eps: PGD-20 and NRF-L∞ both run 20 steps of eps/4, so they compare; CW-L2 and NRF share c, Adam "
              "lr and the report's l2_steps)", _registered(
                  "fgsm", "bim", "pgd-20", "cw-l2", "autoattack", "apgd-ce", "fab", "nrf-linf", "nrf")),
    AttackSet("report-full", "the full report's Table 3: every attack of 'report' but APGD-CE, which AutoAttack runs "
              "first", _registered("fgsm", "bim", "pgd-20", "cw-l2", "autoattack", "fab", "nrf-linf", "nrf")),
    AttackSet("report-quick", "the quick and demo reports' Table 3: AutoAttack trimmed to its first component, "
              "APGD-CE (an upper bound on AutoAttack accuracy), and FAB left out",
              _registered("fgsm", "bim", "pgd-20", "cw-l2", "apgd-ce", "nrf-linf", "nrf")),
    AttackSet("report-cpu", "docs/findings' reports on 1,000 images: the L∞ attacks and APGD-CE, which fit about 90 "
              "minutes of a 2-core CPU for VGG-16 (no 200-step L2 attacks but Table 4's)",
              _registered("fgsm", "bim", "pgd-20", "apgd-ce", "nrf-linf")),
    AttackSet("figure-attack", "the attack a report's figures, Table 1 and Table 2 use as 'the' attack: the first of "
              "these that the report runs (else its first attack)",
              _registered("pgd-20", "bim", "fgsm", "nrf-linf", "apgd-ce", "autoattack")),
]}


def make_attack_set(name: str, split: LayerSplit | None = None, **overrides: Any) -> dict[str, Attack]:
    """Build every attack of :data:`ATTACK_SETS` ``[name]``: display name -> attack.

    ``split`` (a :class:`nonrobust.split.LayerSplit`) is handed to the NRF family;
    ``overrides`` (e.g. ``ib=IBConfig(...)``) go to every attack that takes them.
    """
    spec = ATTACK_SETS.get(name)
    if spec is None:
        raise UserError(f"unknown attack set {name!r}: choose from {', '.join(ATTACK_SETS)}")
    out = {}
    for attack, settings, label in spec.attacks:
        label = label or ATTACKS[attack].label
        allowed = {f.name for f in fields(ATTACKS[attack].factory)}
        extra = {k: v for k, v in overrides.items() if k in allowed}
        if ATTACKS[attack].needs_split:
            check(split is not None, f"attack set {name!r} includes {attack}: pass split=split_model(model, layer)")
            extra["split"] = split
        out[label] = make_attack(attack, **{**settings, **extra})
    return out
