"""Tests for nonrobust.split: cutting any model at a layer (fx partition and hook fallback)."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from nonrobust.errors import UserError
from nonrobust.split import LayerSplit, feature_shape, list_layers, require_4d, split_model


class VGGish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * 2 * 2, 10))

    def forward(self, x):
        return self.classifier(self.features(x))


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)  # in place right after the cut: head must not modify z
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return F.relu(self.conv2(out) + x)  # skip connection crosses a cut at bn1


class ResNetish(nn.Module):
    """Skip connection, functional ops after the cut and a functional branch from the input."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = Block(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        h = self.block(self.stem(x))
        h = torch.flatten(F.adaptive_avg_pool2d(h, 1), 1)
        return self.fc(h) + 0.1 * x.mean()


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Linear(4, 3)

    def forward(self, x):
        h = self.bn(self.conv(x))
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace this
            h = h * 2
        return self.fc(h.mean((2, 3))) + x.mean()


def rand(batch: int = 2, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def make(cls: type[nn.Module], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = cls()
    for m in model.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def prefix_calls(model: nn.Module, names: list[str]) -> list[int]:
    """Count forward calls of the named modules (returns a live counter)."""
    count = [0]
    for name in names:
        model.get_submodule(name).register_forward_hook(lambda *_: count.__setitem__(0, count[0] + 1))
    return count


# -- fx partition ------------------------------------------------------------


def test_vgg_cut_inside_sequential():
    model, x = make(VGGish), rand()
    split = split_model(model, "features.5")
    assert split.method == "fx" and not split.needs_context
    z = split.features(x)
    assert z.shape == (2, 16, 4, 4)
    torch.testing.assert_close(split.head(z), model(x), atol=1e-5, rtol=0)
    assert split.features_and_context(x)[1] == ()


def test_residual_cut_inside_block_needs_context():
    model, x = make(ResNetish), rand()
    split = split_model(model, "block.bn1")
    assert split.method == "fx" and split.needs_context
    z, context = split.features_and_context(x)
    torch.testing.assert_close(split.head(z, context), model(x), atol=1e-5, rtol=0)
    with pytest.raises(UserError, match="needs context.*features_and_context"):
        split.head(z)
    with pytest.raises(UserError, match="context value"):
        split.head(z, context[:1])


def test_functional_ops_and_input_branch_are_exact():
    model, x = make(ResNetish), rand(3)
    for layer in ("stem", "block.bn1", "block.conv2", "fc"):
        split = split_model(model, layer)
        assert torch.equal(split(x), model(x)), layer
        assert torch.equal(split.features_and_context(x)[0], split.features(x)), layer


@pytest.mark.parametrize("model_cls, layer", [(ResNetish, "block"), (VGGish, "features")])
def test_cut_at_a_whole_block(model_cls, layer):
    model, x = make(model_cls), rand()
    split = split_model(model, layer)
    assert split.method == "fx"
    z, context = split.features_and_context(x)
    assert torch.equal(z, model.get_submodule(layer)(model.stem(x)) if layer == "block" else model.features(x))
    assert torch.equal(split.head(z, context), model(x))


def test_head_does_not_recompute_the_prefix():
    model, x = make(ResNetish), rand()
    split = split_model(model, "block.bn1")
    z, context = split.features_and_context(x)
    prefix, rest = prefix_calls(model, ["stem", "block.conv1", "block.bn1"]), prefix_calls(model, ["block.conv2", "fc"])
    for _ in range(10):
        split.head(z + 0.01 * torch.randn_like(z), context)
    assert prefix[0] == 0 and rest[0] == 20
    split.features(x)
    assert prefix[0] == 3 and rest[0] == 20  # features stops at the layer


def test_head_leaves_z_and_context_unchanged():
    model, x = make(ResNetish), rand()
    split = split_model(model, "block.bn1")  # followed by ReLU(inplace=True)
    z, context = split.features_and_context(x)
    z = z.detach().requires_grad_()  # a leaf: an in-place ReLU on it would fail
    before = z.detach().clone()
    split.head(z, context).sum().backward()
    assert torch.equal(z.detach(), before) and z.grad is not None


def test_gradients_match_the_model():
    model, x = make(ResNetish), rand()
    split = split_model(model, "block.bn1")
    captured = {}

    def keep(module, args, out):  # a tensor hook sees the gradient before the in-place ReLU
        out.register_hook(lambda grad: captured.__setitem__("grad", grad))

    handle = model.block.bn1.register_forward_hook(keep)
    model(x).sum().backward()
    handle.remove()
    z, context = split.features_and_context(x)
    z = z.detach().requires_grad_()
    split.head(z, context).sum().backward()
    torch.testing.assert_close(z.grad, captured["grad"], atol=1e-6, rtol=1e-5)

    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    model(xa).sum().backward()
    split(xb).sum().backward()
    torch.testing.assert_close(xb.grad, xa.grad, atol=1e-6, rtol=1e-5)


def test_split_shares_the_model():
    model, x = make(ResNetish), rand(4)
    split = split_model(model, "block.bn1")
    assert split.model is model
    split.model.train()  # batch statistics now
    torch.testing.assert_close(split(x), model(x), atol=1e-5, rtol=0)
    model.eval()
    with torch.no_grad():
        model.fc.weight.mul_(3)
        model.block.conv2.weight.add_(0.1)
    torch.testing.assert_close(split(x), model(x), atol=1e-5, rtol=0)


class Normalized(nn.Module):
    """Top-level buffers used by functional ops (get_attr nodes) and mode-dependent traced code."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1))
        self.scale = nn.Parameter(torch.tensor(2.0))
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 2)

    def forward(self, x):
        h = self.conv(x - self.mean)
        if self.training:  # a Python bool at trace time: traced once per mode
            h = h * 3
        return {"logits": self.fc(h.mean((2, 3))) * self.scale, "h": h}


def test_buffers_parameters_and_modes_stay_live():
    model, x = make(Normalized), rand()
    split = split_model(model, "conv")
    assert not split.needs_context
    out = split(x)
    assert out.keys() == {"logits", "h"} and torch.equal(out["logits"], model(x)["logits"])
    model.double()  # replaces buffer objects: a copied graph would keep the float ones
    torch.testing.assert_close(split(x.double())["logits"], model(x.double())["logits"])
    model.train()
    torch.testing.assert_close(split(x.double())["h"], model(x.double())["h"])
    assert not hasattr(model, "_tensor_constant0")


class Doubler(nn.Module):
    """A childless custom module (traced through, not a leaf) whose forward reads self.training."""

    def forward(self, x):
        return x * 2 if self.training else x


class WithDoubler(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.doubler, self.fc = nn.Conv2d(3, 4, 3), Doubler(), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.doubler(self.conv(x)).mean((2, 3)))


def test_submodule_mode_change_is_retraced():
    model, x = make(WithDoubler), rand()
    split = split_model(model, "conv")
    assert split.method == "fx"
    model.doubler.train()  # only this submodule: the traced `x * 2 if self.training` must follow
    assert torch.equal(split(x), model(x))
    model.doubler.eval()
    assert torch.equal(split(x), model(x))


class TupleOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 2)

    def forward(self, x):
        h = self.conv(x)
        return self.fc(h.mean((2, 3))), h.size(0)


def test_tuple_output_passes_through():
    model, x = make(TupleOut), rand(3)
    logits, batch = split_model(model, "conv")(x)
    assert torch.equal(logits, model(x)[0]) and batch == 3


# -- hooks fallback -----------------------------------------------------------


def test_untraceable_model_falls_back_to_hooks(caplog):
    model = make(Untraceable)
    with caplog.at_level(logging.WARNING, logger="nonrobust.split"):
        split = split_model(model, "bn")
    assert split.method == "hooks" and split.needs_context
    assert "cannot be traced" in caplog.text and "slower" in caplog.text
    for x in (rand(), -rand()):
        z, context = split.features_and_context(x)
        assert torch.equal(split.head(z, context), model(x))
        assert torch.equal(split(x), model(x))
    with pytest.raises(UserError, match="cannot be traced.*hooks"):
        split_model(model, "bn", method="fx")


def test_hooks_features_stop_early_and_hooks_are_removed():
    model, x = make(Untraceable), rand()
    split = split_model(model, "bn", method="hooks")
    count = prefix_calls(model, ["fc"])
    calls = prefix_calls(model, ["conv"])
    split.features(x)
    assert count[0] == 0 and calls[0] == 1
    hooks = len(model.bn._forward_hooks)
    with pytest.raises(RuntimeError):
        split.head(torch.zeros(2, 5, 8, 8), (x,))  # wrong channel count fails inside forward
    assert len(model.bn._forward_hooks) == hooks


def test_hooks_gradients_and_no_grad():
    model, x = make(Untraceable), rand()
    split = split_model(model, "bn", method="hooks")
    with torch.no_grad():
        assert torch.equal(split(x), model(x))
    z, context = split.features_and_context(x)
    z = z.detach().requires_grad_()
    split.head(z, context).sum().backward()
    # out = fc(mean(2 * z)) + x.mean() for positive x, so d sum(out) / dz = 2 * sum_k W[k, c] / (H * W)
    w = model.fc.weight.sum(0).view(1, 4, 1, 1) * 2 / 64
    torch.testing.assert_close(z.grad, w.expand_as(z), atol=1e-6, rtol=1e-5)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    model(xa).sum().backward()
    split(xb).sum().backward()
    torch.testing.assert_close(xb.grad, xa.grad, atol=1e-6, rtol=1e-5)


class Swallows(Untraceable):
    def forward(self, x):
        try:
            return super().forward(x)
        except Exception:  # a model catching everything must not swallow the early stop
            return torch.zeros(x.shape[0], 3)


def test_hooks_early_stop_is_not_swallowed():
    model, x = make(Swallows), rand()
    split = split_model(model, "bn", method="hooks")
    assert split.features(x).shape == (2, 4, 8, 8)
    assert torch.equal(split(x), model(x))


def test_hooks_path_on_a_traceable_model():
    model, x = make(ResNetish), rand()
    split = split_model(model, "block.bn1", method="hooks")
    assert torch.equal(split(x), model(x))
    with pytest.raises(UserError, match="needs context"):
        split.head(split.features(x))


# -- errors -----------------------------------------------------------------


def test_unknown_layer_lists_layers_and_suggests():
    with pytest.raises(UserError, match=r"no layer 'featurs\.5' in VGGish \(did you mean 'features\.5'.*\?\); available layers: features, features\.0,"):
        split_model(make(VGGish), "featurs.5")
    with pytest.raises(UserError, match="no layer '' in VGGish; available layers: features,"):
        split_model(make(VGGish), "")
    big = nn.Sequential(*[nn.ReLU() for _ in range(50)])
    with pytest.raises(UserError, match=r"\(50 in all\)") as info:
        split_model(big, "99")
    assert "\n" not in str(info.value)


class TwoOutputs(nn.Module):
    def forward(self, x):
        return x, x * 2


class Odd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pair = TwoOutputs()
        self.shared = nn.Conv2d(3, 3, 1)
        self.unused = nn.ReLU()
        self.aux = nn.Conv2d(3, 3, 1)
        self.blocks = nn.ModuleList([nn.ReLU(), nn.ReLU()])

    def forward(self, x):
        a, b = self.pair(x)
        self.aux(a)  # result thrown away: the output does not depend on it
        h = self.shared(self.shared(a + b))
        for block in self.blocks:
            h = block(h)
        return h.mean((2, 3))


@pytest.mark.parametrize("layer, message", [
    ("shared", "called 2 times.*shared module"),
    ("unused", "never called"),
    ("aux", "does not depend on layer 'aux'"),
    ("blocks", "ModuleList.*blocks.0"),
])
def test_layers_that_cannot_be_cut(layer, message):
    with pytest.raises(UserError, match=message):
        split_model(Odd(), layer)


@pytest.mark.parametrize("method", ["fx", "hooks"])
def test_non_tensor_layer_output(method):
    split = split_model(Odd(), "pair", method=method)
    with pytest.raises(UserError, match="outputs a tuple, not a tensor"):
        split.features(rand())


def test_shared_module_with_hooks_and_bad_method():
    split = split_model(Odd(), "shared", method="hooks")
    with pytest.raises(UserError, match="more than once"):
        split(rand())
    assert not Odd().shared._forward_hooks and not split._module._forward_hooks
    with pytest.raises(UserError, match="unknown split method"):
        split_model(Odd(), "shared", method="trace")


# -- helpers ------------------------------------------------------------------


def test_list_layers():
    model = make(ResNetish)
    assert list_layers(model) == ["stem", "block", "block.conv1", "block.bn1", "block.relu", "block.conv2", "fc"]
    assert list_layers(model, "leaf") == ["stem", "block.conv1", "block.bn1", "block.relu", "block.conv2", "fc"]
    assert list_layers(model, "conv") == ["stem", "block.conv1", "block.bn1", "block.conv2"]
    assert "blocks" not in list_layers(Odd()) and "blocks.0" in list_layers(Odd())
    with pytest.raises(UserError, match="unknown layer kind"):
        list_layers(model, "dense")


def test_feature_shape_leaves_the_model_untouched():
    model = make(VGGish).train()
    stats = model.features[1].running_mean.clone()
    split = split_model(model, "features.1")
    assert feature_shape(split, (3, 8, 8)) == (8, 8, 8)
    assert feature_shape(split_model(model, "classifier.0"), (3, 8, 8)) == (64,)
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(model.features[1].running_mean, stats)
    assert feature_shape(split_model(make(Untraceable), "bn", method="hooks"), (3, 5, 7)) == (4, 5, 7)
    with pytest.raises(UserError, match="not \\(channels, height, width\\)"):
        feature_shape(split, (8, 8))


def test_require_4d():
    z = torch.zeros(2, 8, 4, 4)
    assert require_4d(z, "features.5") is z
    with pytest.raises(UserError, match=r"outputs shape \[2, 64\].*4-D.*such as features.1, features.4, features.5$"):
        require_4d(torch.zeros(2, 64), "classifier.0", make(VGGish))
    with pytest.raises(UserError, match="Conv2d or BatchNorm2d"):
        require_4d(torch.zeros(2, 64), "classifier.0")


def test_layer_split_repr_and_type():
    split = split_model(make(VGGish), "features.1")
    assert isinstance(split, LayerSplit) and "features.1" in repr(split) and split.layer == "features.1"


_RESNET = make(ResNetish, seed=1)
_RESNET_SPLIT = split_model(_RESNET, "block.bn1")


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 4), seed=st.integers(0, 2**31 - 1), size=st.sampled_from([4, 6, 8]))
def test_residual_split_equals_model(batch, seed, size):
    x = rand(batch, size, seed)
    with torch.no_grad():
        torch.testing.assert_close(_RESNET_SPLIT.head(*_RESNET_SPLIT.features_and_context(x)), _RESNET(x),
                                   atol=1e-5, rtol=0)
