"""Tests for nonrobust.featvis: Lucid-style feature inversion (Kim et al., NeurIPS 2021, Fig. 3)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from nonrobust.errors import UserError
from nonrobust.featvis import (
    FeatVisConfig,
    FourierImage,
    blur_penalty,
    invert_features,
    objective_value,
    random_transform,
)
from nonrobust.runtime import make_generator
from nonrobust.split import split_model

IDENTITY = dict(pad=0, jitter=0, scales=(1.0,), rotate=0.0, jitter2=0)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def tiny_net(seed: int = 0, channels: int = 3) -> nn.Sequential:
    """conv–BN–ReLU–conv(stride 2)–ReLU–pool–linear in eval mode; BN statistics non-trivial, global RNG left alone."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = nn.Sequential(
            nn.Conv2d(channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
        )
        net[1].running_mean.uniform_(-0.2, 0.2)
        net[1].running_var.uniform_(0.5, 1.5)
    return net.eval()


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=make_generator(seed))


def half_images(h: int = 12, w: int = 16) -> torch.Tensor:
    """Two random images, one lit on the left half and one on the right: clearly different activations."""
    x = rand(2, 3, h, w, seed=5)
    x[0, :, :, w // 2:] = 0
    x[1, :, :, : w // 2] = 0
    return x


# -- parameterisation --------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("fft", [True, False])
@pytest.mark.parametrize("size", [(12, 20), (7, 5)])
def test_fourier_image_shape_and_range(channels, fft, size):
    h, w = size
    image = FourierImage(2, (channels, h, w), make_generator(0), "cpu", decorrelate=True, fft=fft)
    x = image()
    assert x.shape == (2, channels, h, w)
    assert x.dtype == torch.float32
    assert bool(((x > 0) & (x < 1)).all())
    assert (x - 0.5).abs().max() < 0.1  # Lucid's start: grey with faint noise
    params = list(image.parameters())
    assert len(params) == 1 and params[0].requires_grad
    assert image.decorrelate == (channels == 3)
    x.sum().backward()
    assert params[0].grad is not None and params[0].grad.abs().sum() > 0
    with torch.no_grad():  # far from the start the output is still an image in [0, 1]
        params[0].normal_(0, 50, generator=make_generator(1))
    y = image()
    assert y.shape == (2, channels, h, w) and bool(((y >= 0) & (y <= 1)).all())


def test_fourier_image_seeded_and_colour_matrix():
    make = lambda seed: FourierImage(3, (3, 8, 10), make_generator(seed), "cpu")()  # noqa: E731
    assert torch.equal(make(4), make(4))
    assert not torch.equal(make(4), make(5))
    image = FourierImage(1, (3, 8, 10), make_generator(0), "cpu")
    assert image.raw.shape == (1, 3, 8, 6, 2)  # rfft: W // 2 + 1 columns, real and imaginary parts
    norms = image.color_matrix.norm(dim=0)
    assert math.isclose(norms.max().item(), 1.0, rel_tol=1e-6)
    with pytest.raises(UserError):
        FourierImage(1, (3, 0, 4), make_generator(0), "cpu")


# -- transforms ----------------------------------------------------------------


def test_transform_keeps_shape_and_is_seeded():
    x = rand(3, 3, 12, 20).requires_grad_()
    config = FeatVisConfig()
    a = random_transform(x, config, make_generator(7))
    b = random_transform(x, config, make_generator(7))
    c = random_transform(x, config, make_generator(8))
    assert a.shape == x.shape
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    a.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("pad", [0, 8])
def test_transform_without_movement_is_identity(pad):
    x = rand(2, 3, 9, 14)
    out = random_transform(x, FeatVisConfig(**{**IDENTITY, "pad": pad}), make_generator(0))
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


def test_jitter_shifts_by_whole_pixels_over_grey_padding():
    x = rand(4, 3, 10, 12)
    config = FeatVisConfig(**{**IDENTITY, "pad": 4, "jitter": 8})
    canvas = F.pad(x, (4, 4, 4, 4), value=0.5)
    moved = 0
    for seed in range(3):
        out = random_transform(x, config, make_generator(seed))
        for k in range(len(x)):
            windows = [(dy, dx) for dy in range(-4, 5) for dx in range(-4, 5)
                       if torch.allclose(out[k], canvas[k, :, 4 + dy:14 + dy, 4 + dx:16 + dx], atol=1e-5)]
            assert len(windows) == 1
            moved += windows[0] != (0, 0)
    assert moved > 0


def test_resize_fit_resamples_the_padded_canvas():
    x = rand(2, 3, 12, 16)
    out = random_transform(x, FeatVisConfig(**{**IDENTITY, "pad": 4, "fit": "resize"}), make_generator(0))
    expected = F.interpolate(F.pad(x, (4, 4, 4, 4), value=0.5), size=(12, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


@settings(max_examples=25, deadline=None)
@given(channels=st.sampled_from([1, 3]), h=st.integers(1, 24), w=st.integers(1, 24), seed=st.integers(0, 2**31),
       fit=st.sampled_from(["crop", "resize"]))
def test_transform_any_shape(channels, h, w, seed, fit):
    x = rand(2, channels, h, w, seed=seed % 1000)
    out = random_transform(x, FeatVisConfig(fit=fit), make_generator(seed))
    assert out.shape == x.shape
    assert bool(((out >= -1e-6) & (out <= 1 + 1e-6)).all())


def test_blur_penalty():
    assert torch.allclose(blur_penalty(torch.full((2, 3, 6, 7), 0.3)), torch.zeros(2), atol=1e-10)
    noise = rand(2, 1, 6, 7)
    smooth = torch.linspace(0, 1, 7).expand(2, 1, 6, 7)
    penalty = blur_penalty(torch.cat([noise, smooth]))
    assert penalty.shape == (4,)
    assert bool((penalty[:2] > 10 * penalty[2:]).all())


# -- objective -----------------------------------------------------------------


def test_objective_value_definitions():
    net = tiny_net()
    split = split_model(net, "3")
    x = rand(3, 3, 12, 16)
    with torch.no_grad():
        t = split.features(x)
    net.train()  # objective_value evaluates in eval mode, then restores train mode
    sq = t.flatten(1).pow(2).sum(1)
    torch.testing.assert_close(objective_value(split, x, t), sq, rtol=1e-5, atol=0)
    torch.testing.assert_close(objective_value(split, x, t, cossim="lucid", cossim_floor=None), sq**2, rtol=1e-4, atol=0)
    torch.testing.assert_close(objective_value(split, x, -t), -0.01 * sq, rtol=1e-5, atol=0)  # cos = −1, floored at 0.1
    torch.testing.assert_close(objective_value(split, x, t, 0.0), sq, rtol=1e-5, atol=0)
    assert net.training and all(p.requires_grad for p in net.parameters())
    assert not objective_value(split, x, t).requires_grad


# -- inversion -----------------------------------------------------------------


def test_invert_features_is_deterministic_and_leaves_global_rng_alone():
    split = split_model(tiny_net(), "3")
    targets = split.features(rand(2, 3, 12, 16)).detach()
    config = FeatVisConfig(steps=5)
    rng = torch.get_rng_state()
    a = invert_features(split, targets, (3, 12, 16), config, progress=False)
    with torch.no_grad():  # the optimisation switches gradients back on
        b = invert_features(split, targets, (3, 12, 16), config, progress=True)
    c = invert_features(split, targets, (3, 12, 16), FeatVisConfig(steps=5, seed=1), progress=False)
    assert torch.equal(torch.get_rng_state(), rng)
    assert a.shape == (2, 3, 12, 16) and a.dtype == targets.dtype and a.device == targets.device
    assert not a.requires_grad and bool(((a >= 0) & (a <= 1)).all())
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_each_image_depends_only_on_its_own_target():
    split = split_model(tiny_net(), "3")
    targets = split.features(rand(2, 3, 12, 16)).detach()
    other = targets.clone()
    other[1] = split.features(rand(1, 3, 12, 16, seed=9)).detach()[0]
    a = invert_features(split, targets, (3, 12, 16), FeatVisConfig(steps=5), progress=False)
    b = invert_features(split, other, (3, 12, 16), FeatVisConfig(steps=5), progress=False)
    torch.testing.assert_close(a[0], b[0], atol=1e-6, rtol=0)
    assert not torch.allclose(a[1], b[1])


def test_short_inversion_moves_towards_its_own_target():
    split = split_model(tiny_net(seed=1), "3")  # (margins here: ≥ 1.4× the start, ≥ 2× the other target)
    targets = split.features(half_images()).detach()
    config = FeatVisConfig(steps=60)
    out = invert_features(split, targets, (3, 12, 16), config, progress=False)
    start = FourierImage(2, (3, 12, 16), make_generator(config.seed), "cpu", config.decorrelate, config.fft)().detach()
    own = objective_value(split, out, targets)
    assert bool((own > 1.1 * objective_value(split, start, targets)).all())
    assert bool((own > 1.1 * objective_value(split, out, targets.flip(0))).all())


def test_model_state_is_restored_and_unchanged():
    net = tiny_net()
    split = split_model(net, "4")
    with torch.no_grad():
        targets = split.features(rand(2, 3, 12, 16))
    net.train()  # in train mode, a forward pass would update the BN statistics
    net[3].bias.requires_grad_(False)
    modes = [m.training for m in net.modules()]
    flags = [p.requires_grad for p in net.parameters()]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    invert_features(split, targets, (3, 12, 16), FeatVisConfig(steps=3), progress=False)
    assert [m.training for m in net.modules()] == modes
    assert [p.requires_grad for p in net.parameters()] == flags
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN statistics
    assert all(p.grad is None for p in net.parameters())


def test_single_channel_non_square():
    split = split_model(tiny_net(channels=1), "4")
    targets = split.features(rand(3, 1, 10, 14)).detach()
    out = invert_features(split, targets, (1, 10, 14), FeatVisConfig(steps=3), progress=False)
    assert out.shape == (3, 1, 10, 14)
    out = invert_features(split, targets, (1, 10, 14), FeatVisConfig.reference(steps=3, fft=False), progress=False)
    assert out.shape == (3, 1, 10, 14)


def test_reference_config():
    config = FeatVisConfig.reference(steps=7)
    assert (config.cossim, config.cossim_floor, config.fit, config.steps) == ("lucid", None, "resize", 7)
    assert (config.lr, config.blur_weight, config.cossim_pow) == (0.05, 0.01, 2.0)
    assert FeatVisConfig(scales=[1.0, 2.0]).scales == (1.0, 2.0)
    assert FeatVisConfig().as_dict()["steps"] == 512


# -- bad input -----------------------------------------------------------------


@pytest.mark.parametrize("fields", [
    dict(steps=0), dict(steps=-3), dict(steps=2.0), dict(steps=True), dict(lr=0.0), dict(lr=-0.1),
    dict(lr=float("nan")), dict(pad=-1), dict(jitter=-2), dict(scales=()), dict(scales=(1.0, 0.0)),
    dict(rotate=-1.0), dict(cossim_pow=-1.0), dict(blur_weight=float("inf")), dict(cossim="cos"),
    dict(fit="stretch"), dict(cossim_pow=0.5, cossim_floor=None), dict(decorrelate=1),
])
def test_bad_config(fields):
    with pytest.raises(UserError):
        FeatVisConfig(**fields)


def test_bad_inversion_input():
    split = split_model(tiny_net(), "3")
    targets = split.features(rand(2, 3, 12, 16)).detach()
    quick = FeatVisConfig(steps=1)
    bad = [
        (targets[0], (3, 12, 16)),  # 3-D
        (targets.numpy(), (3, 12, 16)),  # not a tensor
        (targets[:, :8], (3, 12, 16)),  # wrong channel count for the layer
        (targets, (3, 16, 16)),  # wrong spatial size for this image size
        (targets, (1, 12, 16)),  # the model wants 3 input channels
        (targets, (12, 16)),  # not (C, H, W)
        (targets, (3, 0, 16)),
        (targets.long(), (3, 12, 16)),
        (torch.full_like(targets, float("nan")), (3, 12, 16)),
        (targets[:0], (3, 12, 16)),
    ]
    for t, shape in bad:
        with pytest.raises(UserError):
            invert_features(split, t, shape, quick, progress=False)
    with pytest.raises(UserError):
        objective_value(split, rand(3, 3, 12, 16), targets)  # 3 images, 2 targets
    with pytest.raises(UserError):
        objective_value(split, rand(2, 3, 12, 16), targets[..., :3])
