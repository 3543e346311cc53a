"""The command line: commands work end to end on tiny files; user mistakes give one line and exit 2."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from nonrobust import models

from helpers import cli, write_npz, write_tiny_model  # noqa: E402


@pytest.fixture()
def files(tmp_path):
    """A tiny RGB and a grey npz data set, and a tiny_cnn checkpoint."""
    write_npz(tmp_path / "rgb.npz", 20, 12)
    write_npz(tmp_path / "grey.npz", 8, 8, classes=2, channels=1)
    write_tiny_model(tmp_path / "tiny.safetensors")
    return tmp_path


def test_help_lists_the_commands():
    """Each command is listed as a command (its own line in the list), not merely a word of the description."""
    out = subprocess.run([sys.executable, "-m", "nonrobust", "--help"], capture_output=True, text=True, check=True).stdout
    listed = re.findall(r"^ {4}(\w+)\s{2,}\S", out, flags=re.M)
    assert set(listed) >= {"data", "models", "attack", "split", "train", "report", "evaluate", "demo", "reproduce", "inspect"}, listed


def test_models_list_and_layers(capsys, files):
    code, out, _ = cli(capsys, "models", "list")
    assert code == 0 and "vgg16" in out and "features.41" in out and "wrn28_10" in out
    assert "cifar10-vgg16-at" in out and "not shipped" not in out
    for name, spec in models.PRETRAINED.items():  # each shipped model: how it was trained, then what it measured
        listed = out[out.index(f"  {name} "):].splitlines()
        assert listed[1].strip() == f"trained: {models.training_summary(spec.meta())}" and " epochs" in listed[1]
        assert listed[2].strip().startswith("measured: clean") and "(n=10000)" in listed[2]
    code, out, _ = cli(capsys, "models", "layers", "--model", files / "tiny.safetensors")
    default = next(line for line in out.splitlines() if "<- default split layer" in line).split()
    assert code == 0 and default[:3] == ["features.5", "BatchNorm2d", "16×16×16"]


def test_attack_and_split_end_to_end(capsys, files):
    data = f"npz:{files / 'rgb.npz'}"
    code, out, err = cli(capsys, "attack", "--model", files / "tiny.safetensors", "--data", data, "--attack", "pgd",
                         "--steps", 2, "--batch-size", 5, "--device", "cpu", "--out", files / "adv.safetensors")
    assert code == 0, err
    summary = json.loads((files / "adv.json").read_text())
    assert summary["n"] == 12 and summary["attack"]["norm"] == "linf"
    assert summary["perturbation"]["linf_max"] <= 8 / 255 + 1e-6
    code, out, err = cli(capsys, "split", "--model", files / "tiny.safetensors", "--data", data, "--iterations", 5,
                         "--out", files / "split.safetensors")
    assert code == 0, err
    assert "robust" in out
    s = json.loads((files / "split.json").read_text())
    from nonrobust.io import load_tensors

    t, _ = load_tensors(files / "split.safetensors")
    # the stored masks follow the rule σ² > T, and the summary counts and accuracies come from them
    assert torch.equal(t["robust_mask"].bool(), t["sigma"].square() > t["threshold"][:, None])  # the max rule: one T per image
    assert s["channels"] == 16 and s["robust_channels_mean"] == pytest.approx(float(t["robust_mask"].float().sum(1).mean()))
    model = models.load(files / "tiny.safetensors")
    npz = np.load(files / "rgb.npz")
    with torch.no_grad():
        pred = model(torch.from_numpy(npz["x_test"]).permute(0, 3, 1, 2).float().div(255)).argmax(1)
    assert torch.equal(t["pred"], pred) and s["accuracy"]["int"] == pytest.approx(float((pred == t["y"]).float().mean()))
    code, out, err = cli(capsys, "attack", "--model", files / "tiny.safetensors", "--data", data, "--attack", "nrf",
                         "--steps", 3, "--iterations", 3, "--out", files / "nrf.safetensors")
    assert code == 0, err
    assert json.loads((files / "nrf.json").read_text())["attack"]["form"] == "surrogate"


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["attack", "--model", "{d}/missing.safetensors", "--data", "npz:{d}/rgb.npz", "--attack", "pgd", "--out", "{d}/o.st"], "no such file"),
        (["attack", "--model", "{d}/tiny.safetensors", "--data", "npz:{d}/grey.npz", "--attack", "pgd", "--out", "{d}/o.st"], "channel"),
        (["attack", "--model", "{d}/tiny.safetensors", "--data", "npz:{d}/rgb.npz", "--attack", "nope", "--out", "{d}/o.st"], "unknown attack"),
        (["attack", "--model", "{d}/rgb.npz", "--data", "npz:{d}/rgb.npz", "--attack", "pgd", "--out", "{d}/o.st"], "safetensors"),
        (["split", "--model", "{d}/tiny.safetensors", "--data", "npz:{d}/rgb.npz", "--layer", "features.99", "--out", "{d}/o.st"], "features.99"),
        (["split", "--model", "{d}/tiny.safetensors", "--data", "npz:{d}/missing.npz", "--out", "{d}/o.st"], "missing.npz"),
        (["attack", "--model", "{d}/tiny.safetensors", "--data", "npz:{d}/rgb.npz", "--attack", "pgd", "--device", "cuda:7", "--out", "{d}/o.st"], "cuda"),
    ],
)
def test_user_mistakes_give_one_line_and_exit_2(capsys, files, argv, needle):
    code, out, err = cli(capsys, *[a.format(d=files) for a in argv])
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err
    assert not (files / "o.st").exists()


def test_bad_numbers_are_refused_by_the_parser(files):
    r = subprocess.run([sys.executable, "-m", "nonrobust", "attack", "--model", str(files / "tiny.safetensors"), "--data", "cifar10",
                        "--attack", "pgd", "--eps", "0", "--out", str(files / "o.st")], capture_output=True, text=True)
    assert r.returncode == 2 and "positive" in r.stderr and "Traceback" not in r.stderr


USER_MODEL = '''
import torch
from torch import nn


class Net(nn.Module):
    """A model nonrobust has never seen: one grey channel, 3 classes, a functional tail."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.body(x), 1), 1))


def make():
    return Net()
'''


def test_a_user_model_on_a_grey_data_set(capsys, tmp_path):
    (tmp_path / "net.py").write_text(USER_MODEL)
    g = np.random.default_rng(1)
    np.savez(tmp_path / "grey.npz", x_train=g.integers(0, 256, (6, 20, 20), dtype=np.uint8), y_train=np.arange(6) % 3,
             x_test=g.integers(0, 256, (9, 20, 20), dtype=np.uint8), y_test=np.arange(9) % 3)
    spec, data = f"{tmp_path / 'net.py'}:make", f"npz:{tmp_path / 'grey.npz'}"
    code, out, err = cli(capsys, "split", "--model", spec, "--data", data, "--iterations", 5, "--out", tmp_path / "s.safetensors")
    assert code == 0, err
    assert "body.1" in out  # the last BatchNorm is the default split layer of a model we did not write
    code, out, err = cli(capsys, "attack", "--model", spec, "--data", data, "--attack", "nrf-linf", "--steps", 2,
                         "--iterations", 3, "--out", tmp_path / "a.safetensors")
    assert code == 0, err
    s = json.loads((tmp_path / "a.json").read_text())
    assert s["n"] == 9 and s["perturbation"]["linf_max"] <= 8 / 255 + 1e-6


def test_split_label_control_and_noise_samples(capsys, files):
    """`split --labels random-wrong --ib-samples 2` records its settings and how often Z_r / Z_nr follow the masks' labels."""
    code, out, err = cli(capsys, "split", "--model", files / "tiny.safetensors", "--data", f"npz:{files / 'rgb.npz'}", "--iterations", 10,
                         "--ib-samples", 2, "--labels", "random-wrong", "--protocol", "batch-free", "--device", "cpu",
                         "--out", files / "wrong.safetensors")
    assert code == 0, err
    s = json.loads((files / "wrong.json").read_text())
    assert s["config"]["samples"] == 2 and s["config"]["labels"] == "random-wrong"
    from nonrobust.io import load_tensors

    t, _ = load_tensors(files / "wrong.safetensors")
    assert (t["labels"] != t["y"]).all()
    assert s["mask_labels"]["robust_predicts_mask_label"] == pytest.approx(float((t["pred_robust"] == t["labels"]).float().mean()))
    assert "masks made with random-wrong labels" in out


@pytest.mark.parametrize("protocol", ["batch-free", "population"])
def test_split_stability_over_seeds(capsys, files, protocol):
    code, out, err = cli(capsys, "split", "--model", files / "tiny.safetensors", "--data", f"npz:{files / 'rgb.npz'}", "--iterations", 8,
                         "--protocol", protocol, "--stability", 3, "--device", "cpu", "--out", files / f"st-{protocol}.safetensors")
    assert code == 0, err
    st = json.loads((files / f"st-{protocol}.json").read_text())["stability"]
    assert st["seeds"] == 3 and st["images"] == (12 if protocol == "batch-free" else 1)
    assert 0 <= st["jaccard_mean"] <= 1 and st["robust_every_seed"] <= st["robust_any_seed"]
    assert "stability over 3 noise seeds" in out


def test_split_with_every_diagnostic_at_once(capsys, files):
    """The command issue 14 names: stability, the label control, the channel threshold rule and noise samples together."""
    code, out, err = cli(capsys, "split", "--model", files / "tiny.safetensors", "--data", f"npz:{files / 'rgb.npz'}", "--iterations", 6,
                         "--stability", 3, "--labels", "random-wrong", "--threshold", "channel", "--ib-samples", 4, "--device", "cpu",
                         "--out", files / "all.safetensors")
    assert code == 0, err
    s = json.loads((files / "all.json").read_text())
    assert s["config"]["threshold"] == "channel" and s["config"]["samples"] == 4 and s["config"]["labels"] == "random-wrong"
    assert {"stability", "mask_labels"} <= set(s)
    from nonrobust.io import load_tensors

    t, _ = load_tensors(files / "all.safetensors")
    assert t["threshold"].shape == t["sigma"].shape and torch.equal(t["robust_mask"].bool(), t["sigma"].square() > t["threshold"])
    code, _, err = cli(capsys, "split", "--model", files / "tiny.safetensors", "--data", f"npz:{files / 'rgb.npz'}", "--threshold", "median",
                       "--out", files / "bad.safetensors")
    assert code == 2 and "threshold rule" in err and not (files / "bad.safetensors").exists()


def test_a_model_and_data_that_do_not_match_are_named_in_one_line_warnings(capsys, tmp_path):
    """A CIFAR-10 model on a 4-class folder of 48 px images runs, and says twice, in one line each, what does not match."""
    import numpy as np
    from PIL import Image

    for c in ("ant", "bee", "cow", "dog"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        Image.fromarray(np.full((48, 48, 3), 100, np.uint8)).save(tmp_path / "imgs" / c / "0.png")
    code, _, err = cli(capsys, "attack", "--model", "cifar10-small-at", "--data", f"folder:{tmp_path / 'imgs'}", "--attack", "fgsm",
                       "--device", "cpu", "--out", tmp_path / "a.safetensors")
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert any("trained on 32×32 images, the data's are 48×48: resize them with --image-size 32" in line for line in lines), err
    assert any("the data's classes (ant, bee, cow, dog) are not the model's (airplane, automobile, bird, cat, …)" in line
               for line in lines), err
    assert "Traceback" not in err and "UserWarning" not in err
