"""Trust: the tool used by a hostile or careless user (issue 7).

* bad input to every command and to the key public functions: one ``error:`` line, exit code 2,
  no traceback and no output file (nor ``.partial`` file) left behind;
* untrusted files (pickles posing as data, checkpoints or split files) are refused unexecuted;
* crashes: ``train``, ``attack`` and ``split`` killed with SIGKILL leave no half-written output
  and a rerun ends with exactly the result of an uninterrupted run;
* reproducibility: the same seeded command twice gives bit-identical results;
* concurrency: two reports at once, in different folders or the same one.

docs/robustness.md lists every case with what the tool does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from nonrobust import attacks, bottleneck, data, models, streams
from nonrobust.bottleneck import IBConfig
from nonrobust.errors import UserError
from nonrobust.io import load_tensors, save_tensors
from nonrobust.split import split_model

from helpers import (  # noqa: E402,F401
    ERROR_LINE, assert_one_error_line, assert_tensor_files_equal, cli, comparable, kill_on, progress_rows, without_command, write_npz,
    write_tiny_model,
)

# Subprocesses run single-threaded: on a loaded 2-core machine two OpenMP threads per process
# make a tiny model hundreds of times slower, and timings (hence kill points) erratic.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


# --------------------------------------------------------------------------- files of a careless user


class _Evil:
    """Unpickling this object runs ``touch MARKER``: it stands for arbitrary code in an untrusted file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _npz(path: Path, x_train, y_train, x_test, y_test, **extra) -> None:
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, **extra)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Good and bad data sets and checkpoints, written once for the module (outputs go to each test's tmp_path)."""
    d = tmp_path_factory.mktemp("world")
    g = np.random.default_rng(0)

    def images(n, *shape):
        return g.integers(0, 256, (n, *shape), dtype=np.uint8)

    _npz(d / "rgb.npz", images(20, 16, 16, 3), np.arange(20) % 10, images(12, 16, 16, 3), np.arange(12) % 10)
    _npz(d / "grey.npz", images(8, 16, 16), np.arange(8) % 2, images(8, 16, 16), np.arange(8) % 2)
    _npz(d / "empty.npz", images(8, 16, 16, 3), np.arange(8) % 2, np.zeros((0, 16, 16, 3), np.uint8), np.zeros(0, np.int64))
    _npz(d / "label-over.npz", images(8, 16, 16, 3), np.arange(8) % 3, images(8, 16, 16, 3), np.arange(8), classes=np.array(["a", "b", "c"]))
    _npz(d / "label-negative.npz", images(8, 16, 16, 3), np.arange(8) % 2, images(8, 16, 16, 3), np.array([0, 1, 2, 3, 4, 5, 6, -1]))
    _npz(d / "float-images.npz", g.random((8, 16, 16, 3)), np.arange(8) % 2, g.random((8, 16, 16, 3)), np.arange(8) % 2)
    _npz(d / "four-channels.npz", images(4, 8, 8, 4), np.zeros(4, int), images(4, 8, 8, 4), np.zeros(4, int))
    _npz(d / "short-labels.npz", images(4, 8, 8, 3), np.zeros(4, int), images(4, 8, 8, 3), np.zeros(3, int))
    _npz(d / "float-labels.npz", images(4, 8, 8, 3), np.zeros(4), images(4, 8, 8, 3), np.zeros(4))
    np.savez(d / "no-keys.npz", a=np.zeros(3))
    np.save(d / "array.npy", images(4, 8, 8, 3))
    blob = (d / "rgb.npz").read_bytes()
    (d / "truncated.npz").write_bytes(blob[: len(blob) // 2])
    (d / "text.npz").write_text("x_train,y_train\n1,2\n")

    torch.manual_seed(0)
    model = models.build("tiny_cnn")
    models.save(model, d / "tiny.safetensors", models.make_meta(model, dataset="synthetic"))
    five = models.build("tiny_cnn", num_classes=5)
    models.save(five, d / "tiny-5-classes.safetensors", models.make_meta(five, dataset="synthetic"))
    blob = (d / "tiny.safetensors").read_bytes()
    (d / "truncated.safetensors").write_bytes(blob[: len(blob) // 2])
    (d / "random.safetensors").write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (d / "empty.safetensors").write_bytes(b"")
    torch.save(model.state_dict(), d / "model.pt")
    save_tensors(d / "not-a-checkpoint.safetensors", {"x": torch.zeros(3)}, {"format": "nonrobust-ib", "layer": "features.5"})
    (d / "folder.safetensors").mkdir()
    return d


def assert_no_files(folder: Path) -> None:
    left = sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
    assert left == [], f"left behind: {left}"


# --------------------------------------------------------------------------- bad input to the commands

TINY_REPORT = ["--n", "12", "--batch-size", "12", "--attacks", "fgsm", "--no-table4", "--l2-steps", "2", "--ib-iterations", "2",
               "--population-n", "12", "--population-iterations", "2", "--betas", "0", "--beta-n", "12", "--tsne-n", "12",
               "--featvis-images", "0", "--device", "cpu"]


def _attack(model="{d}/tiny.safetensors", data="npz:{d}/rgb.npz", *extra, out="{o}/adv.safetensors"):
    return ["attack", "--model", model, "--data", data, "--attack", "pgd", "--steps", "1", "--device", "cpu", *extra, "--out", out]


def _split(model="{d}/tiny.safetensors", data="npz:{d}/rgb.npz", *extra, out="{o}/split.safetensors"):
    return ["split", "--model", model, "--data", data, "--iterations", "2", "--device", "cpu", *extra, "--out", out]


def _train(data="npz:{d}/rgb.npz", *extra, out="{o}/run"):
    return ["train", "--arch", "tiny_cnn", "--data", data, "--epochs", "1", "--steps", "1", "--eval-n", "4", "--device", "cpu", *extra, "--out", out]


def _report(model="{d}/tiny.safetensors", data="npz:{d}/rgb.npz", *extra, command="report", out="{o}/report"):
    head = ["evaluate", "table3"] if command == "evaluate" else [command]
    return [*head, "--model", model, "--data", data, *TINY_REPORT, *extra, "--out", out]


BAD_INPUT = [
    # attack: checkpoints
    ("attack/missing checkpoint", _attack("{d}/missing.safetensors"), "no such file"),
    ("attack/truncated checkpoint", _attack("{d}/truncated.safetensors"), "not a readable safetensors file"),
    ("attack/random-bytes checkpoint", _attack("{d}/random.safetensors"), "not a readable safetensors file"),
    ("attack/empty checkpoint", _attack("{d}/empty.safetensors"), "not a readable safetensors file"),
    ("attack/pickled .pt checkpoint", _attack("{d}/model.pt"), "pickled"),
    ("attack/npz as checkpoint", _attack("{d}/rgb.npz"), "NumPy .npz"),
    ("attack/split file as checkpoint", _attack("{d}/not-a-checkpoint.safetensors"), "not a nonrobust checkpoint"),
    ("attack/folder as checkpoint", _attack("{d}/folder.safetensors"), "no such file"),
    ("attack/5-class model on 10-class data", _attack("{d}/tiny-5-classes.safetensors"), "the data has 10 classes, the model predicts 5"),
    # attack: data
    ("attack/grey data on an RGB model", _attack(data="npz:{d}/grey.npz"), "3-channel images, the data has 1 channels"),
    ("attack/label above the class count", _attack(data="npz:{d}/label-over.npz"), "out of range for 3 classes"),
    ("attack/negative label", _attack(data="npz:{d}/label-negative.npz"), "negative label -1"),
    ("attack/0 test images", _attack(data="npz:{d}/empty.npz"), "the data set is empty"),
    ("attack/float images in the npz", _attack(data="npz:{d}/float-images.npz"), "images must be uint8"),
    ("attack/missing npz", _attack(data="npz:{d}/missing.npz"), "no such file"),
    ("attack/truncated npz", _attack(data="npz:{d}/truncated.npz"), "not a readable .npz file"),
    ("attack/text file as npz", _attack(data="npz:{d}/text.npz"), "this file is not a zip"),
    ("attack/npz without x_test", _attack(data="npz:{d}/no-keys.npz"), "no 'x_test' array"),
    ("attack/data name without npz:", _attack(data="{d}/rgb.npz"), "unknown data set"),
    # attack: settings
    ("attack/eps 0", _attack("{d}/tiny.safetensors", "npz:{d}/rgb.npz", "--eps", "0"), "--eps: expected a positive number"),
    ("attack/eps negative", _attack("{d}/tiny.safetensors", "npz:{d}/rgb.npz", "--eps", "-0.1"), "--eps: expected a positive number"),
    ("attack/eps nan", _attack("{d}/tiny.safetensors", "npz:{d}/rgb.npz", "--eps", "nan"), "--eps: expected a positive number"),
    ("attack/steps 0", _attack("{d}/tiny.safetensors", "npz:{d}/rgb.npz", "--steps", "0"), "--steps: expected a positive integer"),
    ("attack/n 0", _attack("{d}/tiny.safetensors", "npz:{d}/rgb.npz", "--n", "0"), "--first/--n: expected a positive integer"),
    ("attack/batch size 0", _attack("{d}/tiny.safetensors", "npz:{d}/rgb.npz", "--batch-size", "0"), "--batch-size: expected a positive integer"),
    ("attack/unknown attack", ["attack", "--model", "{d}/tiny.safetensors", "--data", "npz:{d}/rgb.npz", "--attack", "nope", "--out", "{o}/a.safetensors"],
     "unknown attack 'nope'"),
    ("attack/setting the attack lacks", ["attack", "--model", "{d}/tiny.safetensors", "--data", "npz:{d}/rgb.npz", "--attack", "cw-l2",
                                         "--eps", "0.5", "--out", "{o}/a.safetensors"], "has no setting(s) eps"),
    ("attack/unknown layer", _attack("{d}/tiny.safetensors", "npz:{d}/rgb.npz", "--attack", "nrf-linf", "--layer", "features.99"),
     "no layer 'features.99'"),
    ("attack/layer without a 4-D output", _attack("{d}/tiny.safetensors", "npz:{d}/rgb.npz", "--attack", "nrf-linf", "--iterations", "2",
                                                   "--layer", "classifier"), "4-D feature map"),
    ("attack/masks from a checkpoint", _attack("{d}/tiny.safetensors", "npz:{d}/rgb.npz", "--attack", "nrf-linf",
                                               "--masks", "{d}/tiny.safetensors"), "not a bottleneck split file"),
    ("attack/masks truncated", _attack("{d}/tiny.safetensors", "npz:{d}/rgb.npz", "--attack", "nrf-linf",
                                       "--masks", "{d}/truncated.safetensors"), "not a readable safetensors file"),
    ("attack/out is a folder", _attack(out="{o}"), "is a folder"),
    ("attack/out ends in .json", _attack(out="{o}/adv.json"), "cannot end in .json"),
    ("attack/out under a file", _attack(out="{d}/rgb.npz/adv.safetensors"), "cannot write"),
    ("attack/seed not a number", _attack("{d}/tiny.safetensors", "npz:{d}/rgb.npz", "--seed", "x"), "--seed: invalid int value"),
    # split
    ("split/truncated checkpoint", _split("{d}/truncated.safetensors"), "not a readable safetensors file"),
    ("split/grey data on an RGB model", _split(data="npz:{d}/grey.npz"), "3-channel images, the data has 1 channels"),
    ("split/5-class model on 10-class data", _split("{d}/tiny-5-classes.safetensors"), "the model predicts 5"),
    ("split/0 test images", _split(data="npz:{d}/empty.npz"), "the data set is empty"),
    ("split/label above the class count", _split(data="npz:{d}/label-over.npz"), "out of range"),
    ("split/unknown layer", _split("{d}/tiny.safetensors", "npz:{d}/rgb.npz", "--layer", "features.99"), "no layer 'features.99'"),
    ("split/layer without a 4-D output", _split("{d}/tiny.safetensors", "npz:{d}/rgb.npz", "--layer", "classifier"), "4-D feature map"),
    ("split/population, layer without a 4-D output", _split("{d}/tiny.safetensors", "npz:{d}/rgb.npz", "--protocol", "population",
                                                            "--layer", "classifier"), "4-D feature map"),
    ("split/iterations 0", _split("{d}/tiny.safetensors", "npz:{d}/rgb.npz", "--iterations", "0"), "--iterations: expected a positive integer"),
    ("split/beta negative", _split("{d}/tiny.safetensors", "npz:{d}/rgb.npz", "--beta", "-1"), "--beta: expected a number ≥ 0"),
    ("split/n 0", _split("{d}/tiny.safetensors", "npz:{d}/rgb.npz", "--n", "0"), "--first/--n: expected a positive integer"),
    ("split/out ends in .json", _split(out="{o}/split.json"), "cannot end in .json"),
    ("split/out is a folder", _split(out="{o}"), "is a folder"),
    # train
    ("train/missing npz", _train("npz:{d}/missing.npz"), "no such file"),
    ("train/0 test images", _train("npz:{d}/empty.npz"), "the data set is empty"),
    ("train/negative label", _train("npz:{d}/label-negative.npz"), "negative label -1"),
    ("train/float images", _train("npz:{d}/float-images.npz"), "images must be uint8"),
    ("train/four channels", _train("npz:{d}/four-channels.npz"), "1 or 3 channels"),
    ("train/unknown arch", ["train", "--arch", "nope", "--data", "npz:{d}/rgb.npz", "--epochs", "1", "--out", "{o}/run"], "unknown architecture 'nope'"),
    ("train/unknown arch option", _train("npz:{d}/rgb.npz", "--arch-option", "foo=1"), "has no option 'foo'"),
    ("train/epochs 0", _train("npz:{d}/rgb.npz", "--epochs", "0"), "--epochs: expected a positive integer"),
    ("train/eps 0", _train("npz:{d}/rgb.npz", "--eps", "0"), "--eps: expected a positive number"),
    ("train/steps 0", _train("npz:{d}/rgb.npz", "--steps", "0"), "--steps: expected a positive integer"),
    ("train/n 0", _train("npz:{d}/rgb.npz", "--n", "0"), "--n: expected a positive integer"),
    ("train/fast AT with 3 steps", _train("npz:{d}/rgb.npz", "--method", "fast", "--steps", "3"), "takes 1 inner step"),
    ("train/bad schedule", _train("npz:{d}/rgb.npz", "--schedule", "bogus"), "bad schedule 'bogus'"),
    ("train/schedule with bad values", _train("npz:{d}/rgb.npz", "--schedule", "piecewise:4=1,2=0"),
     "bad schedule 'piecewise:4=1,2=0': give at least two knots"),
    ("train/negative momentum", _train("npz:{d}/rgb.npz", "--momentum", "-1"), "--momentum: expected a number ≥ 0"),
    ("train/resume with nothing to resume", _train("npz:{d}/rgb.npz", "--resume"), "no training run to resume"),
    ("train/out is a file", _train(out="{d}/rgb.npz"), "is a file, not a folder"),
    # data info
    ("data info/missing npz", ["data", "info", "--data", "npz:{d}/missing.npz"], "no such file"),
    ("data info/truncated npz", ["data", "info", "--data", "npz:{d}/truncated.npz"], "not a readable .npz file"),
    ("data info/text file as npz", ["data", "info", "--data", "npz:{d}/text.npz"], "this file is not a zip"),
    ("data info/checkpoint as npz", ["data", "info", "--data", "npz:{d}/tiny.safetensors"], "this file is not a zip"),
    ("data info/.npy as npz", ["data", "info", "--data", "npz:{d}/array.npy"], "it is a single .npy array"),
    ("data info/float images", ["data", "info", "--data", "npz:{d}/float-images.npz"], "images must be uint8"),
    ("data info/four channels", ["data", "info", "--data", "npz:{d}/four-channels.npz"], "1 or 3 channels"),
    ("data info/fewer labels than images", ["data", "info", "--data", "npz:{d}/short-labels.npz"], "3 labels for 4 images"),
    ("data info/float labels", ["data", "info", "--data", "npz:{d}/float-labels.npz"], "labels must be integers"),
    ("data info/0 test images", ["data", "info", "--data", "npz:{d}/empty.npz"], "the data set is empty"),
    ("data info/label above the class count", ["data", "info", "--data", "npz:{d}/label-over.npz"], "label 7 out of range for 3 classes"),
    ("data info/negative label", ["data", "info", "--data", "npz:{d}/label-negative.npz"], "negative label -1"),
    ("data info/npz without x_test", ["data", "info", "--data", "npz:{d}/no-keys.npz"], "no 'x_test' array"),
    ("data info/unknown name", ["data", "info", "--data", "nope"], "unknown data set 'nope'"),
    ("data info/missing folder", ["data", "info", "--data", "folder:{d}/missing"], "no such folder"),
    ("data info/folder without classes", ["data", "info", "--data", "folder:{d}/folder.safetensors"], "no class sub-folders"),
    ("data info/cifar10 not prepared", ["data", "info", "--data", "cifar10", "--data-dir", "{o}/nothing"], "nonrobust data prepare cifar10"),
    ("data info/n 0", ["data", "info", "--data", "npz:{d}/rgb.npz", "--n", "0"], "--first/--n: expected a positive integer"),
    # models layers
    ("models layers/missing", ["models", "layers", "--model", "{d}/missing.safetensors"], "no such file"),
    ("models layers/truncated", ["models", "layers", "--model", "{d}/truncated.safetensors"], "not a readable safetensors file"),
    ("models layers/random bytes", ["models", "layers", "--model", "{d}/random.safetensors"], "not a readable safetensors file"),
    ("models layers/pickled .pt", ["models", "layers", "--model", "{d}/model.pt"], "pickled PyTorch file"),
    ("models layers/npz", ["models", "layers", "--model", "{d}/rgb.npz"], "NumPy .npz"),
    ("models layers/folder", ["models", "layers", "--model", "{d}/folder.safetensors"], "no such file"),
    ("models layers/split file", ["models", "layers", "--model", "{d}/not-a-checkpoint.safetensors"], "not a nonrobust checkpoint"),
    # report / evaluate
    ("report/truncated checkpoint", _report("{d}/truncated.safetensors"), "not a readable safetensors file"),
    ("report/missing checkpoint", _report("{d}/missing.safetensors"), "no such file"),
    ("report/grey data on an RGB model", _report(data="npz:{d}/grey.npz"), "3-channel images, the data has 1 channels"),
    ("report/5-class model on 10-class data", _report("{d}/tiny-5-classes.safetensors"), "the model predicts 5"),
    ("report/0 test images", _report(data="npz:{d}/empty.npz"), "the data set is empty"),
    ("report/label above the class count", _report(data="npz:{d}/label-over.npz"), "out of range"),
    ("report/unknown layer", _report("{d}/tiny.safetensors", "npz:{d}/rgb.npz", "--layer", "nope"), "no layer 'nope'"),
    ("report/eps 0", _report("{d}/tiny.safetensors", "npz:{d}/rgb.npz", "--eps", "0"), "--eps: expected a positive number"),
    ("report/unknown attack", _report("{d}/tiny.safetensors", "npz:{d}/rgb.npz", "--attacks", "pgd-20,bogus"), "unknown report attack"),
    ("evaluate/unknown section", ["evaluate", "table9", "--model", "{d}/tiny.safetensors", "--data", "npz:{d}/rgb.npz", "--out", "{o}/r"],
     "invalid choice: 'table9'"),
    ("evaluate/truncated checkpoint", _report("{d}/truncated.safetensors", command="evaluate"), "not a readable safetensors file"),
    ("evaluate/0 test images", _report(data="npz:{d}/empty.npz", command="evaluate"), "the data set is empty"),
    ("report/layer without a 4-D output", _report("{d}/tiny.safetensors", "npz:{d}/rgb.npz", "--layer", "classifier"), "4-D feature map"),
    ("report/out is a file", _report(out="{d}/rgb.npz"), "not a folder"),
]


@pytest.mark.parametrize("case, argv, needle", [c if hasattr(c, "marks") else pytest.param(*c, id=c[0]) for c in BAD_INPUT])
def test_bad_input_gives_one_error_line_and_no_files(capsys, world, tmp_path, case, argv, needle):
    code, _, err = cli(capsys, *[a.format(d=world, o=tmp_path) for a in argv])
    assert_one_error_line(code, err, needle)
    assert_no_files(tmp_path)
    assert not list(world.rglob("*.partial")) and not list(world.rglob("*.progress.json"))


def test_parser_errors_start_with_error_too(capsys, world, tmp_path):
    code, _, err = cli(capsys, *[a.format(d=world, o=tmp_path) for a in _attack("{d}/tiny.safetensors", "npz:{d}/rgb.npz", "--eps", "0")])
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: ")


@pytest.mark.parametrize("argv", [
    ["attack", "--model", "{d}/tiny.safetensors", "--data", "npz:{d}/rgb.npz", "--attack", "nrf-linf", "--iterations", "2", "--layer", "classifier",
     "--device", "cpu", "--out", "{o}/adv.safetensors"],
    ["split", "--model", "{d}/truncated.safetensors", "--data", "npz:{d}/rgb.npz", "--out", "{o}/split.safetensors"],
], ids=["attack-nrf-at-linear-layer", "split-truncated-checkpoint"])
def test_real_process_stderr_ends_with_the_error(world, tmp_path, argv):
    """Through a real process: progress bars are closed before the error line, which comes last; exit code 2."""
    r = subprocess.run([sys.executable, "-m", "nonrobust", *[a.format(d=world, o=tmp_path) for a in argv]],
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert_one_error_line(r.returncode, r.stderr, "4-D feature map" if "classifier" in argv else "not a readable safetensors file")
    assert r.stderr.splitlines()[-1].startswith("error: ")  # the whole raw line, not only after a carriage return
    assert_no_files(tmp_path)


def test_a_failed_first_batch_leaves_nothing_to_block_the_corrected_rerun(capsys, world, tmp_path):
    """A mistake found in the first batch removes the .partial file, so fixing the option is enough (no 'delete it' dance)."""
    out = tmp_path / "adv.safetensors"
    base = ["attack", "--model", world / "tiny.safetensors", "--data", f"npz:{world / 'rgb.npz'}", "--attack", "nrf-linf", "--steps", "1",
            "--iterations", "2", "--device", "cpu", "--out", out]
    code, _, err = cli(capsys, *base, "--layer", "classifier")
    assert_one_error_line(code, err, "4-D feature map")
    code, _, err = cli(capsys, *base, "--layer", "features.5")
    assert code == 0, err
    assert load_tensors(out)[0]["x_adv"].shape == (12, 3, 16, 16)


def test_interrupted_attack_keeps_its_resume_point_and_starts_over_for_other_settings(capsys, world, tmp_path, monkeypatch):
    """Ctrl-C after the first batch: exit 130 with a last line that says how to resume, the finished rows stay in .partial;
    a rerun with other settings starts over (one warning line) and gives what a fresh run of those settings gives; the same
    settings finish the job with the result of an uninterrupted run."""
    out = tmp_path / "adv.safetensors"
    base = ["attack", "--model", world / "tiny.safetensors", "--data", f"npz:{world / 'rgb.npz'}", "--attack", "pgd", "--batch-size", "5",
            "--device", "cpu"]
    fresh = {steps: tmp_path / f"fresh-{steps}" / "adv.safetensors" for steps in ("2", "3")}
    for steps, path in fresh.items():
        assert cli(capsys, *base, "--steps", steps, "--out", path)[0] == 0
    run = attacks.PGD._run

    def interrupted(argv):
        calls = []

        def interrupt_second_batch(self, *args):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return run(self, *args)

        with monkeypatch.context() as m:
            m.setattr(attacks.PGD, "_run", interrupt_second_batch)
            code, _, err = cli(capsys, *argv, "--out", out)
        assert code == 130 and "rerun the same command to resume" in err.strip().splitlines()[-1], err
        assert json.loads(out.with_name(out.name + ".progress.json").read_text())["rows"] == 5

    interrupted([*base, "--steps", "2"])
    assert not out.exists()
    code, _, err = cli(capsys, *base, "--steps", "3", "--out", out)
    assert code == 0 and "started over" in err, err
    assert_tensor_files_equal(fresh["3"], out)
    interrupted([*base, "--steps", "2"])
    code, _, err = cli(capsys, *base, "--steps", "2", "--out", out)
    assert code == 0 and "started over" not in err, err
    assert_tensor_files_equal(fresh["2"], out)


def test_train_mistakes_leave_no_run_folder_to_trip_over(capsys, world, tmp_path):
    """A failed start writes no config.json, so the corrected command is not told to --resume a run that never began."""
    out = tmp_path / "run"
    code, _, err = cli(capsys, *[a.format(d=world, o=tmp_path) for a in _train("npz:{d}/missing.npz")])
    assert_one_error_line(code, err, "no such file")
    assert not out.exists()
    code, _, err = cli(capsys, *[a.format(d=world, o=tmp_path) for a in _train("npz:{d}/rgb.npz")])
    assert code == 0, err
    _, meta = models.load_with_meta(out / "last.safetensors")
    assert meta.arch == "tiny_cnn" and meta.metrics["epoch"] == 1 and meta.dataset == f"npz:{world / 'rgb.npz'}"


@pytest.mark.parametrize("command", ["attack", "split", "train", "report", "data info"])
def test_batch_size_larger_than_the_data_just_works(capsys, world, tmp_path, command):
    d, o = world, tmp_path
    argv = {
        "attack": _attack("{d}/tiny.safetensors", "npz:{d}/rgb.npz", "--batch-size", "1000"),
        "split": _split("{d}/tiny.safetensors", "npz:{d}/rgb.npz", "--batch-size", "1000"),
        "train": _train("npz:{d}/rgb.npz", "--batch-size", "1000", "--n", "20"),
        "report": ["evaluate", "table3", "--model", "{d}/tiny.safetensors", "--data", "npz:{d}/rgb.npz", *TINY_REPORT, "--batch-size", "1000",
                   "--out", "{o}/report"],
        "data info": ["data", "info", "--data", "npz:{d}/rgb.npz", "--n", "1000"],
    }[command]
    code, out, err = cli(capsys, *[a.format(d=d, o=o) for a in argv])
    assert code == 0, err
    if command == "attack":
        assert json.loads((o / "adv.json").read_text())["n"] == 12
    elif command == "split":
        assert load_tensors(o / "split.safetensors")[0]["sigma"].shape == (12, 16)
    elif command == "train":
        assert json.loads((o / "run" / "metrics.jsonl").read_text().splitlines()[0])["train_images"] == 20
    elif command == "report":
        assert json.loads((o / "report" / "results.json").read_text())["table3"]["n"] == 12
    else:
        assert "12 images" in out


def test_a_model_with_more_classes_than_the_data_is_accepted(capsys, world, tmp_path):
    """The converse of '5-class model on 10-class data': labels 0..1 fit a 10-class model's logits, so it runs (by design)."""
    model = models.build("tiny_cnn", in_channels=1)
    models.save(model, tmp_path / "grey10.safetensors", models.make_meta(model, input_shape=(1, 32, 32)))
    code, _, err = cli(capsys, "attack", "--model", tmp_path / "grey10.safetensors", "--data", f"npz:{world / 'grey.npz'}", "--attack", "fgsm",
                       "--device", "cpu", "--out", tmp_path / "adv.safetensors")
    assert code == 0, err
    assert json.loads((tmp_path / "adv.json").read_text())["n"] == 8


# --------------------------------------------------------------------------- bad input to the library


@pytest.fixture(scope="module")
def tiny():
    """A tiny_cnn, its split at the default layer, and a batch of images in [0,1] with labels."""
    torch.manual_seed(0)
    model = models.build("tiny_cnn").eval()
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    return model, split_model(model, "features.5"), x, torch.tensor([0, 1, 2, 3])


def _bad_pixels(x: torch.Tensor, kind: str) -> torch.Tensor:
    x = x.clone()
    if kind == "above 1":
        x[0, 0, 0, 0] = 1.5
    elif kind == "below 0":
        return x - 0.5  # a normalised tensor
    elif kind == "NaN":
        x[1, 2, 3, 4] = float("nan")
    elif kind == "inf":
        x[2, 1, 0, 0] = float("inf")
    return x


PIXELS = [("above 1", r"\[0,1\]"), ("below 0", r"\[0,1\]"), ("NaN", "NaN or inf"), ("inf", "NaN or inf")]


@pytest.mark.parametrize("name", ["fgsm", "pgd-20", "cw-l2", "nrf", "nrf-linf", "apgd-ce"])
@pytest.mark.parametrize("kind, match", PIXELS, ids=[p[0] for p in PIXELS])
def test_attacks_refuse_images_outside_0_1_or_not_finite(tiny, name, kind, match):
    model, split, x, y = tiny
    extra = {"split": split, "ib": IBConfig(iterations=2)} if attacks.ATTACKS[name].needs_split else {}
    attack = attacks.make_attack(name, **({} if name == "apgd-ce" else {"steps": 1}), **extra)
    with pytest.raises(UserError, match=match):
        attack(model, _bad_pixels(x, kind), y)
    assert not model.training and all(p.requires_grad for p in model.parameters())  # the model is left as it was


@pytest.mark.parametrize("kind", ["NaN", "inf"])
def test_bottleneck_refuses_non_finite_images(tiny, kind):
    _, split, x, y = tiny
    bad = _bad_pixels(x, kind)
    with pytest.raises(UserError, match="NaN or inf pixels"):
        bottleneck.distill(split, bad, y, IBConfig(iterations=2))
    with pytest.raises(UserError, match="NaN or inf pixels"):
        bottleneck.distill_population(split, [(bad, y)], IBConfig(protocol="population", iterations=2), progress=False)


@pytest.mark.parametrize("kind", ["above 1", "below 0"])
def test_bottleneck_warns_about_inputs_outside_0_1(tiny, kind):
    """A warning, not an error: the bottleneck also serves models whose inputs are not images (tests/test_bottleneck.py)."""
    _, split, x, y = tiny
    bad = _bad_pixels(x, kind)
    with pytest.warns(UserWarning, match=r"not \[0,1\].*normalised tensors"):
        bottleneck.distill(split, bad, y, IBConfig(iterations=2))
    with pytest.warns(UserWarning, match=r"not \[0,1\].*normalised tensors"):
        bottleneck.distill_population(split, [(bad, y)], IBConfig(protocol="population", iterations=2), progress=False)


@pytest.mark.parametrize("call, match", [
    (lambda: attacks.make_attack("pgd", eps=0.0), "eps must be > 0"),
    (lambda: attacks.make_attack("pgd", eps=-0.1), "eps must be > 0"),
    (lambda: attacks.make_attack("pgd", steps=0), "steps must be ≥ 1"),
    (lambda: attacks.make_attack("cw-l2", steps=0), "steps must be ≥ 1"),
    (lambda: attacks.make_attack("autoattack", eps=0.0), "eps must be > 0"),
    (lambda: attacks.make_attack("nope"), "unknown attack"),
    (lambda: IBConfig(iterations=0), "iterations must be ≥ 1"),
    (lambda: IBConfig(beta=-1.0), "beta must be ≥ 0"),
    (lambda: IBConfig(beta=float("nan")), "beta must be ≥ 0"),
    (lambda: data.load_dataset("cifar10-slice", n=0), "n must be at least 1"),
    (lambda: data.load_dataset("cifar10-slice", split="train"), "test images only"),
    (lambda: next(data.load_dataset("cifar10-slice", n=4).batches(0)), "batch size must be at least 1"),
    (lambda: data.ImageDataset("x", "test", torch.zeros(0, 3, 8, 8, dtype=torch.uint8), torch.zeros(0, dtype=torch.long), ["a"]),
     "the data set is empty"),
    (lambda: data.ImageDataset("x", "test", torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.tensor([0, 5]), ["a", "b"]),
     "label 5 out of range for 2 classes"),
    (lambda: data.ImageDataset("x", "test", torch.zeros(2, 4, 8, 8, dtype=torch.uint8), torch.tensor([0, 1]), ["a", "b"]), "C 1 or 3"),
    (lambda: data.ImageDataset("x", "test", torch.rand(2, 3, 8, 8), torch.tensor([0, 1]), ["a", "b"]), "uint8"),
], ids=["pgd eps 0", "pgd eps<0", "pgd steps 0", "cw steps 0", "autoattack eps 0", "unknown attack", "IB iterations 0", "IB beta<0",
        "IB beta nan", "dataset n 0", "slice train split", "batch size 0", "empty ImageDataset", "label out of range", "4 channels",
        "float images"])
def test_library_settings_are_checked(call, match):
    with pytest.raises(UserError, match=match):
        call()


def test_library_layers_and_outputs_are_checked(tiny, tmp_path):
    model, split, x, y = tiny
    with pytest.raises(UserError, match="no layer 'features.99'"):
        split_model(model, "features.99")
    with pytest.raises(UserError, match="4-D feature map .* such as features"):
        bottleneck.distill(split_model(model, "classifier"), x, y, IBConfig(iterations=2))
    ds = data.ImageDataset("x", "test", (x * 255).to(torch.uint8), y, [str(i) for i in range(10)])
    pgd = attacks.make_attack("fgsm")
    for out, match in ((tmp_path, "is a folder"), (tmp_path / "adv.json", "cannot end in .json")):
        with pytest.raises(UserError, match=match):
            streams.attack_to_file(model, ds, pgd, out, batch_size=2, progress=False)
        with pytest.raises(UserError, match=match):
            streams.split_dataset(split, ds, IBConfig(iterations=2), out, batch_size=2, progress=False)
    assert_no_files(tmp_path)
    # seeds of any size are taken modulo 2**64 instead of overflowing inside torch
    streams.attack_to_file(model, ds, attacks.make_attack("pgd", steps=1), tmp_path / "a.safetensors", batch_size=2, seed=10**30, progress=False)
    assert (tmp_path / "a.safetensors").is_file()


# --------------------------------------------------------------------------- untrusted files


def _evil_cifar(root: Path, marker: Path) -> None:
    import pickle

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in ("batches.meta", *(f"data_batch_{i}" for i in range(1, 6)), "test_batch"):
        with open(folder / name, "wb") as fh:
            pickle.dump({b"label_names": _Evil(marker), b"data": _Evil(marker), b"labels": [0]}, fh, protocol=2)


@pytest.mark.parametrize("what", ["cifar batch (data info)", "npz with a pickled object array (attack --data)", ".pt checkpoint (attack --model)",
                                  ".pt checkpoint (models layers)", ".pt as split file (attack --masks)",
                                  ".pt state dict (attack --model ARCH=)", ".pt state dict (models convert)"])
def test_untrusted_pickles_are_refused_through_the_cli_without_running(capsys, world, tmp_path, what):
    """The payload would create MARKER when unpickled (os.system via __reduce__); every command refuses it unexecuted."""
    marker = tmp_path / "MARKER"
    import pickle

    pickle.loads(pickle.dumps(_Evil(marker)))  # the payload is live ...
    assert marker.exists()
    marker.unlink()
    evil_pt = tmp_path / "evil.pt"
    torch.save({"state_dict": models.build("tiny_cnn").state_dict(), "x": _Evil(marker)}, evil_pt)
    evil_npz = tmp_path / "evil.npz"
    x = np.zeros((2, 16, 16, 3), np.uint8)
    np.savez(evil_npz, x_train=x, y_train=np.zeros(2, int), x_test=np.array([_Evil(marker)], dtype=object), y_test=np.zeros(1, int))
    _evil_cifar(tmp_path / "cifar", marker)
    argv, needle = {
        "cifar batch (data info)": (["data", "info", "--data", "cifar10", "--data-dir", tmp_path / "cifar"], "refusing to unpickle"),
        "npz with a pickled object array (attack --data)": (_attack("{d}/tiny.safetensors", f"npz:{evil_npz}"), "allow_pickle=False"),
        ".pt checkpoint (attack --model)": (_attack(str(evil_pt)), "pickled PyTorch file"),
        ".pt checkpoint (models layers)": (["models", "layers", "--model", evil_pt], "pickled PyTorch file"),
        ".pt as split file (attack --masks)": (_attack("{d}/tiny.safetensors", "npz:{d}/rgb.npz", "--attack", "nrf-linf", "--masks", str(evil_pt)),
                                               "not a readable safetensors file"),
        ".pt state dict (attack --model ARCH=)": (_attack(f"tiny_cnn={evil_pt}"), "refused: besides tensors it holds"),
        ".pt state dict (models convert)": (["models", "convert", evil_pt, "--arch", "tiny_cnn", "--out", "{o}/m.safetensors"], "refused"),
    }[what]
    code, _, err = cli(capsys, *[str(a).format(d=world, o=tmp_path) for a in argv])
    assert_one_error_line(code, err, needle)
    assert not marker.exists()  # ... but nothing ran it


# --------------------------------------------------------------------------- crashes (SIGKILL) and resume


def _popen(argv: list[str]) -> subprocess.Popen:
    """``python -m nonrobust ARGV`` in the background; its stderr goes to a temporary file (see :func:`_stderr`)."""
    import tempfile

    err = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen([sys.executable, "-m", "nonrobust", *map(str, argv)], stdout=subprocess.DEVNULL, stderr=err, text=True, env=ENV)
    proc.errfile = err
    return proc


def _stderr(proc: subprocess.Popen) -> str:
    proc.errfile.seek(0)
    return proc.errfile.read()


def _assert_absent_or_complete(out: Path, rows: int) -> None:
    if out.exists():
        t, _ = load_tensors(out)  # a readable safetensors file with every row
        assert all(v.shape[0] == rows for v in t.values())
    summary = out.with_suffix(".json")
    if summary.exists():
        assert json.loads(summary.read_text())["n"] == rows


def _streamed_command_survives_kills(tmp_path: Path, argv: list[str], rows: int) -> None:
    """Shared body of the attack and split kill tests: SIGKILL after the first batch, then again when the resumed run has
    half the rows (observed in the progress record), check the files each time, rerun, compare with an uninterrupted run."""
    whole, killed = tmp_path / "whole.safetensors", tmp_path / "killed.safetensors"
    final = subprocess.run([sys.executable, "-m", "nonrobust", *map(str, argv), "--out", str(whole)], capture_output=True, text=True, env=ENV)
    assert final.returncode == 0, final.stderr
    for at_least in (1, rows // 2):
        landed = kill_on([*argv, "--out", killed], lambda at_least=at_least: progress_rows(killed) >= at_least, env=ENV)
        assert landed and not killed.exists(), f"the kill at {at_least} rows did not land mid-run"
        assert killed.with_name(killed.name + ".partial").is_file() and progress_rows(killed) < rows  # the resume point
        _assert_absent_or_complete(killed, rows)
    final = subprocess.run([sys.executable, "-m", "nonrobust", *map(str, argv), "--out", str(killed)], capture_output=True, text=True, env=ENV)
    assert final.returncode == 0, final.stderr
    assert "started over" not in final.stderr
    assert_tensor_files_equal(whole, killed)
    a, b = (json.loads(p.with_suffix(".json").read_text()) for p in (whole, killed))
    for summary in (a, b):
        summary.pop("seconds_this_run", None)
    assert without_command(a) == without_command(b)
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob("*.progress.json"))


@pytest.fixture(scope="module")
def crash_world(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("crash")
    write_npz(d / "data.npz", 96, 128, seed=3)
    write_tiny_model(d / "tiny.safetensors")
    return d


@pytest.mark.slow
def test_killed_attack_resumes_to_the_same_tensors(crash_world, tmp_path):
    argv = ["attack", "--model", crash_world / "tiny.safetensors", "--data", f"npz:{crash_world / 'data.npz'}", "--attack", "pgd",
            "--steps", "30", "--batch-size", "8", "--seed", "5", "--device", "cpu"]
    _streamed_command_survives_kills(tmp_path, argv, rows=128)


@pytest.mark.slow
def test_killed_split_resumes_to_the_same_tensors(crash_world, tmp_path):
    argv = ["split", "--model", crash_world / "tiny.safetensors", "--data", f"npz:{crash_world / 'data.npz'}", "--iterations", "100",
            "--batch-size", "8", "--seed", "5", "--device", "cpu"]
    _streamed_command_survives_kills(tmp_path, argv, rows=128)


@pytest.mark.slow
def test_killed_training_resumes_to_the_same_weights(crash_world, tmp_path):
    base = ["train", "--arch", "tiny_cnn", "--data", f"npz:{crash_world / 'data.npz'}", "--epochs", "6", "--batch-size", "8", "--steps", "3",
            "--eval-n", "16", "--eval-pgd-steps", "2", "--seed", "5", "--device", "cpu"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = subprocess.run([sys.executable, "-m", "nonrobust", *map(str, base), "--out", str(whole)], capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr

    def epochs() -> list[dict]:
        try:
            return [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
        except (OSError, ValueError):
            return []

    for i, at_least in enumerate((1, 3)):  # SIGKILL once epoch 1 is recorded, then once the resumed run has recorded epoch 3
        landed = kill_on([*base, "--out", killed, *(["--resume"] if i else [])], lambda at_least=at_least: len(epochs()) >= at_least, env=ENV)
        assert landed and len(epochs()) < 6, f"the kill after epoch {at_least} did not land mid-run"
        for name in ("last.safetensors", "best.safetensors"):
            if (killed / name).exists():
                models.load(killed / name)  # complete and loadable
        if (killed / "state.safetensors").exists():
            load_tensors(killed / "state.safetensors")
        json.loads((killed / "config.json").read_text())
    final = subprocess.run([sys.executable, "-m", "nonrobust", *map(str, base), "--out", str(killed), "--resume"],
                           capture_output=True, text=True, env=ENV)
    assert final.returncode == 0, final.stderr
    a, b = (models.load(p / "last.safetensors").state_dict() for p in (whole, killed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert len((killed / "metrics.jsonl").read_text().splitlines()) == 6


# --------------------------------------------------------------------------- reproducibility


@pytest.mark.parametrize("argv", [
    ["attack", "--attack", "pgd", "--steps", "3"],
    ["attack", "--attack", "nrf-linf", "--steps", "2", "--iterations", "4"],
    ["split", "--iterations", "6"],
    ["split", "--iterations", "6", "--protocol", "population"],
], ids=["attack pgd", "attack nrf-linf", "split paper", "split population"])
def test_same_seed_gives_bit_identical_results(capsys, world, tmp_path, argv):
    common = ["--model", world / "tiny.safetensors", "--data", f"npz:{world / 'rgb.npz'}", "--batch-size", "5", "--seed", "11", "--device", "cpu"]
    summaries = []
    for name in ("a", "b"):
        code, _, err = cli(capsys, *argv, *common, "--out", tmp_path / name / "out.safetensors")
        assert code == 0, err
        s = json.loads((tmp_path / name / "out.json").read_text())
        s.pop("seconds_this_run", None)
        summaries.append(without_command(s))  # the command names another --out
    assert summaries[0] == summaries[1]
    assert_tensor_files_equal(tmp_path / "a" / "out.safetensors", tmp_path / "b" / "out.safetensors")


# --------------------------------------------------------------------------- concurrency

REPORT = ["report", "--model", "cifar10-small-at", "--data", "cifar10-slice", "--n", "24", "--batch-size", "12", "--attacks", "fgsm,pgd-20",
          "--no-table4", "--l2-steps", "3", "--ib-iterations", "10", "--population-n", "24", "--population-iterations", "4", "--betas", "0", "1",
          "--beta-n", "12", "--tsne-n", "24", "--featvis-images", "0", "--device", "cpu"]


def _comparable(folder: Path) -> dict:
    return comparable(json.loads((folder / "results.json").read_text()))


@pytest.mark.slow
def test_concurrent_reports_into_different_folders(tmp_path):
    """Two reports into different folders at once: both succeed, with equal results."""
    procs = [_popen([*REPORT, "--out", tmp_path / name]) for name in ("one", "two")]
    for p in procs:
        p.wait(timeout=300)
        assert p.returncode == 0, _stderr(p)
    assert _comparable(tmp_path / "one") == _comparable(tmp_path / "two")


@pytest.mark.slow
def test_concurrent_reports_into_one_folder(tmp_path):
    """A second report into a folder another report holds (DIR/.lock) fails at once, clearly; the first is unharmed."""
    shared = tmp_path / "shared"
    first = _popen([*REPORT, "--out", shared])
    deadline = time.monotonic() + 120
    while not (shared / ".lock").exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert first.poll() is None, "the first report ended before the second could start"
    second = subprocess.run([sys.executable, "-m", "nonrobust", *map(str, REPORT), "--out", str(shared)],
                            capture_output=True, text=True, env=ENV, timeout=300)
    line = assert_one_error_line(second.returncode, second.stderr, "is being written by another nonrobust process")
    assert line.startswith("error: ") and str(shared) in line and f"pid {first.pid}" in line
    first.wait(timeout=300)
    assert first.returncode == 0, _stderr(first)
    assert json.loads((shared / "results.json").read_text())["n"] == 24 and (shared / "report.html").is_file()
    assert not (shared / ".lock").exists()
