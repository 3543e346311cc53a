"""The shipped robust model and data slice load without a download and agree with their metadata."""

from __future__ import annotations

import torch

from nonrobust import data, loading, models


def test_shipped_model_on_the_shipped_slice():
    model, meta = loading.resolve("cifar10-small-at")
    assert not model.training and meta.arch == "small_cnn" and meta.split_layer == "features.23"
    assert meta.metrics["clean_accuracy"]["n"] == 10000 and meta.metrics["pgd20_accuracy"]["n"] == 10000
    ds = data.load_dataset("cifar10-slice")
    x, y = ds.tensors()
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    # the slice is part of the test set the metadata was measured on: the two must be close
    assert abs(acc - meta.metrics["clean_accuracy"]["value"]) < 0.05, acc


def test_shipped_vgg16_loads_offline_with_its_measurements():
    """cifar10-vgg16-at: the paper's architecture, shipped in half precision, loaded as float32, measured on CIFAR-10."""
    spec = models.PRETRAINED["cifar10-vgg16-at"]
    model, meta = loading.resolve("cifar10-vgg16-at")
    assert not model.training and meta.arch == "vgg16" and meta.split_layer == "features.41" and meta.input_shape == (3, 32, 32)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    from safetensors import safe_open

    with safe_open(str(spec.path()), framework="pt") as fh:
        stored = {k: fh.get_slice(k).get_dtype() for k in fh.keys()}
    assert stored["features.0.weight"] == "F16" and stored["normalize.mean"] == "F32"
    rounding = meta.metrics["weight_rounding"]
    assert rounding["dtype"] == "float16" and rounding["n"] == 10000 and abs(rounding["change_points"]) <= 0.2
    assert meta.metrics["clean_accuracy"]["n"] == 10000
    assert meta.recipe["config"]["arch"] == "vgg16" and meta.recipe["config"]["method"] == "fast"
    x, y = data.load_dataset("cifar10-slice", n=200).tensors()
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    # the slice is part of the test set the metadata was measured on: the two must be close
    assert abs(acc - meta.metrics["clean_accuracy"]["value"]) < 0.08, acc


def test_the_training_presets_state_the_shipped_models_measured_training_time():
    """The wall time a CPU preset states is the one its shipped model's metadata measured (one home: the metadata)."""
    from nonrobust.reproduce import REPRODUCE_PRESETS
    from nonrobust.training import PRESETS

    for preset, name in (("cpu-small", "cifar10-small-at"), ("cpu-vgg16", "cifar10-vgg16-at")):
        seconds = models.PRETRAINED[name].meta().metrics["training_seconds"]
        assert f"training_seconds, {round(seconds)} s" in PRESETS[preset].description, preset
        assert PRESETS[preset].description in REPRODUCE_PRESETS[f"{preset}-cifar10"].description
