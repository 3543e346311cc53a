"""The options commands share: model, data, device and run options, and settings read from their dataclass fields."""

from __future__ import annotations

import argparse
import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Sequence, cast

from ..fields import DATA_DIR_HELP

if TYPE_CHECKING:

    import torch
    from torch import nn

    from ..bottleneck import IBConfig
    from ..data import ImageDataset
    from ..foreign import ModelOptions
    from ..models import CheckpointMeta


def _data_help() -> str:
    from ..data import DATA_CHOICES_HELP

    return "data set: " + DATA_CHOICES_HELP


# --------------------------------------------------------------------------- shared options
def add_data_args(p: argparse.ArgumentParser, default_split: str = "test") -> None:
    p.add_argument("--data", required=True, metavar="NAME", help=_data_help())
    p.add_argument("--data-dir", metavar="DIR", help=DATA_DIR_HELP)
    p.add_argument("--split", choices=("train", "test"), default=default_split, help=f"which split (default {default_split})")
    p.add_argument("--first", "--n", dest="n", type=_positive_int, metavar="N",
                   help="use only the first N images (in the --order below; --n is an alias, but torchrun takes --n for its own --nnodes)")
    p.add_argument("--image-size", type=_positive_int, metavar="PX", help="resize images to PX×PX (folder and tiny-imagenet data)")
    p.add_argument("--order", choices=("balanced", "file"), default="balanced",
                   help="balanced (default: a split stored sorted by class, such as the CIFAR-10 test set of the JPEG copy, is read "
                        "round-robin over the classes, so the first N are class-balanced) or file (the files' own order, for "
                        "comparisons that take the first N of the files)")


MODEL_HELP = ("a nonrobust checkpoint (.safetensors), a shipped pretrained name (see `nonrobust models list`), ARCH=weights.pt "
              "(a state dict of a registered architecture, read without running code; see --normalize), "
              "robustbench:NAME[:DATASET[:THREAT]], or path/to/file.py:function returning your own nn.Module (runs that file's code)")
_MODEL_OPTIONS = ("num_classes", "normalize", "arch_options", "model_dir")  # ModelOptions fields that are options


def add_model_arg(p: argparse.ArgumentParser, required: bool = True) -> None:
    from ..foreign import ModelOptions

    p.add_argument("--model", required=required, metavar="MODEL", help=MODEL_HELP)
    add_settings(p, ModelOptions, _MODEL_OPTIONS)


def model_options(args: argparse.Namespace) -> ModelOptions:
    """The :class:`nonrobust.foreign.ModelOptions` given on the command line."""
    from ..foreign import ModelOptions

    return ModelOptions(**{k: v for k, v in settings_from(args, ModelOptions, _MODEL_OPTIONS).items() if v is not None})


def add_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N or mps (default auto)")


def _real(text: str) -> float:
    """A number, also written as a fraction: ``0.5``, ``8/255``."""
    top, slash, bottom = text.partition("/")
    return float(top) / float(bottom) if slash else float(text)  # ZeroDivisionError: the usual message (_number)


def _number(cast: Callable[[str], float], allow_zero: bool, what: str) -> Callable[[str], float]:
    """An argparse type: ``cast(text)``, which must be > 0 (or ≥ 0 with ``allow_zero``) and finite."""

    def parse(text: str) -> float:
        try:
            value = cast(text)
        except (ValueError, ZeroDivisionError):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not (value >= 0 if allow_zero else value > 0) or value in (float("inf"),):  # NaN fails both comparisons
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


_positive_int = _number(int, False, "a positive integer")
_positive_float = _number(_real, False, "a positive number (e.g. 0.5 or 8/255)")
_non_negative_float = _number(_real, True, "a number ≥ 0 (e.g. 0.5 or 8/255)")
_KIND_TYPES: dict[str, Callable[[str], object]] = {"positive_int": _positive_int, "positive": _positive_float,
                                                  "non_negative": _non_negative_float, "int": int, "float": _real, "text": str}


def _option_kwargs(cls: type, name: str, flag: str, text: str) -> dict[str, Any]:
    """argparse keywords for field ``name`` of settings dataclass ``cls``: the type, choices or action its kind reads."""
    import typing

    from ..fields import kind_of

    kind = kind_of(cls, name)
    kw: dict[str, Any] = {"dest": f"{cls.__name__}.{name}", "default": None, "help": text}
    if kind == "choice":  # the values of the field's Literal[...] (also inside Optional)
        hint = typing.get_type_hints(cls)[name]
        kw["choices"] = next(typing.get_args(t) for t in (hint, *typing.get_args(hint)) if typing.get_origin(t) is typing.Literal)
    elif kind == "flag":
        kw["action"] = argparse.BooleanOptionalAction
    elif kind == "list":
        kw.update(type=_non_negative_float, nargs="+", metavar="X")
    else:
        kw.update(type=_KIND_TYPES[kind], metavar=flag.upper())
    return kw


def add_settings(p: argparse.ArgumentParser, cls: type, names: Sequence[str], *, flags: dict[str, str] | None = None) -> None:
    """One option per field ``names`` of the settings dataclass ``cls`` (see :mod:`nonrobust.fields`).

    The flag is ``--field-name`` (or ``flags[name]``); its help, the kind of value it reads and the default it
    states all come from the field. Every option defaults to ``None`` (not given), so the dataclass's default,
    or a preset's or profile's value, applies; :func:`settings_from` reads them back.
    """
    from ..fields import default_of, help_of, kind_of

    for name in names:
        kind, default = kind_of(cls, name), default_of(cls, name)
        flag = (flags or {}).get(name, name)
        shown = " ".join(f"{v:g}" for v in default) if kind == "list" else f"{default:.4g}" if isinstance(default, float) else default
        text = help_of(cls, name) + ("" if default is None else f" (default {shown})")
        p.add_argument(f"--{flag.replace('_', '-')}", **_option_kwargs(cls, name, flag, text))


ATTACK_OPTIONS = ("eps", "norm", "steps", "alpha", "restarts", "c", "lr")
"""The attack settings ``nonrobust attack`` takes as options: fields of the attack classes, each declared once there."""


def add_attack_settings(p: argparse.ArgumentParser) -> None:
    """One option per :data:`ATTACK_OPTIONS` field of the registered attack classes.

    Its help is each class's help for the field, with the families that have it; it states no default,
    because each registered attack has its own (``nonrobust attack --help`` lists them). An option the
    chosen attack does not take is refused in one line by :func:`nonrobust.attacks.make_attack`.
    """
    from ..attacks import ATTACKS
    from ..fields import help_of

    classes = list(dict.fromkeys(spec.factory for spec in ATTACKS.values()))
    for name in ATTACK_OPTIONS:
        having = [c for c in classes if name in {f.name for f in dataclasses.fields(c)} and help_of(c, name)]
        assert having, f"no attack class declares the setting {name!r}"
        texts: dict[str, list[str]] = {}
        for c in having:
            texts.setdefault(help_of(c, name), []).append(c.family)
        text = "; ".join(f"{t} ({', '.join(families)})" for t, families in texts.items()) + " (default: the attack's own)"
        p.add_argument(f"--{name}", **{**_option_kwargs(having[0], name, name, text), "dest": f"attack.{name}"})


def attack_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The :data:`ATTACK_OPTIONS` given on the command line (those not given left out)."""
    values = {name: getattr(args, f"attack.{name}", None) for name in ATTACK_OPTIONS}
    return {k: v for k, v in values.items() if v is not None}


def settings_from(args: argparse.Namespace, cls: type, names: Sequence[str]) -> dict[str, Any]:
    """The values given on the command line for the options :func:`add_settings` made (``None`` when not given)."""
    values = {name: getattr(args, f"{cls.__name__}.{name}", None) for name in names}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def add_run_args(p: argparse.ArgumentParser, batch_size: int = 128) -> None:
    add_device_arg(p)
    p.add_argument("--batch-size", type=_positive_int, default=batch_size, help=f"images per batch (default {batch_size})")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")


def load_model_and_data(args: argparse.Namespace) -> tuple[nn.Module, CheckpointMeta, ImageDataset, torch.device]:
    """Resolve ``--device``, ``--model`` and the data options; check they fit together."""
    from .. import data, loading, models
    from ..checks import warn_about_model
    from ..runtime import launch_device

    device = launch_device(args.device)  # under torchrun: this rank's device, in the process group
    ds = data.load_dataset(args.data, args.split, args.data_dir, n=args.n, image_size=args.image_size, order=args.order)
    model, meta = loading.resolve(args.model, device=device, input_shape=ds.input_shape, options=model_options(args),
                                 data_dir=args.data_dir)
    models.check_compatible(model, meta, ds.input_shape, ds.num_classes, device, classes=ds.classes)
    x, y = next(ds.first(min(len(ds), 32)).batches(32, device=device))
    warn_about_model(model, x, y, ds.num_classes)  # once per model and command, whatever attack follows
    return model, meta, ds, device


_IB_OPTIONS = ("protocol", "beta", "iterations", "lr", "noise", "kl", "threshold", "samples", "labels")  # the seed is the command's --seed


def _ib_config(args: argparse.Namespace) -> IBConfig:
    from ..bottleneck import IBConfig

    given = {k: v for k, v in settings_from(args, IBConfig, _IB_OPTIONS).items() if v is not None}
    return IBConfig(**given, seed=args.seed)


def _nrf_attack(args: argparse.Namespace, model: nn.Module, name: str, overrides: dict[str, Any]) -> Any:
    """The NRF-family attack ``name``: masks from the population split ``--masks``, or the bottleneck options."""
    from ..attacks import make_nrf
    from ..bottleneck import IBResult

    if args.masks:
        return make_nrf(name, model, layer=args.layer, population=IBResult.load(args.masks), source=args.masks, **overrides)
    return make_nrf(name, model, layer=args.layer, ib=_ib_config(args), **overrides)


def add_ib_args(p: argparse.ArgumentParser) -> None:
    from ..bottleneck import IBConfig
    from ..fields import help_of
    from ..report import ReportSettings

    p.add_argument("--layer", help=help_of(ReportSettings, "layer"))
    add_settings(p, IBConfig, _IB_OPTIONS, flags={"lr": "ib_lr", "samples": "ib_samples"})


def torch_dtype(name: str | None) -> torch.dtype | None:
    import torch

    return None if name in (None, "float32") else cast("torch.dtype", getattr(torch, name))


_REPORT_OPTIONS = ("table4_n", "eps", "l2_steps", "layer", "protocol", "beta", "ib_iterations", "threshold", "stability", "label_control",
                   "population_n", "population_iterations", "population_threshold", "betas", "beta_n", "tsne_n", "featvis_images",
                   "featvis_steps", "sanity_n", "sanity_layers", "randomisation_blocks", "adaptive_attacks")  # ReportSettings fields that are report options


def add_report_args(p: argparse.ArgumentParser) -> None:
    from ..attacks import ATTACK_SETS
    from ..report import TABLE3_ATTACKS, ReportSettings

    sets = ", ".join(name for name in ATTACK_SETS if name.startswith("report-"))
    p.add_argument("--attacks", metavar="A,B,…", help="Table 3's attacks, comma-separated, from: " + ", ".join(TABLE3_ATTACKS)
                   + f"; or the name of an attack set ({sets}) for its attacks"
                   + f" (default: {','.join(cast('tuple[str, ...]', ReportSettings.__dataclass_fields__['attacks'].default))})")
    p.add_argument("--no-table4", action="store_true", help="skip Table 4 (NRF, NRF2, RF, RF2)")
    p.add_argument("--profile", choices=("quick", "full"), help="start from named settings: quick (the demo's trimming: 200 images, "
                   "shorter attacks and sweeps; a few minutes on a CPU for a small model) or full; the options given win")
    add_settings(p, ReportSettings, _REPORT_OPTIONS)
    p.add_argument("--out", required=True, metavar="DIR", help="report folder: report.html, results.json, CSVs, figures, cached steps")
    add_run_args(p)


def _reproduce_presets() -> list[str]:
    from ..reproduce import REPRODUCE_PRESETS

    return list(REPRODUCE_PRESETS)


def _report_sections() -> list[str]:
    from ..report import SECTIONS

    return list(SECTIONS)


# --------------------------------------------------------------------------- parser
def _attack_names() -> list[str]:
    from ..attacks import ATTACKS

    return list(ATTACKS)


def _train_presets() -> list[str]:
    from ..training import PRESETS

    return list(PRESETS)


def _train_methods() -> list[str]:
    from ..training import METHODS

    return list(METHODS)


