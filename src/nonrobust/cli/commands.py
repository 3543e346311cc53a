"""One function per command: each wires its parsed arguments to the library and prints what it returns."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError

if TYPE_CHECKING:


    from ..report import ReportSettings
from .options import _REPORT_OPTIONS, _ib_config, _nrf_attack, attack_settings, load_model_and_data, model_options, settings_from, torch_dtype


# --------------------------------------------------------------------------- commands
def cmd_data_prepare(args: argparse.Namespace) -> int:
    from .. import data

    path = data.prepare(args.name, args.data_dir, download=not args.no_download)
    print(f"{args.name}: ready in {path}")
    return 0


def cmd_data_info(args: argparse.Namespace) -> int:
    from .. import data

    ds = data.load_dataset(args.data, args.split, args.data_dir, n=args.n, image_size=args.image_size, order=args.order)
    counts = ds.labels.bincount(minlength=ds.num_classes).tolist()
    print(f"{ds.name} [{ds.split}]: {len(ds)} images of shape {tuple(ds.input_shape)}, {ds.num_classes} classes")
    print("per class: " + ", ".join(f"{c}={k}" for c, k in zip(ds.classes, counts, strict=True)))
    return 0


def cmd_attack(args: argparse.Namespace) -> int:
    from .. import attacks, streams

    model, meta, ds, device = load_model_and_data(args)
    spec = attacks.ATTACKS[attacks.attack_name(args.attack)]
    overrides = attack_settings(args)
    attack = _nrf_attack(args, model, spec.name, overrides) if spec.needs_split else attacks.make_attack(spec.name, **overrides)
    summary = streams.attack_to_file(model, ds, attack, args.out, batch_size=args.batch_size, device=device, seed=args.seed)
    p = summary["perturbation"]
    print(f"{summary['attack']['name']} ({summary['attack']['norm']}, eps {attacks.budget_text(summary['attack'].get('eps'))}) on {summary['n']} images: "
          f"clean {summary['clean_accuracy']:.2%}, robust {summary['robust_accuracy']:.2%}, "
          f"L∞ max {p['linf_max']:.4f}, L2 median {p['l2_median']:.4f}")
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.json')}")
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from ..split import split_model
    from ..streams import split_dataset

    model, meta, ds, device = load_model_and_data(args)
    split = split_model(model, args.layer or meta.split_layer)
    config = _ib_config(args)
    s = split_dataset(split, ds, config, args.out, batch_size=args.batch_size, device=device, stability=args.stability)
    acc = s["accuracy"]
    print(f"{config.protocol} split at {split.layer} (beta {config.beta}) on {s['n']} images: "
          f"{s['robust_channels_mean']:.1f} robust / {s['nonrobust_channels_mean']:.1f} non-robust of {s['channels']} channels (mean per image)")
    print(f"accuracy from Z {acc['int']:.2%}, from Z_r {acc['robust']:.2%}, from Z_nr {acc['nonrobust']:.2%}")
    if "stability" in s:
        from ..bottleneck import describe_agreement

        print(describe_agreement(s["stability"]))
    if "mask_labels" in s:
        m = s["mask_labels"]
        print(f"masks made with {m['source']} labels: Z_r predicts them for {m['robust_predicts_mask_label']:.2%} of the images, "
              f"Z_nr for {m['nonrobust_predicts_mask_label']:.2%}")
    if config.protocol != "population" and config.labels == "true":  # what Z_r's figure is worth: the controls beside it
        from ..io import load_tensors
        from ..sanity import mask_baselines

        masks = load_tensors(args.out, keys=("robust_mask",))[0]["robust_mask"]
        b = mask_baselines(split, ds.batches(args.batch_size, device=device), masks, seed=config.seed)
        print(f"controls on the same images: Z_r of a random mask of each image's size {b['random_subset']:.2%}, of the label oracle "
              f"(each image's channels contributing most to its true label's logit, no bottleneck) {b['label_oracle']:.2%}; "
              f"the model itself {b['int']:.2%}")
        if b["robust"] > b["int"] or b["label_oracle"] >= b["robust"]:
            print("caution: the masks are made with the true labels"
                  + (", and Z_r is more accurate than the model itself: it reads the label back" if b["robust"] > b["int"] else "")
                  + (", and a label-conditioned choice with no bottleneck does as well" if b["label_oracle"] >= b["robust"] else "")
                  + "; Z_r's accuracy is not evidence of robust features (`nonrobust evaluate sanity` runs every control)")
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.json')}")
    return 0


_TRAIN_OPTIONS = ("data_dir", "train_subset", "image_size", "epochs", "batch_size", "lr", "momentum", "weight_decay", "schedule", "eps",
                  "steps", "alpha", "beta", "inner", "flip", "eval_n", "eval_pgd_steps", "amp", "channels_last", "seed", "init")
"""TrainConfig fields that are options of `nonrobust train` (``train_subset`` is ``--n``)."""


def cmd_train(args: argparse.Namespace) -> int:
    from .. import training

    overrides = {"arch": args.arch, "data": args.data, "method": args.method, "device": args.device,
                 **settings_from(args, training.TrainConfig, _TRAIN_OPTIONS)}
    if args.arch_option:
        from ..foreign import parse_arch_options

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
    from ..report import ReportSettings, profile

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
    from ..report.readings import label_caveat, sanity_summary

    chance = 1 / len(results["classes"])
    for protocol, row in h["table1"].items():
        print(f"  Table 1 ({protocol}) under {ref}: Int {row['int']:.1%}, R {row['robust']:.1%}, NR {row['nonrobust']:.1%}"
              f"{label_caveat(results['table1'][protocol], chance)}")
    if results.get("sanity"):
        print(f"  {sanity_summary(results['sanity'], ref, chance)}")
    for protocol, r in h["table2"].items():
        if r["nonrobust_agrees"] is not None:
            print(f"  Table 2 ({protocol}): NR features predict {ref}'s label on {r['nonrobust_agrees']:.1%} of the {r['fooled']} "
                  "images misclassified under it")
    page = (out / "report.html").resolve()
    print(f"wrote {page} ({results['wall_seconds']:.0f} s): open it in a browser; {page.parent / 'results.json'} holds every number")


def _report_and_headline(settings: ReportSettings, out: str, only: tuple[str, ...] | None = None) -> int:
    from ..report import run_report

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
    from ..reproduce import reproduce

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

    from ..identity import describe_provenance, read_provenance

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
    from .. import models

    print("architectures (nonrobust train --arch NAME):")
    for spec in models.ARCHITECTURES.values():
        tag = " [paper]" if spec.paper else ""
        print(f"  {spec.name:<16} split at {spec.default_layer:<12} {spec.notes}{tag}")
    print("pretrained models (--model NAME):")
    for name, pre in models.PRETRAINED.items():
        print(f"  {name:<20} {pre.description}{'' if pre.available() else '  (not shipped in this build)'}")
        if pre.available():
            meta = pre.meta()
            for label, line in (("trained", models.training_summary(meta)), ("measured", models.headline(meta))):
                if line:
                    print(f"  {'':<20} {label}: {line}")
    return 0


def cmd_models_convert(args: argparse.Namespace) -> int:
    from .. import foreign

    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    model, meta = foreign.convert(args.weights, args.arch, args.out, model_options(args),
                                  input_shape=tuple(args.input_shape) if args.input_shape else None, dataset=args.dataset,
                                  classes=classes, dtype=torch_dtype(args.dtype))
    print(f"wrote {args.out}: {meta.describe()}, input {'×'.join(map(str, meta.input_shape))}, split layer {meta.split_layer}, "
          f"normalisation mean {[round(v, 4) for v in meta.mean]} std {[round(v, 4) for v in meta.std]}")
    return 0


def cmd_models_layers(args: argparse.Namespace) -> int:
    from .. import data, loading, split

    shape = tuple(args.input_shape) if args.input_shape else None
    if shape is None and args.data:
        shape = data.load_dataset(args.data, "test", args.data_dir, n=1, image_size=args.image_size).input_shape
    model, meta = loading.resolve(args.model, input_shape=shape, options=model_options(args), data_dir=args.data_dir)
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


