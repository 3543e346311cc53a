"""The ``nonrobust`` command line: parse, call the library, print.

Every user mistake surfaces as a one-line ``error: ...`` on stderr with exit
code 2 (``--debug`` shows the traceback). Library code lives elsewhere; each
``cmd_*`` function here only wires arguments to it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NoReturn, Sequence, cast

from . import __version__
from .fields import DATA_DIR_HELP
from .errors import UserError

if TYPE_CHECKING:
    from types import FrameType

    import torch
    from torch import nn

    from .bottleneck import IBConfig
    from .data import ImageDataset
    from .foreign import ModelOptions
    from .models import CheckpointMeta
    from .report import ReportSettings

log = logging.getLogger("nonrobust")

def _data_help() -> str:
    from .data import DATA_CHOICES_HELP

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
    from .foreign import ModelOptions

    p.add_argument("--model", required=required, metavar="MODEL", help=MODEL_HELP)
    add_settings(p, ModelOptions, _MODEL_OPTIONS)


def model_options(args: argparse.Namespace) -> ModelOptions:
    """The :class:`nonrobust.foreign.ModelOptions` given on the command line."""
    from .foreign import ModelOptions

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


def add_settings(p: argparse.ArgumentParser, cls: type, names: Sequence[str], *, flags: dict[str, str] | None = None) -> None:
    """One option per field ``names`` of the settings dataclass ``cls`` (see :mod:`nonrobust.fields`).

    The flag is ``--field-name`` (or ``flags[name]``); its help, the kind of value it reads and the default it
    states all come from the field. Every option defaults to ``None`` (not given), so the dataclass's default,
    or a preset's or profile's value, applies; :func:`settings_from` reads them back.
    """
    import typing

    from .fields import default_of, help_of, kind_of

    hints = typing.get_type_hints(cls)
    for name in names:
        kind, default = kind_of(cls, name), default_of(cls, name)
        flag = (flags or {}).get(name, name)
        shown = " ".join(f"{v:g}" for v in default) if kind == "list" else f"{default:.4g}" if isinstance(default, float) else default
        text = help_of(cls, name) + ("" if default is None else f" (default {shown})")
        kw: dict[str, Any] = {"dest": f"{cls.__name__}.{name}", "default": None, "help": text}
        if kind == "choice":  # the values of the field's Literal[...] (also inside Optional)
            kw["choices"] = next(typing.get_args(t) for t in (hints[name], *typing.get_args(hints[name]))
                                 if typing.get_origin(t) is typing.Literal)
        elif kind == "flag":
            kw["action"] = argparse.BooleanOptionalAction
        elif kind == "list":
            kw.update(type=_non_negative_float, nargs="+", metavar="X")
        else:
            kw.update(type=_KIND_TYPES[kind], metavar=flag.upper())
        p.add_argument(f"--{flag.replace('_', '-')}", **kw)


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
    from . import data, models
    from .checks import warn_about_model
    from .runtime import launch_device

    device = launch_device(args.device)  # under torchrun: this rank's device, in the process group
    ds = data.load_dataset(args.data, args.split, args.data_dir, n=args.n, image_size=args.image_size, order=args.order)
    model, meta = models.resolve(args.model, device=device, input_shape=ds.input_shape, options=model_options(args),
                                 data_dir=args.data_dir)
    models.check_compatible(model, meta, ds.input_shape, ds.num_classes, device, classes=ds.classes)
    x, y = next(ds.first(min(len(ds), 32)).batches(32, device=device))
    warn_about_model(model, x, y, ds.num_classes)  # once per model and command, whatever attack follows
    return model, meta, ds, device


# --------------------------------------------------------------------------- commands
def cmd_data_prepare(args: argparse.Namespace) -> int:
    from . import data

    path = data.prepare(args.name, args.data_dir, download=not args.no_download)
    print(f"{args.name}: ready in {path}")
    return 0


def cmd_data_info(args: argparse.Namespace) -> int:
    from . import data

    ds = data.load_dataset(args.data, args.split, args.data_dir, n=args.n, image_size=args.image_size, order=args.order)
    counts = ds.labels.bincount(minlength=ds.num_classes).tolist()
    print(f"{ds.name} [{ds.split}]: {len(ds)} images of shape {tuple(ds.input_shape)}, {ds.num_classes} classes")
    print("per class: " + ", ".join(f"{c}={k}" for c, k in zip(ds.classes, counts, strict=True)))
    return 0


def cmd_attack(args: argparse.Namespace) -> int:
    from . import attacks, streams

    model, meta, ds, device = load_model_and_data(args)
    spec = attacks.ATTACKS[attacks.attack_name(args.attack)]
    overrides = {k: getattr(args, k) for k in ("eps", "norm", "steps", "alpha", "restarts", "c", "lr") if getattr(args, k) is not None}
    if spec.needs_split:
        overrides.update(_nrf_settings(args, model, meta, spec.name))
    attack = attacks.make_attack(spec.name, **overrides)
    summary = streams.attack_to_file(model, ds, attack, args.out, batch_size=args.batch_size, device=device, seed=args.seed)
    p = summary["perturbation"]
    print(f"{summary['attack']['name']} ({summary['attack']['norm']}, eps {attacks.budget_text(summary['attack'].get('eps'))}) on {summary['n']} images: "
          f"clean {summary['clean_accuracy']:.2%}, robust {summary['robust_accuracy']:.2%}, "
          f"L∞ max {p['linf_max']:.4f}, L2 median {p['l2_median']:.4f}")
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.json')}")
    return 0


_IB_OPTIONS = ("protocol", "beta", "iterations", "lr", "noise", "kl", "threshold", "samples", "labels")  # the seed is the command's --seed


def _ib_config(args: argparse.Namespace) -> IBConfig:
    from .bottleneck import IBConfig

    given = {k: v for k, v in settings_from(args, IBConfig, _IB_OPTIONS).items() if v is not None}
    return IBConfig(**given, seed=args.seed)


def _nrf_settings(args: argparse.Namespace, model: nn.Module, meta: CheckpointMeta, name: str) -> dict[str, Any]:
    """The split and channel masks an NRF-family attack needs, from --layer and --masks or the bottleneck options."""
    import warnings

    from .attacks import ATTACKS
    from .bottleneck import IBResult
    from .identity import find_provenance, model_digest
    from .split import split_model

    settings: dict[str, Any] = {"split": split_model(model, args.layer or meta.split_layer)}
    if args.masks:
        res = IBResult.load(args.masks)
        if res.sigma.dim() != 1:
            raise UserError(f"{args.masks}: per-image masks belong to the images they were computed on; pass a population split (--protocol "
                            "population) or leave --masks out to split each clean batch")
        if res.layer != settings["split"].layer:
            raise UserError(f"{args.masks} was computed at layer {res.layer!r}, the attack uses {settings['split'].layer!r}: pass --layer {res.layer}")
        made_on = ((find_provenance(res.extra) or {}).get("model") or {}).get("digest")
        if made_on is not None and made_on != model_digest(model):
            warnings.warn(f"{args.masks} was made on another model (content digest {made_on[:12]}…, this one {model_digest(model)[:12]}…): "
                          "its channels need not mean the same here", stacklevel=2)
        channels = ATTACKS[name].defaults.get("channels", "nonrobust")
        settings["mask"] = res.nonrobust_mask if channels == "nonrobust" else res.robust_mask
    else:
        settings["ib"] = _ib_config(args)
        if settings["ib"].protocol == "population":
            raise UserError("NRF with --protocol population needs the split file: run `nonrobust split --protocol population` and pass --masks FILE")
    return settings


def add_ib_args(p: argparse.ArgumentParser) -> None:
    from .bottleneck import IBConfig
    from .fields import help_of
    from .report import ReportSettings

    p.add_argument("--layer", help=help_of(ReportSettings, "layer"))
    add_settings(p, IBConfig, _IB_OPTIONS, flags={"lr": "ib_lr", "samples": "ib_samples"})


def cmd_split(args: argparse.Namespace) -> int:
    from .streams import split_dataset
    from .split import split_model

    model, meta, ds, device = load_model_and_data(args)
    split = split_model(model, args.layer or meta.split_layer)
    config = _ib_config(args)
    s = split_dataset(split, ds, config, args.out, batch_size=args.batch_size, device=device, stability=args.stability)
    acc = s["accuracy"]
    print(f"{config.protocol} split at {split.layer} (beta {config.beta}) on {s['n']} images: "
          f"{s['robust_channels_mean']:.1f} robust / {s['nonrobust_channels_mean']:.1f} non-robust of {s['channels']} channels (mean per image)")
    print(f"accuracy from Z {acc['int']:.2%}, from Z_r {acc['robust']:.2%}, from Z_nr {acc['nonrobust']:.2%}")
    if "stability" in s:
        from .bottleneck import describe_agreement

        print(describe_agreement(s["stability"]))
    if "mask_labels" in s:
        m = s["mask_labels"]
        print(f"masks made with {m['source']} labels: Z_r predicts them for {m['robust_predicts_mask_label']:.2%} of the images, "
              f"Z_nr for {m['nonrobust_predicts_mask_label']:.2%}")
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.json')}")
    return 0


_TRAIN_OPTIONS = ("data_dir", "train_subset", "image_size", "epochs", "batch_size", "lr", "momentum", "weight_decay", "schedule", "eps",
                  "steps", "alpha", "beta", "inner", "flip", "eval_n", "eval_pgd_steps", "amp", "channels_last", "seed", "init")
"""TrainConfig fields that are options of `nonrobust train` (``train_subset`` is ``--n``)."""


def cmd_train(args: argparse.Namespace) -> int:
    from . import training

    overrides = {"arch": args.arch, "data": args.data, "method": args.method, "device": args.device,
                 **settings_from(args, training.TrainConfig, _TRAIN_OPTIONS)}
    if args.arch_option:
        from .foreign import parse_arch_options

        overrides["arch_options"] = {k: v for item in args.arch_option for k, v in parse_arch_options(item).items()}
    base = training.load_config(args.out) if args.resume else None
    config = training.make_config(args.preset, base=base, **overrides)
    result = training.train(config, args.out, resume=args.resume, command=sys.argv)
    if result.get("rank", 0) != 0:
        return 0
    last, best = result["last"], result["best"]
    print(f"trained {result['epochs']} epochs: held-out clean {last['eval_clean_acc']:.2%}, PGD {last['eval_pgd_acc']:.2%} "
          f"(best epoch {best['epoch']}: clean {best['eval_clean_acc']:.2%}, PGD {best['eval_pgd_acc']:.2%})")
    print(f"wrote {result['checkpoint']} and {result['best_checkpoint']}")
    return 0


def _report_settings(args: argparse.Namespace, profile_name: str | None = None) -> ReportSettings:
    """ReportSettings from the report options (a profile's values where an option was not given)."""
    from .report import ReportSettings, profile

    # the model, data and run options every command shares, then the report's own (add_report_args)
    values = {k: getattr(args, k, None) for k in ("model", "data", "split", "data_dir", "image_size", "order", "n", "batch_size", "seed",
                                                  "device")}
    values.update(settings_from(args, ReportSettings, _REPORT_OPTIONS))
    if hasattr(args, "ModelOptions.normalize"):
        values["model_options"] = model_options(args)
    if getattr(args, "attacks", None):
        values["attacks"] = tuple(a.strip() for a in args.attacks.split(",") if a.strip())
    if getattr(args, "no_table4", False):
        values["table4"] = False
    if profile_name is not None:
        return profile(profile_name, **values)
    return ReportSettings(**{k: v for k, v in values.items() if v is not None})


def _print_headline(results: dict[str, Any], out: Path) -> None:
    h = results["headline"]
    clean = "" if h["clean_accuracy"] is None else f": clean {h['clean_accuracy']:.1%}"
    print(f"{results['arch']} at {results['layer']} on {h['n']} {results['data']['name']} images{clean}")
    for name, acc in h["robust_accuracy"].items():
        print(f"  {name:<16} {acc:.1%}")
    ref = h["reference_attack"]
    for protocol, row in h["table1"].items():
        print(f"  Table 1 ({protocol}) under {ref}: Int {row['int']:.1%}, R {row['robust']:.1%}, NR {row['nonrobust']:.1%}")
    for protocol, r in h["table2"].items():
        if r["nonrobust_agrees"] is not None:
            print(f"  Table 2 ({protocol}): NR features predict {ref}'s label on {r['nonrobust_agrees']:.1%} of the {r['fooled']} "
                  "images misclassified under it")
    page = (out / "report.html").resolve()
    print(f"wrote {page} ({results['wall_seconds']:.0f} s): open it in a browser; {page.parent / 'results.json'} holds every number")


def _report_and_headline(settings: ReportSettings, out: str, only: tuple[str, ...] | None = None) -> int:
    from .report import run_report

    _print_headline(run_report(settings, out, only=only), Path(out))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    return _report_and_headline(_report_settings(args, args.profile), args.out)


def cmd_evaluate(args: argparse.Namespace) -> int:
    return _report_and_headline(_report_settings(args, args.profile), args.out, only=(args.section,))


def cmd_demo(args: argparse.Namespace) -> int:
    if args.full:
        settings = _report_settings(args, "full")
    else:
        settings = _report_settings(args, "demo")
        print(f"demo: {settings.model} on the shipped CIFAR-10 slice, trimmed to finish in a few minutes on a CPU:")
        for item in settings.trimmed:
            print(f"  - {item}")
    code = _report_and_headline(settings, args.out)
    print("next: the same analysis on your model and data: nonrobust report --model MODEL --data DATA --profile quick --out DIR "
          "(README: Bring your own model)")
    return code


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .reproduce import reproduce

    overrides = {"n": args.n} if args.n else None
    result = reproduce(args.preset, args.out, data_dir=args.data_dir, device=args.device, seed=args.seed, epochs=args.epochs,
                       report_overrides=overrides)
    best = result["train"]["best"]
    print(f"trained {result['train']['epochs']} epochs (best epoch {best['epoch']}: held-out clean {best['eval_clean_acc']:.2%}, "
          f"PGD {best['eval_pgd_acc']:.2%})")
    _print_headline(result["report"], Path(args.out) / "report")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    import json

    from .identity import describe_provenance, read_provenance

    block, record = read_provenance(args.file)
    if args.json:
        print(json.dumps(block, indent=2, ensure_ascii=False, default=str))
        return 0 if block else 2
    if block is None:
        raise UserError(f"{args.file}: no provenance in it (written by nonrobust before 0.2, or not an output of nonrobust)")
    print(f"{args.file}:")
    for line in describe_provenance(block):
        print(f"  {line}")
    if record.get("tensors_sha256"):
        print(f"  tensors     SHA-256 {record['tensors_sha256']} (checked on every load)")
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    from . import models

    print("architectures (nonrobust train --arch NAME):")
    for spec in models.ARCHITECTURES.values():
        tag = " [paper]" if spec.paper else ""
        print(f"  {spec.name:<16} split at {spec.default_layer:<12} {spec.notes}{tag}")
    print("pretrained models (--model NAME):")
    for name, pre in models.PRETRAINED.items():
        print(f"  {name:<20} {pre.description}{'' if pre.available() else '  (not shipped in this build)'}")
        measured = models.headline(pre.meta()) if pre.available() else ""
        if measured:
            print(f"  {'':<20} measured: {measured}")
    return 0


def cmd_models_convert(args: argparse.Namespace) -> int:
    from . import foreign

    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    model, meta = foreign.convert(args.weights, args.arch, args.out, model_options(args),
                                  input_shape=tuple(args.input_shape) if args.input_shape else None, dataset=args.dataset,
                                  classes=classes, dtype=torch_dtype(args.dtype))
    print(f"wrote {args.out}: {meta.describe()}, input {'×'.join(map(str, meta.input_shape))}, split layer {meta.split_layer}, "
          f"normalisation mean {[round(v, 4) for v in meta.mean]} std {[round(v, 4) for v in meta.std]}")
    return 0


def torch_dtype(name: str | None) -> torch.dtype | None:
    import torch

    return None if name in (None, "float32") else cast("torch.dtype", getattr(torch, name))


def cmd_models_layers(args: argparse.Namespace) -> int:
    from . import data, models, split

    shape = tuple(args.input_shape) if args.input_shape else None
    if shape is None and args.data:
        shape = data.load_dataset(args.data, "test", args.data_dir, n=1, image_size=args.image_size).input_shape
    model, meta = models.resolve(args.model, input_shape=shape, options=model_options(args), data_dir=args.data_dir)
    shape = shape or tuple(meta.input_shape)
    try:
        layers = split.layer_shapes(model, shape)
    except Exception as exc:  # the user's model on the user's shape
        raise UserError(f"the model fails on images of shape {list(shape)} ({type(exc).__name__}): pass the right --input-shape C H W") from None
    print(f"{meta.arch}: layers for {shape[0]}×{shape[1]}×{shape[2]} images (name, type, output shape per image)")
    width = max(map(len, layers), default=0)
    for name, (kind, out) in layers.items():
        marker = "  <- default split layer" if name == meta.split_layer else ""
        print(f"{name:<{width}}  {kind:<20} {'×'.join(map(str, out)) if out else '-'}{marker}")
    return 0


_REPORT_OPTIONS = ("table4_n", "eps", "l2_steps", "layer", "protocol", "beta", "ib_iterations", "threshold", "stability", "label_control",
                   "population_n", "population_iterations", "population_threshold", "betas", "beta_n", "tsne_n", "featvis_images",
                   "featvis_steps")  # ReportSettings fields that are report options


def add_report_args(p: argparse.ArgumentParser) -> None:
    from .report import TABLE3_ATTACKS, ReportSettings

    p.add_argument("--attacks", metavar="A,B,…", help="Table 3's attacks, comma-separated, from: " + ", ".join(TABLE3_ATTACKS)
                   + f" (default: {','.join(cast('tuple[str, ...]', ReportSettings.__dataclass_fields__['attacks'].default))})")
    p.add_argument("--no-table4", action="store_true", help="skip Table 4 (NRF, NRF2, RF, RF2)")
    p.add_argument("--profile", choices=("quick", "full"), help="start from named settings: quick (the demo's trimming: 200 images, "
                   "shorter attacks and sweeps; a few minutes on a CPU for a small model) or full; the options given win")
    add_settings(p, ReportSettings, _REPORT_OPTIONS)
    p.add_argument("--out", required=True, metavar="DIR", help="report folder: report.html, results.json, CSVs, figures, cached steps")
    add_run_args(p)


def _reproduce_presets() -> list[str]:
    from .reproduce import REPRODUCE_PRESETS

    return list(REPRODUCE_PRESETS)


def _report_sections() -> list[str]:
    from .report import SECTIONS

    return list(SECTIONS)


# --------------------------------------------------------------------------- parser
def _attack_names() -> list[str]:
    from .attacks import ATTACKS

    return list(ATTACKS)


def _train_presets() -> list[str]:
    from .training import PRESETS

    return list(PRESETS)


def _train_methods() -> list[str]:
    from .training import METHODS

    return list(METHODS)


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors end, like every other user mistake, in one ``error: …`` line (exit 2), and that never
    guesses: an abbreviated option (``--norm`` for ``--normalize``) is an error, not a match."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False  # also for every sub-parser, which argparse builds with this class
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        # the one error line, naming where the options are (not the whole usage block before it)
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


_RESUME = "rerun the same command to resume from the last finished batch"
_RESUME_TRAINING = "rerun it with --resume to continue from the last complete epoch"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="nonrobust",
        description="Find the robust and non-robust features of an image classifier with an information "
        "bottleneck, and attack the non-robust ones (Kim, Lee, Ro, NeurIPS 2021).",
    )
    parser.add_argument("--version", action="version", version=f"nonrobust {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p_data = sub.add_parser("data", help="prepare and inspect data sets")
    sub_data = p_data.add_subparsers(dest="data_command", metavar="ACTION")
    p = sub_data.add_parser("prepare", help="download (with checksums) or check a data set")
    p.add_argument("name", help="cifar10, cifar100, svhn, tiny-imagenet, folder:PATH or npz:PATH")
    p.add_argument("--data-dir", metavar="DIR", help=DATA_DIR_HELP)
    p.add_argument("--no-download", action="store_true", help="only check that the files are present")
    p.set_defaults(func=cmd_data_prepare)
    p = sub_data.add_parser("info", help="load a data set and print its size and class counts")
    add_data_args(p)
    p.set_defaults(func=cmd_data_info)

    p = sub.add_parser("attack", help="attack a data set and write the adversarial examples (resumable)")
    add_model_arg(p)
    add_data_args(p)
    p.add_argument("--attack", required=True, metavar="NAME", help="one of: " + ", ".join(_attack_names()))
    p.add_argument("--eps", type=_positive_float, help="budget (L∞ or L2 radius, in [0,1] pixel units; 8/255 is accepted)")
    p.add_argument("--norm", choices=("linf", "l2"), help="threat model of the attacks whose norm can be chosen (PGD family, "
                   "AutoAttack and its components): linf or l2 (default: the attack's registered norm)")
    p.add_argument("--steps", type=_positive_int, help="iterations")
    p.add_argument("--alpha", type=_positive_float, help="step size (PGD family)")
    p.add_argument("--restarts", type=_positive_int, help="random restarts (PGD family)")
    p.add_argument("--c", type=_positive_float, help="CW / NRF constant c")
    p.add_argument("--lr", type=_positive_float, help="Adam learning rate (CW, NRF)")
    p.add_argument("--out", required=True, metavar="FILE", help="adversarial examples (.safetensors); a .json summary goes beside it")
    p.add_argument("--masks", metavar="FILE", help="NRF family: a population split from `nonrobust split` (default: split each clean batch)")
    add_ib_args(p)
    add_run_args(p)
    p.set_defaults(func=cmd_attack, resume_hint=_RESUME)

    p = sub.add_parser("train", help="train a model (standard, PGD-AT, TRADES, MART, fast AT); resumable, torchrun-aware")
    p.add_argument("--preset", metavar="NAME", help="start from a recipe: " + ", ".join(_train_presets()) + "; flags override it")
    p.add_argument("--arch", metavar="NAME", help="architecture (see `nonrobust models list`)")
    p.add_argument("--arch-option", action="append", metavar="KEY=VALUE", help="architecture option, e.g. width=16 (repeatable)")
    p.add_argument("--data", metavar="NAME", help=_data_help())
    from .fields import default_of, help_of
    from .training import TrainConfig

    p.add_argument("--method", choices=_train_methods(), help=f"{help_of(TrainConfig, 'method')} (default {default_of(TrainConfig, 'method')})")
    add_settings(p, TrainConfig, _TRAIN_OPTIONS, flags={"train_subset": "n"})
    add_device_arg(p)
    p.add_argument("--out", required=True, metavar="DIR", help="run folder: config, checkpoints (last, best), metrics.jsonl, resumable state")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last complete epoch")
    p.set_defaults(func=cmd_train, resume_hint=_RESUME_TRAINING)

    p = sub.add_parser("split", help="split a layer's channels into robust and non-robust ones (information bottleneck)")
    add_model_arg(p)
    add_data_args(p)
    add_ib_args(p)
    p.add_argument("--stability", type=_positive_int, default=1, metavar="K",
                   help="also split with K−1 more noise seeds and report how the robust sets agree (K times the cost; default 1: off)")
    p.add_argument("--out", required=True, metavar="FILE", help="the split (.safetensors); a .json summary goes beside it")
    add_run_args(p)
    p.set_defaults(func=cmd_split, resume_hint=_RESUME)

    p = sub.add_parser("report", help="run every analysis (Tables 1–4, Fig. 2, 3, 5, σ²) and write DIR/report.html (resumable)")
    add_model_arg(p)
    add_data_args(p)
    add_report_args(p)
    p.set_defaults(func=cmd_report, resume_hint=_RESUME)

    p = sub.add_parser("evaluate", help="run one analysis of the report (and the attacks it needs) into DIR")
    p.add_argument("section", choices=_report_sections(), help="table1, table2 (feature accuracy, agreement), table3, table4 (attacks), "
                   "tsne (Fig. 2), featvis (Fig. 3), beta (Fig. 5), sigma (σ² against T)")
    add_model_arg(p)
    add_data_args(p)
    add_report_args(p)
    p.set_defaults(func=cmd_evaluate, resume_hint=_RESUME)

    p = sub.add_parser("demo", help="the whole analysis, trimmed to a few minutes on a CPU, on the shipped CIFAR-10 slice: the shipped "
                       "robust model, or --model yours (any CIFAR-10 classifier)")
    p.add_argument("--full", action="store_true", help="full size: the whole CIFAR-10 test set (needs --data-dir or $NONROBUST_DATA) and every attack")
    p.add_argument("--data-dir", metavar="DIR", help="where CIFAR-10 lives, for --full")
    add_model_arg(p, required=False)
    p.add_argument("--out", default="nonrobust-demo", metavar="DIR", help="report folder (default ./nonrobust-demo)")
    add_device_arg(p)
    p.set_defaults(func=cmd_demo, resume_hint=_RESUME)

    p = sub.add_parser("reproduce", help="train at the paper's settings, then split, tables and figures (resumable; for GPU users)")
    p.add_argument("--preset", required=True, choices=_reproduce_presets(), help="which experiment")
    p.add_argument("--out", required=True, metavar="DIR", help="folder: DIR/train (the run) and DIR/report")
    p.add_argument("--data-dir", metavar="DIR", help=DATA_DIR_HELP)
    p.add_argument("--epochs", type=_positive_int, help="train fewer epochs than the recipe (a smoke test)")
    p.add_argument("--first", "--n", dest="n", type=_positive_int, metavar="N", help="report on the first N test images only (--n: alias)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    add_device_arg(p)
    p.set_defaults(func=cmd_reproduce, resume_hint=_RESUME)

    p = sub.add_parser("inspect", help="what made an output: model, data and images, versions, seeds, settings, command line")
    p.add_argument("file", metavar="FILE", help="any output of nonrobust: a .json (summary, results.json), a .safetensors (adversarial "
                   "examples, a split, a checkpoint) or a training run folder")
    p.add_argument("--json", action="store_true", help="print the provenance block as JSON")
    p.set_defaults(func=cmd_inspect)

    p_models = sub.add_parser("models", help="list architectures and pretrained models, inspect layers")
    sub_models = p_models.add_subparsers(dest="models_command", metavar="ACTION")
    p = sub_models.add_parser("list", help="registered architectures and shipped pretrained models")
    p.set_defaults(func=cmd_models_list)
    p = sub_models.add_parser("convert", help="write a PyTorch state dict (.pt, read without running code) as a nonrobust checkpoint")
    p.add_argument("weights", metavar="IN.pt", help="the state dict (torch.save(model.state_dict()), possibly wrapped or prefixed)")
    p.add_argument("--arch", required=True, metavar="NAME", help="its architecture (see `nonrobust models list`)")
    p.add_argument("--out", required=True, metavar="FILE", help="the checkpoint to write (.safetensors)")
    from .foreign import ModelOptions

    add_settings(p, ModelOptions, _MODEL_OPTIONS[:3])
    p.add_argument("--input-shape", type=_positive_int, nargs=3, metavar=("C", "H", "W"),
                   help="the images it was trained on (default: the architecture's native size)")
    p.add_argument("--dataset", metavar="NAME", help="the data set it was trained on, for the record")
    p.add_argument("--classes", metavar="A,B,…", help="class names, comma-separated, for the record")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32", help="precision of the stored weights (default float32)")
    p.set_defaults(func=cmd_models_convert)
    p = sub_models.add_parser("layers", help="the layers a model can be split at")
    add_model_arg(p)
    p.add_argument("--input-shape", type=_positive_int, nargs=3, metavar=("C", "H", "W"),
                   help="image shape (default: the checkpoint's, or that of --data)")
    p.add_argument("--data", metavar="NAME", help="take the image shape from this data set instead: " + _data_help())
    p.add_argument("--data-dir", metavar="DIR", help=DATA_DIR_HELP)
    p.add_argument("--image-size", type=_positive_int, metavar="PX", help="resize the data's images to PX×PX")
    p.set_defaults(func=cmd_models_layers)
    return parser


def _stop_cleanly_on_sigterm() -> None:
    """Treat SIGTERM (``kill``, ``timeout``, a batch scheduler) like Ctrl-C: cleanup code runs, resume points stay."""
    import signal
    import threading

    def interrupt(signum: int, frame: FrameType | None) -> NoReturn:  # noqa: ARG001
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nonrobust`` command. Returns the exit code."""
    from .identity import COMMAND

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    COMMAND.set(["nonrobust", *map(str, argv)])  # recorded in the provenance of every output
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        # `nonrobust` or `nonrobust data` without an action: show the relevant help
        target = {"data": "data", "models": "models"}.get(args.command or "")
        if target:
            parser.parse_args([target, "--help"])
        parser.print_help()
        return 0 if args.command is None else 2
    from .runtime import setup_logging

    setup_logging(args.verbose)
    _stop_cleanly_on_sigterm()
    import warnings

    shown, stdout = warnings.showwarning, sys.stdout
    if not args.debug:  # a library warning is one line, not a source location and its code
        warnings.showwarning = lambda message, *_, **__: print(f"warning: {message}", file=sys.stderr)
    if int(os.environ.get("RANK", "0")) > 0:  # under torchrun rank 0 prints the results
        sys.stdout = open(os.devnull, "w")
    try:
        return int(func(args) or 0)
    except UserError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = getattr(args, "resume_hint", None)
        print(f"interrupted: {hint}" if hint else "interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = shown
        if sys.stdout is not stdout:
            sys.stdout.close()
            sys.stdout = stdout
        _leave_process_group()


def _leave_process_group() -> None:
    """Leave the process group a command under torchrun joined (training leaves its own)."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
