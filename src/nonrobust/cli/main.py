"""The parser of every command and :func:`main`: user mistakes end in one ``error:`` line and a non-zero exit code."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any, Callable, NoReturn, Sequence

from .._version import __version__
from ..errors import UserError
from ..fields import DATA_DIR_HELP
from .commands import (
    _TRAIN_OPTIONS,
    cmd_attack,
    cmd_data_info,
    cmd_data_prepare,
    cmd_demo,
    cmd_evaluate,
    cmd_inspect,
    cmd_models_convert,
    cmd_models_layers,
    cmd_models_list,
    cmd_report,
    cmd_reproduce,
    cmd_split,
    cmd_train,
)
from .options import (
    _MODEL_OPTIONS,
    _attack_names,
    _data_help,
    _positive_int,
    _report_sections,
    _reproduce_presets,
    _train_methods,
    _train_presets,
    add_attack_settings,
    add_data_args,
    add_device_arg,
    add_ib_args,
    add_model_arg,
    add_report_args,
    add_run_args,
    add_settings,
)

if TYPE_CHECKING:
    from types import FrameType


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


def _add_data(sub: Any) -> None:
    """The ``data`` commands."""
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


def _add_attack(sub: Any) -> None:
    """The ``attack`` command."""
    p = sub.add_parser("attack", help="attack a data set and write the adversarial examples (resumable)")
    add_model_arg(p)
    add_data_args(p)
    p.add_argument("--attack", required=True, metavar="NAME", help="one of: " + ", ".join(_attack_names()))
    add_attack_settings(p)
    p.add_argument("--out", required=True, metavar="FILE", help="adversarial examples (.safetensors); a .json summary goes beside it")
    p.add_argument("--masks", metavar="FILE", help="NRF family: a population split from `nonrobust split` (default: split each clean batch)")
    add_ib_args(p)
    add_run_args(p)
    p.set_defaults(func=cmd_attack, resume_hint=_RESUME)


def _add_train(sub: Any) -> None:
    """The ``train`` command."""
    p = sub.add_parser("train", help="train a model (standard, PGD-AT, TRADES, MART, fast AT); resumable, torchrun-aware")
    p.add_argument("--preset", metavar="NAME", help="start from a recipe: " + ", ".join(_train_presets()) + "; flags override it")
    p.add_argument("--arch", "--model", dest="arch", metavar="NAME", help="architecture: a registered name (see `nonrobust models "
                   "list`) or path/to/file.py:function, a factory of your own nn.Module (its file runs; start from given weights "
                   "with --init)")
    p.add_argument("--arch-option", action="append", metavar="KEY=VALUE", help="architecture option, e.g. width=16 (repeatable)")
    p.add_argument("--data", metavar="NAME", help=_data_help())
    from ..fields import default_of, help_of
    from ..training import TrainConfig

    p.add_argument("--method", choices=_train_methods(), help=f"{help_of(TrainConfig, 'method')} (default {default_of(TrainConfig, 'method')})")
    add_settings(p, TrainConfig, _TRAIN_OPTIONS, flags={"train_subset": "n"})
    add_device_arg(p)
    p.add_argument("--out", required=True, metavar="DIR", help="run folder: config, checkpoints (last, best), metrics.jsonl, resumable state")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last complete epoch")
    p.set_defaults(func=cmd_train, resume_hint=_RESUME_TRAINING)


def _add_split(sub: Any) -> None:
    """The ``split`` command."""
    p = sub.add_parser("split", help="split a layer's channels into robust and non-robust ones (information bottleneck)")
    add_model_arg(p)
    add_data_args(p)
    add_ib_args(p)
    p.add_argument("--stability", type=_positive_int, default=1, metavar="K",
                   help="also split with K−1 more noise seeds and report how the robust sets agree (K times the cost; default 1: off)")
    p.add_argument("--out", required=True, metavar="FILE", help="the split (.safetensors); a .json summary goes beside it")
    add_run_args(p)
    p.set_defaults(func=cmd_split, resume_hint=_RESUME)


def _add_report(sub: Any) -> None:
    """The ``report`` command."""
    p = sub.add_parser("report", help="run every analysis (Tables 1–4, Fig. 2, 3, 5, σ²) and write DIR/report.html (resumable)")
    add_model_arg(p)
    add_data_args(p)
    add_report_args(p)
    p.set_defaults(func=cmd_report, resume_hint=_RESUME)


def _add_evaluate(sub: Any) -> None:
    """The ``evaluate`` command."""
    p = sub.add_parser("evaluate", help="run one analysis of the report (and the attacks it needs) into DIR")
    p.add_argument("section", choices=_report_sections(), help="table1, table2 (feature accuracy, agreement), table3, table4 (attacks), "
                   "sanity (the controls: random masks, label oracle, model randomisation, adaptive attacks, layers), tsne (Fig. 2), "
                   "featvis (Fig. 3), beta (Fig. 5), sigma (σ² against T)")
    add_model_arg(p)
    add_data_args(p)
    add_report_args(p)
    p.set_defaults(func=cmd_evaluate, resume_hint=_RESUME)


def _add_demo(sub: Any) -> None:
    """The ``demo`` command."""
    p = sub.add_parser("demo", help="the whole analysis, trimmed to a few minutes on a CPU, on the shipped CIFAR-10 slice: the shipped "
                       "robust model, or --model yours (any CIFAR-10 classifier)")
    p.add_argument("--full", action="store_true", help="full size: the whole CIFAR-10 test set (needs --data-dir or $NONROBUST_DATA) and every attack")
    p.add_argument("--data-dir", metavar="DIR", help="where CIFAR-10 lives, for --full")
    add_model_arg(p, required=False)
    p.add_argument("--out", default="nonrobust-demo", metavar="DIR", help="report folder (default ./nonrobust-demo)")
    add_device_arg(p)
    p.set_defaults(func=cmd_demo, resume_hint=_RESUME)


def _add_reproduce(sub: Any) -> None:
    """The ``reproduce`` command."""
    p = sub.add_parser("reproduce", help="train at the paper's settings, then split, tables and figures (resumable; for GPU users)")
    p.add_argument("--preset", required=True, choices=_reproduce_presets(), help="which experiment")
    p.add_argument("--out", required=True, metavar="DIR", help="folder: DIR/train (the run) and DIR/report")
    p.add_argument("--data-dir", metavar="DIR", help=DATA_DIR_HELP)
    p.add_argument("--epochs", type=_positive_int, help="train fewer epochs than the recipe (a smoke test)")
    p.add_argument("--first", "--n", dest="n", type=_positive_int, metavar="N", help="report on the first N test images only (--n: alias)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    add_device_arg(p)
    p.set_defaults(func=cmd_reproduce, resume_hint=_RESUME)


def _add_inspect(sub: Any) -> None:
    """The ``inspect`` command."""
    p = sub.add_parser("inspect", help="what made an output: model, data and images, versions, seeds, settings, command line")
    p.add_argument("file", metavar="FILE", help="any output of nonrobust: a .json (summary, results.json), a .safetensors (adversarial "
                   "examples, a split, a checkpoint) or a training run folder")
    p.add_argument("--json", action="store_true", help="print the provenance block as JSON")
    p.set_defaults(func=cmd_inspect)


def _add_models(sub: Any) -> None:
    """The ``models`` commands."""
    p_models = sub.add_parser("models", help="list architectures and pretrained models, inspect layers")
    sub_models = p_models.add_subparsers(dest="models_command", metavar="ACTION")
    p = sub_models.add_parser("list", help="registered architectures and shipped pretrained models")
    p.set_defaults(func=cmd_models_list)
    p = sub_models.add_parser("convert", help="write a PyTorch state dict (.pt, read without running code) as a nonrobust checkpoint")
    p.add_argument("weights", metavar="IN.pt", help="the state dict (torch.save(model.state_dict()), possibly wrapped or prefixed)")
    p.add_argument("--arch", required=True, metavar="NAME", help="its architecture (see `nonrobust models list`)")
    p.add_argument("--out", required=True, metavar="FILE", help="the checkpoint to write (.safetensors)")
    from ..foreign import ModelOptions

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
    for add in (_add_data, _add_attack, _add_train, _add_split, _add_report, _add_evaluate, _add_demo, _add_reproduce, _add_inspect, _add_models):
        add(sub)
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
    from ..identity import COMMAND

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
    from ..runtime import setup_logging

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
