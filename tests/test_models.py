"""Architectures, the registry, checkpoints and pretrained-model resolution (nonrobust.models)."""

from __future__ import annotations

import json
import os
import pickle
import dataclasses
from dataclasses import asdict, replace

import pytest
import torch
import torch.fx
from torch import nn

from nonrobust import models
from nonrobust.architectures import Normalize
from nonrobust.errors import UserError
from nonrobust.io import load_tensors, save_tensors
from nonrobust.loading import resolve
from nonrobust.models import ARCHITECTURES, PRETRAINED, CheckpointMeta, build, load, load_with_meta, make_meta, save

from helpers import assert_same_tensors  # noqa: E402

# (channels, height, width) at each arch's default layer for a 32 px input, at default options.
DEFAULT_LAYER_SHAPES = {
    "vgg16": (512, 2, 2),
    "wrn28_10": (640, 8, 8),
    "preact_resnet18": (512, 4, 4),
    "small_cnn": (256, 2, 2),
    "tiny_cnn": (16, 16, 16),
}


def _randomise_buffers(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BatchNorm running statistics non-default values, so round trips prove buffers are saved."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=gen) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
                m.num_batches_tracked.fill_(7)
    return model


@pytest.fixture(scope="module")
def default_models() -> dict[str, nn.Module]:
    """Each registered arch at default settings (10 classes), built once per module (wrn28_10 is 36M parameters)."""
    torch.manual_seed(0)
    return {name: _randomise_buffers(build(name)).eval() for name in ARCHITECTURES}


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    assert_same_tensors(a.state_dict(), b.state_dict())


def _one_line_user_error(excinfo: pytest.ExceptionInfo) -> str:
    msg = str(excinfo.value)
    assert excinfo.type is UserError and msg and "\n" not in msg
    return msg


# --------------------------------------------------------------------------- registry and architectures


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_registry_notes_state_the_split_layers_real_shape(arch):
    """Each entry's notes name the default layer's channels and map size at its native input size ("512 ch, 2x2 at
    32 px"): measured here on the built model, so a registry entry that drifts from its architecture fails."""
    import re

    from nonrobust.split import layer_shapes

    spec = ARCHITECTURES[arch]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "x"  # frozen
    torch.manual_seed(0)
    shapes = layer_shapes(build(arch), (3, spec.input_size, spec.input_size))
    channels, height, width = shapes[spec.default_layer][1]
    stated_channels = re.search(r"(?:(\d+) ch\b|ch \((\d+)\))", spec.notes)  # "512 ch" or "64*widen ch (640)"
    stated_map = re.search(r"(\d+)x(\d+) at (\d+) px", spec.notes)
    assert stated_channels and stated_map, spec.notes
    assert int(stated_channels[1] or stated_channels[2]) == channels, spec.notes
    assert tuple(int(v) for v in stated_map.groups()) == (height, width, spec.input_size), spec.notes


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_default_arch(arch, default_models, images, tmp_path):
    """Forward shape, default layer, Normalize first, fx tracing and a save/load round trip, at default settings."""
    model = default_models[arch]
    assert next(iter(model.named_children()))[0] == "normalize"
    with torch.no_grad():
        out = model(images)
    assert out.shape == (2, 10) and torch.isfinite(out).all()

    layer = dict(model.named_modules())[ARCHITECTURES[arch].default_layer]
    assert isinstance(layer, nn.BatchNorm2d)
    seen = []
    handle = layer.register_forward_hook(lambda mod, inp, o: seen.append(o.shape))
    with torch.no_grad():
        model(images)
    handle.remove()
    assert tuple(seen[0]) == (2, *DEFAULT_LAYER_SHAPES[arch])

    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        torch.testing.assert_close(traced(images), out)
    assert ARCHITECTURES[arch].default_layer in dict(traced.named_modules())

    path = tmp_path / f"{arch}.safetensors"
    save(model, path, make_meta(model, dataset="unit-test"))
    loaded, meta = load_with_meta(path)
    assert not loaded.training and loaded.nonrobust_meta is meta
    assert meta.arch == arch and meta.split_layer == ARCHITECTURES[arch].default_layer and meta.input_shape == (3, 32, 32)
    _assert_same_state(model, loaded)
    with torch.no_grad():
        assert torch.equal(loaded(images), out)
    assert all(p.requires_grad for p in loaded.parameters())


@pytest.mark.parametrize("arch", ["small_cnn", "preact_resnet18", "vgg16"])
def test_grey_scale_and_larger_images(arch, tmp_path):
    torch.manual_seed(0)
    grey = build(arch, num_classes=7, in_channels=1, mean=0.1307, std=0.3081).eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        out = grey(x)
    assert out.shape == (2, 7)
    assert grey.normalize.mean.shape == (1, 1, 1)
    path = tmp_path / "grey.safetensors"
    save(grey, path, make_meta(grey))
    loaded, meta = load_with_meta(path)
    assert meta.input_shape == (1, 32, 32) and meta.num_classes == 7
    assert meta.mean == pytest.approx([0.1307]) and meta.std == pytest.approx([0.3081])
    with torch.no_grad():
        assert torch.equal(loaded(x), out)
        assert build(arch).eval()(torch.rand(2, 3, 64, 64)).shape == (2, 10)


def test_small_options_round_trip(tmp_path, images):
    """Options are stored (with defaults filled in) and used to rebuild; dropout acts only in training mode."""
    torch.manual_seed(0)
    wrn = _randomise_buffers(build("wrn28_10", depth=10, widen=1, dropout=0.3))
    assert wrn.fc.in_features == 64 and len(wrn.block1) == 1
    wrn.train()
    assert not torch.equal(wrn(images), wrn(images))  # dropout active
    wrn.eval()
    path = tmp_path / "wrn.safetensors"
    meta = make_meta(wrn, recipe={"epochs": 1}, metrics={"clean": 0.5})
    assert meta.arch_options == {"depth": 10, "widen": 1, "dropout": 0.3}
    save(wrn, path, meta)
    loaded, loaded_meta = load_with_meta(path)
    assert loaded_meta.tensors_sha256 == models.tensors_digest(load_tensors(path)[0])  # recorded by save, checked by load
    assert {**asdict(loaded_meta), "tensors_sha256": None} == asdict(meta)
    _assert_same_state(wrn, loaded)
    with torch.no_grad():
        assert torch.equal(loaded(images), wrn(images))
    small = build("small_cnn", width=32)
    assert dict(small.named_modules())["features.23"].num_features == 256


def test_tiny_wrn_and_small_cnn_trace_and_train_step(images):
    """Traced models stay differentiable and keep the input check."""
    for model in (build("wrn28_10", depth=10, widen=1), build("small_cnn", width=16), build("tiny_cnn")):
        traced = torch.fx.symbolic_trace(model)
        x = images.clone().requires_grad_(True)
        traced(x).sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
        with pytest.raises(UserError, match="3-channel"):
            traced(torch.rand(2, 1, 32, 32))


def test_normalize_is_inside_the_model(images):
    torch.manual_seed(0)
    model = build("tiny_cnn").eval()
    state = model.state_dict()
    assert state["normalize.mean"].shape == (3, 1, 1) and state["normalize.std"].shape == (3, 1, 1)
    assert torch.allclose(state["normalize.mean"], torch.tensor(0.5)) and torch.allclose(state["normalize.std"], torch.tensor(0.25))
    with torch.no_grad():
        before = model(images)
        model.normalize.mean.fill_(0.4)
        assert not torch.allclose(model(images), before)
    # (x - 0.5) / 0.25 by default
    torch.testing.assert_close(Normalize()(images), (images - 0.5) / 0.25)


def test_input_checks():
    model = build("tiny_cnn")
    for bad in (torch.rand(2, 1, 32, 32), torch.rand(3, 32, 32), torch.rand(2, 4, 32, 32)):
        with pytest.raises(UserError) as excinfo:
            model(bad)
        _one_line_user_error(excinfo)
    assert build("tiny_cnn", in_channels=4)(torch.rand(2, 4, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(
    "call, needle",
    [
        (lambda: build("resnet50"), "vgg16"),
        (lambda: build("small_cnn", widht=32), "width"),
        (lambda: build("vgg16", width=32), "no option"),
        (lambda: build("small_cnn", width=0), "width"),
        (lambda: build("wrn28_10", depth=11, widen=1), "6n + 4"),
        (lambda: build("wrn28_10", depth=10, widen=1, dropout=1.5), "dropout"),
        (lambda: build("tiny_cnn", num_classes=0), "num_classes"),
        (lambda: build("tiny_cnn", in_channels=0), "in_channels"),
        (lambda: build("tiny_cnn", mean=[0.5, 0.5]), "mean"),
        (lambda: build("tiny_cnn", std=0.0), "std"),
        (lambda: build("tiny_cnn", std=[0.2, float("nan"), 0.2]), "std"),
        (lambda: make_meta(build("tiny_cnn"), num_classes=5), "num_classes"),
        (lambda: make_meta(build("tiny_cnn"), colour="red"), "colour"),
        (lambda: make_meta(nn.Linear(2, 2)), "arch name"),
        (lambda: make_meta("tiny_cnn", classes=["a", "b"]), "class names"),
        (lambda: resolve("no-such-model"), "cifar10-small-at"),
        (lambda: models.pretrained("no-such-model"), "cifar10-small-at"),
    ],
)
def test_user_errors(call, needle):
    with pytest.raises(UserError) as excinfo:
        call()
    assert needle in _one_line_user_error(excinfo)


def test_make_meta_from_arch_name_and_wrappers():
    meta = make_meta("small_cnn", num_classes=100, arch_options={"width": 32}, mean=[0.5, 0.4, 0.3], input_shape=(3, 64, 64))
    assert meta.arch_options == {"width": 32} and meta.input_shape == (3, 64, 64)
    assert meta.std == [0.25, 0.25, 0.25] and meta.split_layer == "features.23"
    assert meta.format == "nonrobust-checkpoint" and meta.version == 1 and meta.created.endswith("+00:00")
    wrapped = nn.DataParallel(build("tiny_cnn"))
    assert make_meta(wrapped).arch == "tiny_cnn"


def test_save_checks_meta_against_model(tmp_path):
    model = build("tiny_cnn")
    path = tmp_path / "x.safetensors"
    for meta, needle in [
        (make_meta("small_cnn"), "do not match arch small_cnn"),
        (make_meta("tiny_cnn", num_classes=5), "wrong shape"),
        (make_meta("tiny_cnn", mean=0.4), "normalisation"),
        (make_meta("tiny_cnn", split_layer="features.99"), "split_layer"),
    ]:
        with pytest.raises(UserError) as excinfo:
            save(model, path, meta)
        assert needle in _one_line_user_error(excinfo)
    assert not path.exists()
    save(nn.DataParallel(model), path, make_meta(model))  # wrappers are looked through
    assert list(load(path).state_dict()) == list(model.state_dict())


def test_half_precision_round_trip(tmp_path, images):
    """dtype=float16 stores every float weight rounded once to half precision, keeps the normalisation exact, loads as float32."""
    model = _randomise_buffers(build("tiny_cnn", mean=[0.4914, 0.4822, 0.4465], std=[0.2471, 0.2435, 0.2616])).eval()
    full, half = tmp_path / "full.safetensors", tmp_path / "half.safetensors"
    save(model, full, make_meta(model))
    save(model, half, make_meta(model), dtype=torch.float16)
    from safetensors import safe_open

    with safe_open(str(half), framework="pt") as fh:
        stored = {k: fh.get_tensor(k) for k in fh.keys()}
    for key, value in model.state_dict().items():
        if key.startswith("normalize."):
            assert stored[key].dtype == torch.float32 and torch.equal(stored[key], value), key
        elif value.is_floating_point():
            assert stored[key].dtype == torch.float16, key
            assert torch.equal(stored[key], value.half()), key  # round to nearest, once
        else:
            assert torch.equal(stored[key], value), key  # num_batches_tracked stays an integer
    loaded = load(half)
    for key, value in loaded.state_dict().items():
        assert value.dtype == model.state_dict()[key].dtype, key  # rebuilt in the model's own precision
        assert torch.equal(value, model.state_dict()[key].half().to(value.dtype) if value.is_floating_point() and not key.startswith("normalize.")
                           else model.state_dict()[key]), key
    with torch.no_grad():
        assert not torch.equal(loaded(images), model(images))  # the rounding is real ...
        assert torch.allclose(loaded(images), model(images), atol=5e-2)  # ... and small
    def data_bytes(tensors):
        return sum(v.numel() * v.element_size() for v in tensors.values())

    float_bytes = sum(v.numel() * 4 for k, v in model.state_dict().items() if v.is_floating_point() and not k.startswith("normalize."))
    assert data_bytes(model.state_dict()) - data_bytes(stored) == float_bytes // 2
    with pytest.raises(UserError, match="floating-point"):
        save(model, tmp_path / "int.safetensors", make_meta(model), dtype=torch.int8)


def test_pretrained_meta_reads_the_header_only_and_headline(monkeypatch, tmp_path):
    model = build("tiny_cnn").eval()
    metrics = {"clean_accuracy": {"n": 10000, "value": 0.7215}, "pgd20_accuracy": {"n": 10000, "value": 0.3767},
               "autoattack_accuracy": "not measured", "apgd_ce_accuracy": {"n": 1000, "value": 0.376}}
    spec = replace(PRETRAINED["cifar10-small-std"], name="unit-test-model", asset="unit.safetensors")
    monkeypatch.setattr(models.shipped, "_assets_dir", lambda: tmp_path)
    with pytest.raises(UserError, match="not shipped"):
        spec.meta()
    save(model, tmp_path / spec.asset, make_meta(model, metrics=metrics))
    meta = spec.meta()
    assert meta.metrics == metrics and meta.arch == "tiny_cnn"
    assert models.headline(meta) == "clean 72.2% (n=10000), PGD-20 37.7% (n=10000), APGD-CE 37.6% (n=1000)"
    assert models.headline(make_meta(model)) == ""


# --------------------------------------------------------------------------- bad checkpoint files


class _Payload:
    """Unpickling this object runs ``os.mkdir(target)``: it stands for arbitrary code in a hostile .pt file."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def _good_checkpoint(tmp_path, arch: str = "tiny_cnn", **options) -> tuple:
    model = build(arch, **options)
    path = tmp_path / f"good-{arch}.safetensors"
    save(model, path, make_meta(model))
    return path, model


def test_pickle_checkpoint_is_refused_without_unpickling(tmp_path):
    live = tmp_path / "payload-is-live"
    pickle.loads(pickle.dumps(_Payload(str(live))))
    assert live.exists()  # the payload works when unpickled ...
    sentinel = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    torch.save({"state_dict": build("tiny_cnn").state_dict(), "x": _Payload(str(sentinel))}, path)
    for call in (load, load_with_meta, resolve):
        with pytest.raises(UserError) as excinfo:
            call(path)
        msg = _one_line_user_error(excinfo)
        assert "not a readable safetensors file" in msg and "pickled" in msg
    assert not sentinel.exists()  # ... but loading never unpickled it


def _bad_files(tmp_path) -> dict[str, tuple]:
    """name -> (path, substring of the expected message)."""
    good, model = _good_checkpoint(tmp_path)
    blob = good.read_bytes()
    cases = {}

    def write(name: str, data: bytes):
        p = tmp_path / name
        p.write_bytes(data)
        return p

    cases["missing"] = (tmp_path / "nope.safetensors", "no such file")
    cases["random bytes"] = (write("random.safetensors", os.urandom(4096)), "safetensors")
    cases["truncated"] = (write("truncated.safetensors", blob[: len(blob) // 2]), "safetensors")
    cases["header only"] = (write("header.safetensors", blob[:40]), "safetensors")
    cases["empty"] = (write("empty.safetensors", b""), "safetensors")
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(plain))
    cases["no metadata"] = (plain, "not one written by nonrobust")
    other = tmp_path / "other.safetensors"
    save_tensors(other, {"delta": torch.zeros(3)}, {"kind": "perturbation"})
    cases["other nonrobust file"] = (other, "not a nonrobust checkpoint")
    meta = make_meta(model)

    def forged(name: str, tensors=None, **changes):
        p = tmp_path / name
        save_tensors(p, model.state_dict() if tensors is None else tensors, {**asdict(meta), **changes})
        return p

    cases["unknown arch"] = (forged("arch.safetensors", arch="resnet9000"), "unknown architecture 'resnet9000'")
    cases["newer version"] = (forged("version.safetensors", version=99), "upgrade nonrobust")
    cases["bad version"] = (forged("badversion.safetensors", version="1"), "version must be")
    cases["bad field"] = (forged("field.safetensors", num_classes="ten"), "num_classes")
    cases["bad option"] = (forged("option.safetensors", arch_options={"width": 8}), "no option 'width'")
    small = build("small_cnn", width=8)
    cases["other arch's weights"] = (forged("swap.safetensors", tensors=small.state_dict()), "do not match arch tiny_cnn with 10 classes")
    cases["wrong num_classes"] = (forged("classes.safetensors", num_classes=100), "2 of wrong shape; first: classifier.weight")
    state = dict(model.state_dict())
    del state["classifier.bias"]
    state["extra.weight"] = torch.zeros(1)
    cases["missing and unexpected keys"] = (forged("keys.safetensors", tensors=state), "1 missing, 1 unexpected")
    return cases


def test_bad_files_are_user_errors(tmp_path):
    for name, (path, needle) in _bad_files(tmp_path).items():
        for call in (load, resolve):
            with pytest.raises(UserError) as excinfo:
                call(path)
            msg = _one_line_user_error(excinfo)
            assert needle in msg, (name, msg)
            if path.exists():
                assert str(path) in msg, (name, msg)


def test_checkpoint_json_is_readable(tmp_path):
    path, model = _good_checkpoint(tmp_path, "small_cnn", width=8)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        raw = json.loads(fh.metadata()["nonrobust"])
    assert raw["format"] == "nonrobust-checkpoint" and raw["arch"] == "small_cnn" and raw["input_shape"] == [3, 32, 32]
    assert raw["torch_version"] == torch.__version__ and raw["arch_options"] == {"width": 8}
    meta = CheckpointMeta.from_dict({**raw, "future_field": 1}, source="x")  # unknown keys are tolerated
    assert meta == load_with_meta(path)[1]


# --------------------------------------------------------------------------- pretrained and resolve


def test_pretrained_registry_and_missing_asset(monkeypatch, tmp_path):
    assert {"cifar10-small-at", "cifar10-small-std"} <= set(PRETRAINED)
    monkeypatch.setattr(models.shipped, "_assets_dir", lambda: tmp_path)
    for call in (models.pretrained, resolve):
        with pytest.raises(UserError) as excinfo:
            call("cifar10-small-at")
        assert "not shipped" in _one_line_user_error(excinfo)


def test_pretrained_and_resolve_load_shipped_assets(monkeypatch, tmp_path, images):
    model = _randomise_buffers(build("tiny_cnn")).eval()
    spec = replace(PRETRAINED["cifar10-small-std"], name="unit-test-model", asset="unit.safetensors")
    monkeypatch.setitem(PRETRAINED, spec.name, spec)
    monkeypatch.setattr(models.shipped, "_assets_dir", lambda: tmp_path)
    save(model, tmp_path / spec.asset, make_meta(model, dataset="cifar10"))
    with torch.no_grad():
        expected = model(images)
        assert torch.equal(models.pretrained(spec.name)(images), expected)
        by_name, meta = resolve(spec.name)
        by_path, _ = resolve(str(tmp_path / spec.asset))
        assert meta.dataset == "cifar10"
        assert torch.equal(by_name(images), expected) and torch.equal(by_path(images), expected)


def test_assets_folder_exists():
    assert (models.shipped._assets_dir() / "README.md").is_file()
