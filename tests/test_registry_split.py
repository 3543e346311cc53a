"""Every registered architecture splits exactly, at its default layer and at a user-given one."""

from __future__ import annotations

import pytest
import torch

from nonrobust import models
from nonrobust.split import list_layers, split_model


def _small_options(arch: str) -> dict:
    return {"wrn28_10": {"depth": 10, "widen": 1}}.get(arch, {})


@pytest.mark.parametrize("arch", sorted(models.ARCHITECTURES))
def test_default_and_user_layer_splits_are_exact(arch, tmp_path):
    torch.manual_seed(0)
    model = models.build(arch).eval()
    path = tmp_path / f"{arch}.safetensors"
    models.save(model, path, models.make_meta(model, dataset="cifar10"))
    model = models.load(path)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        spec = models.ARCHITECTURES[arch]
        convs = list_layers(model, kind="conv")
        user_layer = convs[len(convs) // 2]  # a layer in the middle of the network
        for layer in (spec.default_layer, user_layer):
            split = split_model(model, layer)
            assert split.method == "fx"
            z, ctx = split.features_and_context(x)
            assert z.dim() == 4
            assert torch.allclose(split.head(z, ctx), expected, atol=1e-5), (arch, layer)


def test_wrn_default_split_at_paper_shape():
    model = models.build("wrn28_10", depth=10, widen=10).eval()
    split = split_model(model, models.ARCHITECTURES["wrn28_10"].default_layer)
    with torch.no_grad():
        assert tuple(split.features(torch.rand(1, 3, 32, 32)).shape) == (1, 640, 8, 8)


def test_vgg16_default_split_at_paper_shape():
    model = models.build("vgg16").eval()
    split = split_model(model, "features.41")
    with torch.no_grad():
        z = split.features(torch.rand(2, 3, 32, 32))
        assert tuple(z.shape) == (2, 512, 2, 2)
        assert not split.needs_context
