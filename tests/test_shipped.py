"""The shipped robust model and data slice load without a download and agree with their metadata."""

from __future__ import annotations

import torch

from nonrobust import data, models


def test_shipped_model_on_the_shipped_slice():
    model, meta = models.resolve("cifar10-small-at")
    assert not model.training and meta.arch == "small_cnn" and meta.split_layer == "features.23"
    assert meta.metrics["clean_accuracy"]["n"] == 10000 and meta.metrics["pgd20_accuracy"]["n"] == 10000
    ds = data.load_dataset("cifar10-slice")
    x, y = ds.tensors()
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    # the slice is part of the test set the metadata was measured on: the two must be close
    assert abs(acc - meta.metrics["clean_accuracy"]["value"]) < 0.05, acc
