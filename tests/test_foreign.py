"""Models from outside nonrobust: state dicts read without running code, their conversion, RobustBench's glue."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nonrobust import foreign, loading, models
from nonrobust.errors import UserError
from nonrobust.foreign import ModelOptions, parse_arch_options, parse_normalize

from helpers import assert_one_error_line, cli


def _tiny(seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = models.build("tiny_cnn", **kw).eval()
    with torch.no_grad():  # BatchNorm statistics that are not the defaults, so that a lost buffer shows
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module, shape=(3, 32, 32)) -> bool:
    x = torch.rand(4, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.equal(a(x), b(x))


@pytest.mark.parametrize("layout", ["raw", "state_dict", "model+module.", "net+_orig_mod.", "nested", "extra entries"])
def test_state_dict_layouts_load_to_the_same_model(tmp_path, layout):
    model = _tiny()
    sd = model.state_dict()
    wrapped = {
        "raw": sd,
        "state_dict": {"state_dict": sd, "epoch": 7, "optimizer": {"lr": 0.1}},
        "model+module.": {"model": {f"module.{k}": v for k, v in sd.items()}},
        "net+_orig_mod.": {"net": {f"_orig_mod.{k}": v for k, v in sd.items()}},
        "nested": {"checkpoint": 1, "model": {"state_dict": {f"model.module.{k}": v for k, v in sd.items()}}},
        "extra entries": {**sd, "version": 3},
    }[layout]
    path = tmp_path / "w.pt"
    torch.save(wrapped, path)
    loaded, meta = loading.resolve(f"tiny_cnn={path}")
    assert _same_outputs(model, loaded)
    assert meta.arch == "tiny_cnn" and meta.num_classes == 10 and meta.recipe["normalisation"] == "the weights' own normalize buffers"


def test_foreign_normalisation_classes_and_channels(tmp_path):
    """Weights without nonrobust's normalize buffers need --normalize; classes and channels are read from the weights."""
    mean, std = foreign.NORMALIZATIONS["cifar10"]
    model = _tiny(num_classes=7, mean=mean, std=std)
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("normalize.")}
    torch.save(sd, tmp_path / "w.pth")
    with pytest.raises(UserError, match="--normalize"):
        loading.resolve(f"tiny_cnn={tmp_path / 'w.pth'}")
    loaded, meta = loading.resolve(f"tiny_cnn={tmp_path / 'w.pth'}", options=ModelOptions(normalize="cifar10"))
    assert meta.num_classes == 7 and meta.mean == pytest.approx(list(mean)) and _same_outputs(model, loaded)
    grey = _tiny(in_channels=1, mean=0.5, std=0.25)
    torch.save(grey.state_dict(), tmp_path / "grey.pt")
    loaded, meta = loading.resolve(f"tiny_cnn={tmp_path / 'grey.pt'}", input_shape=(1, 28, 28))
    assert meta.input_shape == (1, 28, 28) and _same_outputs(grey, loaded, (1, 28, 28))
    with pytest.raises(UserError, match="weights do not match .* 7 classes|wrong shape"):
        loading.resolve(f"tiny_cnn={tmp_path / 'w.pth'}", options=ModelOptions(normalize="none", num_classes=5))


def test_mismatched_weights_name_missing_and_unexpected_keys(tmp_path):
    torch.save(models.build("small_cnn").state_dict(), tmp_path / "small.pt")
    with pytest.raises(UserError) as err:
        loading.resolve(f"tiny_cnn={tmp_path / 'small.pt'}")
    text = str(err.value)
    assert "missing" in text and "unexpected" in text and "first:" in text and "\n" not in text
    with pytest.raises(UserError, match="unknown architecture 'resnet50'"):
        loading.resolve(f"resnet50={tmp_path / 'small.pt'}")
    with pytest.raises(UserError, match="no option 'depth'"):
        loading.resolve(f"tiny_cnn={tmp_path / 'small.pt'}", options=ModelOptions(arch_options="depth=34"))


class _Payload:
    """Unpickling this creates ``marker`` (any code could run instead)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_files_with_code_are_refused_unexecuted(tmp_path):
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": _tiny().state_dict(), "hook": _Payload(marker)}, evil)
    import pickle

    pickle.loads(pickle.dumps(_Payload(marker)))  # the payload is live ...
    assert marker.exists()
    marker.unlink()
    with pytest.raises(UserError, match="refused: besides tensors it holds"):
        loading.resolve(f"tiny_cnn={evil}")
    assert not marker.exists()  # ... but nothing ran it
    torch.save(_tiny(), tmp_path / "whole.pt")  # a whole pickled model is code too
    with pytest.raises(UserError, match="torch.save\\(model.state_dict\\(\\)"):
        foreign.read_state_dict(tmp_path / "whole.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x80\x02not a pickle at all")
    with pytest.raises(UserError, match="not a readable PyTorch file"):
        foreign.read_state_dict(tmp_path / "junk.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(UserError, match="no state dict found"):
        foreign.read_state_dict(tmp_path / "list.pt")


def test_safetensors_state_dict(tmp_path):
    from safetensors.torch import save_file

    model = _tiny()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    loaded, _ = loading.resolve(f"tiny_cnn={tmp_path / 'w.safetensors'}")
    assert _same_outputs(model, loaded)
    with pytest.raises(UserError, match="pass it as ARCH="):  # the file alone is not a nonrobust checkpoint
        loading.resolve(tmp_path / "w.safetensors")


def test_convert_round_trips_to_identical_outputs(tmp_path):
    model = _tiny(num_classes=4)
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "w.pt")
    foreign.convert(tmp_path / "w.pt", "tiny_cnn", tmp_path / "m.safetensors", dataset="shapes", classes=["a", "b", "c", "d"])
    loaded, meta = models.load_with_meta(tmp_path / "m.safetensors")
    assert _same_outputs(model, loaded)
    import hashlib

    assert meta.recipe["sha256"] == hashlib.sha256((tmp_path / "w.pt").read_bytes()).hexdigest()
    assert meta.classes == ["a", "b", "c", "d"] and meta.dataset == "shapes" and meta.split_layer == "features.5"


@pytest.mark.parametrize("text, channels, expected", [
    ("none", 1, ([0.0], [1.0])),
    ("imagenet", 3, ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])),
    ("0.5,0.25", 3, ([0.5] * 3, [0.25] * 3)),
    ("0.1,0.2,0.3,1,2,3", 3, ([0.1, 0.2, 0.3], [1.0, 2.0, 3.0])),
])
def test_parse_normalize(text, channels, expected):
    mean, std = parse_normalize(text, channels)
    assert mean == pytest.approx(expected[0]) and std == pytest.approx(expected[1])


@pytest.mark.parametrize("text, message", [("cifar10", "3-channel"), ("1,2,3", "give 2 numbers"), ("0.5,0", "> 0"), ("bogus", "one of")])
def test_parse_normalize_errors(text, message):
    with pytest.raises(UserError, match=message):
        parse_normalize(text, 1)


def test_parse_arch_options():
    assert parse_arch_options("depth=34, widen=10,dropout=0.3,bias=true,act=relu") == {
        "depth": 34, "widen": 10, "dropout": 0.3, "bias": True, "act": "relu"}
    assert parse_arch_options(None) == {}
    with pytest.raises(UserError, match="KEY=VALUE"):
        parse_arch_options("depth")


def test_cli_split_attack_report_and_convert_on_a_state_dict(capsys, tmp_path):
    """A plain torch.save(model.state_dict()) goes straight into the commands, and through `models convert`."""
    import numpy as np

    model = _tiny()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.arange(16) % 10, x_test=x, y_test=np.arange(16) % 10)
    m, d = f"tiny_cnn={tmp_path / 'w.pt'}", f"npz:{tmp_path / 'd.npz'}"
    common = ["--data", d, "--batch-size", "8", "--device", "cpu"]
    code, _, err = cli(capsys, "split", "--model", m, *common, "--iterations", "3", "--out", tmp_path / "s.safetensors")
    assert code == 0, err
    code, _, err = cli(capsys, "attack", "--model", m, *common, "--attack", "pgd", "--steps", "2", "--out", tmp_path / "a.safetensors")
    assert code == 0, err
    assert json.loads((tmp_path / "a.json").read_text())["n"] == 16
    code, out, err = cli(capsys, "report", "--model", m, *common, "--attacks", "fgsm", "--no-table4", "--ib-iterations", "3",
                         "--stability", "1", "--population-n", "8", "--population-iterations", "2", "--betas", "0", "1", "--beta-n", "8",
                         "--tsne-n", "16", "--featvis-images", "0", "--out", tmp_path / "r")
    assert code == 0, err
    assert json.loads((tmp_path / "r" / "results.json").read_text())["arch"] == "tiny_cnn"
    code, out, err = cli(capsys, "models", "convert", tmp_path / "w.pt", "--arch", "tiny_cnn", "--out", tmp_path / "m.safetensors")
    assert code == 0 and "wrote" in out, err
    assert _same_outputs(model, models.load(tmp_path / "m.safetensors"))
    code, out, _ = cli(capsys, "models", "layers", "--model", m)
    assert code == 0 and "features.5" in out
    code, _, err = cli(capsys, "split", "--model", f"tiny_cnn={tmp_path / 'w.pt'}", *common, "--normalize", "1,2,3", "--out", tmp_path / "x")
    assert_one_error_line(code, err, "give 2 numbers")


# --------------------------------------------------------------------------- RobustBench (through a stand-in package)
STAND_IN = '''
"""A stand-in for RobustBench's robustbench.utils.load_model, written by tests/test_foreign.py (RobustBench itself
needs torchvision, which this machine cannot install without a CUDA build of torch)."""
from pathlib import Path

import torch

from nonrobust import models


def load_model(model_name, model_dir="./models", dataset="cifar10", threat_model="Linf"):
    path = Path(model_dir) / dataset / threat_model / f"{model_name}.pt"
    if not path.is_file():
        raise ConnectionError(f"could not download {model_name}: no network")  # what an offline download meets
    model = models.build("tiny_cnn", mean=0.0, std=1.0)
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()
'''


@pytest.fixture
def robustbench_stand_in(tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "robustbench"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "utils.py").write_text(STAND_IN)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for name in ("robustbench", "robustbench.utils"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return tmp_path / "rb-models"


def test_robustbench_offline_model_dir(robustbench_stand_in, capsys):
    weights = robustbench_stand_in / "cifar10" / "Linf" / "Toy2024.pt"
    weights.parent.mkdir(parents=True)
    model = _tiny()
    with torch.no_grad():
        model.normalize.mean.zero_()
        model.normalize.std.fill_(1.0)
    torch.save(model.state_dict(), weights)
    loaded, meta = loading.resolve("robustbench:Toy2024", options=ModelOptions(model_dir=str(robustbench_stand_in)))
    assert _same_outputs(model, loaded)
    assert meta.arch == "robustbench:Toy2024:cifar10:Linf" and meta.input_shape == (3, 32, 32) and meta.split_layer == "features.5"
    code, out, _ = cli(capsys, "models", "layers", "--model", "robustbench:Toy2024:cifar10:linf", "--model-dir", robustbench_stand_in)
    assert code == 0 and "features.5" in out


def test_robustbench_errors(robustbench_stand_in, monkeypatch, capsys):
    code, _, err = cli(capsys, "models", "layers", "--model", "robustbench:Missing2024", "--model-dir", robustbench_stand_in)
    assert_one_error_line(code, err, str(robustbench_stand_in / "cifar10" / "Linf" / "Missing2024.pt"))
    assert "no network" in err
    with pytest.raises(UserError, match="threat model must be one of"):
        loading.resolve("robustbench:X:cifar10:L3")
    with pytest.raises(UserError, match="data set must be one of"):
        loading.resolve("robustbench:X:mnist")
    monkeypatch.setitem(sys.modules, "robustbench", None)  # as if it were not installed
    monkeypatch.setitem(sys.modules, "robustbench.utils", None)
    code, _, err = cli(capsys, "models", "layers", "--model", "robustbench:Toy2024")
    assert_one_error_line(code, err, "pip install robustbench")


# --------------------------------------------------------------------------- a ResNet of one's own at other image sizes
USER_RESNET = '''
"""An ImageNet-style ResNet (stem stride 2 + max-pool, four stages, global pooling), narrow for a test."""
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential() if stride == 1 and cin == cout else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + self.short(x))


class ResNet(nn.Module):
    def __init__(self, classes=3, width=4):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        w = [width, 2 * width, 4 * width, 8 * width]
        self.layer1, self.layer2 = Block(w[0], w[0], 1), Block(w[0], w[1], 2)
        self.layer3, self.layer4 = Block(w[1], w[2], 2), Block(w[2], w[3], 2)
        self.fc = nn.Linear(w[3], classes)

    def forward(self, x):
        x = self.stem((x - self.mean) / self.std)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def model():
    torch.manual_seed(0)
    m = ResNet()
    m.nonrobust_split_layer = "layer4.bn2"
    return m
'''


def _image_folder(root: Path, side: int, per_class: int = 2) -> Path:
    from PIL import Image

    rng = np.random.default_rng(side)
    for split in ("train", "test"):
        for c in ("cat", "dog", "fox"):
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


@pytest.mark.parametrize("side, grid", [(64, "2×2"), (224, "7×7")])
def test_own_resnet_at_other_image_sizes(capsys, tmp_path, side, grid):
    """A ResNet from a Python file on folder: data at 64 and 224 px: layers, split, attack and a trimmed report."""
    (tmp_path / "resnet_user.py").write_text(USER_RESNET)
    folder = _image_folder(tmp_path / "imgs", side)
    m, d = f"{tmp_path / 'resnet_user.py'}:model", f"folder:{folder}"
    code, out, err = cli(capsys, "models", "layers", "--model", m, "--data", d)
    assert code == 0, err
    default = next(line for line in out.splitlines() if "<- default split layer" in line).split()
    assert default[:3] == ["layer4.bn2", "BatchNorm2d", f"32×{grid}"]
    common = ["--data", d, "--batch-size", "6", "--device", "cpu"]
    code, out, err = cli(capsys, "split", "--model", m, *common, "--iterations", "4", "--out", tmp_path / "s.safetensors")
    assert code == 0, err
    assert json.loads((tmp_path / "s.json").read_text())["channels"] == 32
    code, _, err = cli(capsys, "attack", "--model", m, *common, "--attack", "nrf-linf", "--steps", "2", "--iterations", "4",
                       "--out", tmp_path / "a.safetensors")
    assert code == 0, err
    assert json.loads((tmp_path / "a.json").read_text())["perturbation"]["linf_max"] <= 8 / 255 + 1e-6
    code, out, err = cli(capsys, "report", "--model", m, *common, "--profile", "quick", "--attacks", "fgsm,pgd-20", "--no-table4",
                         "--ib-iterations", "4", "--stability", "2", "--population-iterations", "2", "--betas", "0", "1",
                         "--beta-n", "6", "--tsne-n", "6", "--featvis-images", "1", "--featvis-steps", "2", "--out", tmp_path / "r")
    assert code == 0, err
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["data"]["input_shape"] == [3, side, side] and results["n"] == 6 and results["layer"] == "layer4.bn2"
    assert "the first 200 images" in (tmp_path / "r" / "report.html").read_text()  # the profile's trimming is recorded


def test_api_load_model_takes_the_foreign_options(tmp_path):
    import nonrobust as nr

    model = _tiny(mean=0.2, std=0.3)
    torch.save({k: v for k, v in model.state_dict().items() if not k.startswith("normalize.")}, tmp_path / "w.pt")
    loaded = nr.load_model(f"tiny_cnn={tmp_path / 'w.pt'}", normalize="0.2,0.3")
    assert _same_outputs(model, loaded)
    with pytest.raises(UserError, match="unknown option.*normalise"):
        nr.load_model(f"tiny_cnn={tmp_path / 'w.pt'}", normalise="none")
