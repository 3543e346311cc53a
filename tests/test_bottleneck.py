"""The information bottleneck (docs/method.md §2): construction, exact reference, invariants, protocols."""

from __future__ import annotations

import warnings
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from nonrobust import models
from nonrobust.bottleneck import IBConfig, IBResult, distill, distill_population, gaussian_kl
from nonrobust.errors import UserError
from nonrobust.split import split_model


def feature_head_model(weights: torch.Tensor) -> nn.Module:
    """Identity features (the input *is* Z), then ReLU → global average pool → linear, as after the paper's BN split."""
    lin = nn.Linear(weights.shape[1], weights.shape[0], bias=False)
    with torch.no_grad():
        lin.weight.copy_(weights)
    return nn.Sequential(nn.Identity(), nn.Identity(), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), lin).eval()


def test_constructed_head_large_margin_channels_are_robust_tiny_margin_ones_are_not():
    """Construction (two classes, four channels, Z = the input):

    logit_k = Σ_c W[k, c] · mean(relu(Z_c)), with W = [[5, 0, 0.1, 0], [0, 5, 0, 0.1]]:
    channel 0 carries class 0 with a large margin (weight 5), channel 1 class 1 likewise;
    channels 2 and 3 carry the same classes with a tiny margin (weight 0.1). Every Z_c is
    spatial noise of std 0.5 around 0, at the ReLU's kink, so noise injected into a channel
    raises its expected activation. For an image of class y, noise in the large-margin channel
    of class y raises the true logit a lot (the CE term rewards a large σ there, beating the
    KL pull towards σ_z²) → robust; noise in the tiny-margin channel of class y barely changes
    the logits, so the KL term pulls σ² down to σ_z² ≤ T → non-robust; noise in a channel of
    the other class lowers the margin → non-robust.
    """
    torch.manual_seed(0)
    n = 64
    y = torch.arange(n) % 2
    z = 0.5 * torch.randn(n, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    split = split_model(feature_head_model(torch.tensor([[5.0, 0, 0.1, 0], [0, 5.0, 0, 0.1]])), "1")
    res = distill(split, z, y)
    rows = torch.arange(n)
    robust = res.robust_mask
    large_true, tiny_true = robust[rows, y].float().mean(), robust[rows, 2 + y].float().mean()
    large_other, tiny_other = robust[rows, 1 - y].float().mean(), robust[rows, 3 - y].float().mean()
    assert large_true >= 0.4, large_true
    assert tiny_true <= 0.15, tiny_true
    assert large_other == 0 and tiny_other == 0


def reference_ib(head, z, y, noise, beta=0.3, iters=200, lr=0.1):
    """The reference code's loop written plainly: σ = softplus(λ), mean CE + β·mean KL, T = batch max."""
    var_z = z.var(dim=(2, 3), unbiased=True)
    lam = torch.zeros(z.shape[:2], requires_grad=True)
    opt = torch.optim.Adam([lam], lr=lr)
    for i in range(iters):
        sigma = F.softplus(lam)
        out = head(z + sigma[:, :, None, None] * noise[i])
        kl = 0.5 * ((var_z + 1e-10) / (sigma**2 + 1e-10) + torch.log((sigma**2 + 1e-10) / (var_z + 1e-10)) - 1)
        loss = F.cross_entropy(out, y) + beta * kl.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    sigma = F.softplus(lam.detach())
    return sigma, sigma**2 > var_z.max()


@pytest.mark.parametrize("beta, size, noise_kind", [(0.0, 16, "channel"), (0.3, 16, "channel"), (0.3, 8, "channel"), (0.3, 8, "unit")])
def test_paper_protocol_reproduces_a_plain_reference_implementation(beta, size, noise_kind):
    """Inputs of 16 px give an 8×8 map (64 units), 8 px a 4×4 one (16 units): the two ways the spatial sum is taken."""
    torch.manual_seed(0)
    model = models.build("tiny_cnn").eval()
    split = split_model(model, "features.5")
    x, y = torch.rand(6, 3, size, size), torch.tensor([0, 1, 2, 3, 4, 5])
    with torch.no_grad():
        z = split.features(x)
    shape = (1, 1) if noise_kind == "channel" else tuple(z.shape[2:])
    noise = torch.randn(200, 6, z.shape[1], *shape, generator=torch.Generator().manual_seed(3))
    ours = distill(split, x, y, IBConfig(beta=beta, noise=noise_kind), noise=noise)
    head = lambda t: split.head(t)  # noqa: E731
    sigma, robust = reference_ib(head, z, y, noise, beta=beta)
    # the batch-mean loss, as the reference computes it: σ agrees to float precision, the masks exactly
    assert torch.allclose(ours.sigma, sigma, rtol=1e-5, atol=1e-6), (ours.sigma - sigma).abs().max()
    assert torch.equal(ours.robust_mask, robust)


def test_a_head_that_works_in_place_gives_the_same_split():
    """A user's head may start with ReLU(inplace=True): the bottleneck must not let it overwrite what it differentiates."""
    weights = torch.tensor([[5.0, 0, 0.1, 0], [0, 5.0, 0, 0.1]])
    z = 0.5 * torch.randn(8, 4, 2, 2, generator=torch.Generator().manual_seed(1))
    y = torch.arange(8) % 2
    plain = split_model(feature_head_model(weights), "1")
    in_place = feature_head_model(weights)
    in_place[2] = nn.ReLU(inplace=True)
    a = distill(plain, z, y, IBConfig(iterations=30))
    b = distill(split_model(in_place, "1"), z, y, IBConfig(iterations=30))
    assert torch.equal(a.sigma, b.sigma)


def test_split_is_independent_of_batching_except_the_paper_threshold():
    torch.manual_seed(0)
    split = split_model(models.build("tiny_cnn").eval(), "features.5")
    x, y = torch.rand(8, 3, 16, 16), torch.randint(0, 10, (8,))
    idx = torch.arange(8)
    whole = distill(split, x, y, IBConfig(iterations=30), indices=idx)
    first = distill(split, x[:3], y[:3], IBConfig(iterations=30), indices=idx[:3])
    # paper: the batch-mean loss reaches σ only through Adam's ε, which weighs more for a larger batch
    assert torch.allclose(whole.sigma[:3], first.sigma, rtol=1e-2)
    whole_bf = distill(split, x, y, IBConfig(protocol="batch-free", iterations=30), indices=idx)
    part_bf = distill(split, x[5:], y[5:], IBConfig(protocol="batch-free", iterations=30), indices=idx[5:])
    assert torch.allclose(whole_bf.sigma[5:], part_bf.sigma, rtol=1e-6, atol=1e-7)  # each image's own loss: batch-free
    assert torch.equal(whole_bf.robust_mask[5:], part_bf.robust_mask)
    assert torch.equal(whole.threshold, whole.var_z.max().expand(8))


@settings(max_examples=20, deadline=None)
@given(b=st.integers(1, 4), c=st.integers(1, 6), seed=st.integers(0, 1000))
def test_masks_partition_channels_and_z_is_the_sum(b, c, seed):
    g = torch.Generator().manual_seed(seed)
    sigma = torch.rand(b, c, generator=g)
    var_z = torch.rand(b, c, generator=g) * 0.5
    t = var_z.amax().expand(b)
    res = IBResult("l", IBConfig(), sigma, var_z, t, sigma**2 > t[:, None])
    z = torch.randn(b, c, 3, 3, generator=g)
    zr, znr = res.robust(z), res.nonrobust(z)
    assert torch.equal(zr + znr, z)
    assert torch.equal(res.robust_mask ^ res.nonrobust_mask, torch.ones(b, c, dtype=torch.bool))
    assert ((zr == 0) | (znr == 0)).all()


def test_save_load_round_trip_is_bit_exact(tmp_path):
    split = split_model(models.build("tiny_cnn").eval(), "features.5")
    res = distill(split, torch.rand(4, 3, 16, 16), torch.tensor([1, 2, 3, 4]), IBConfig(iterations=5, beta=0.7))
    res.save(tmp_path / "ib.safetensors")
    back = IBResult.load(tmp_path / "ib.safetensors")
    for name in ("sigma", "var_z", "threshold", "robust_mask"):
        assert torch.equal(getattr(res, name), getattr(back, name)), name
    assert back.config == res.config and back.layer == res.layer
    with pytest.raises(UserError, match="not a bottleneck"):
        from nonrobust.io import save_tensors

        save_tensors(tmp_path / "other.safetensors", {"a": torch.zeros(1)}, {"format": "x"})
        IBResult.load(tmp_path / "other.safetensors")


def test_beta_zero_is_plain_cross_entropy_and_larger_beta_leaves_fewer_robust_channels():
    torch.manual_seed(0)
    model = models.build("tiny_cnn").eval()
    split = split_model(model, "features.5")
    x, y = torch.rand(16, 3, 16, 16), torch.randint(0, 10, (16,))
    with torch.no_grad():
        z = split.features(x)
    noise = torch.randn(50, 16, z.shape[1], 1, 1, generator=torch.Generator().manual_seed(0))
    res0 = distill(split, x, y, IBConfig(beta=0.0, iterations=50), noise=noise)
    # β = 0: the same optimisation as minimising the cross-entropy alone
    lam = torch.zeros(16, z.shape[1], requires_grad=True)
    opt = torch.optim.Adam([lam], lr=0.1)
    for i in range(50):
        loss = F.cross_entropy(split.head(z + F.softplus(lam)[:, :, None, None] * noise[i]), y)  # the paper protocol's batch mean
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.allclose(res0.sigma, F.softplus(lam.detach()), atol=1e-5)
    counts = []
    for beta in (0.0, 0.3, 3.0, 30.0):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            counts.append(distill(split, x, y, IBConfig(beta=beta)).counts()["robust"])
    assert all(a >= b for a, b in zip(counts, counts[1:], strict=False)), counts
    assert counts[0] > counts[-1], counts


def test_dead_channels_and_degenerate_outcomes_do_not_produce_nan():
    split = split_model(feature_head_model(torch.tensor([[1.0, 0, 1], [0, 1.0, 1]])), "1")
    z = torch.zeros(4, 3, 4, 4)  # every channel constant: σ_z² = 0
    with pytest.warns(UserWarning):
        res = distill(split, z, torch.tensor([0, 0, 0, 0]))  # a single-class batch, too
    assert torch.isfinite(res.sigma).all() and torch.isfinite(res.var_z).all()
    assert res.robust_mask.dtype == torch.bool


def test_bad_features_are_refused():
    split = split_model(feature_head_model(torch.eye(2)), "1")
    z = torch.rand(2, 2, 3, 3)
    z[0, 0, 0, 0] = float("nan")
    with pytest.raises(UserError, match="NaN"):
        distill(split, z, torch.tensor([0, 1]))
    flat = split_model(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)).eval(), "0")
    with pytest.raises(UserError, match="4-D"):
        distill(flat, torch.rand(2, 3, 2, 2), torch.tensor([0, 1]))
    with pytest.raises(UserError, match="beta"):
        IBConfig(beta=-1)
    with pytest.raises(UserError, match="protocol"):
        IBConfig(protocol="nope")


def test_kl_is_zero_at_equal_variances_and_positive_elsewhere():
    v = torch.tensor([0.5, 1.0, 2.0])
    assert torch.allclose(gaussian_kl(v, v), torch.zeros(3), atol=1e-7)
    assert (gaussian_kl(v, v * 3) > 0).all() and (gaussian_kl(v, v / 3) > 0).all()


def test_population_protocol_gives_one_label_free_split():
    torch.manual_seed(0)
    split = split_model(models.build("tiny_cnn").eval(), "features.5")
    x, y = torch.rand(24, 3, 16, 16), torch.randint(0, 10, (24,))
    batches = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 24, 8)]
    res = distill_population(split, batches, IBConfig(protocol="population", iterations=12), progress=False)
    assert res.sigma.shape == (16,) and res.robust_mask.shape == (16,) and res.threshold.dim() == 0
    with torch.no_grad():
        z_new = split.features(torch.rand(5, 3, 16, 16))
    assert torch.equal(res.robust(z_new) + res.nonrobust(z_new), z_new)
    var = torch.cat([split.features(b[0]).var(dim=(2, 3)) for b in batches]).mean(0)
    assert torch.allclose(res.var_z, var.detach(), atol=1e-6)


def test_population_protocol_reproduces_a_plain_reference_loop():
    """One λ per channel, Adam over the mini-batches in turn, mean CE + β·mean KL, ε from one generator seeded with the config's seed."""
    torch.manual_seed(0)
    split = split_model(models.build("tiny_cnn").eval(), "features.5")
    x, y = torch.rand(12, 3, 8, 8), torch.randint(0, 10, (12,))
    batches = [(x[i : i + 4], y[i : i + 4]) for i in range(0, 12, 4)]
    config = IBConfig(protocol="population", iterations=20, beta=0.5, seed=7)
    ours = distill_population(split, batches, config, progress=False)
    gen = torch.Generator().manual_seed(7)
    lam = torch.zeros(16, requires_grad=True)
    opt = torch.optim.Adam([lam], lr=0.1)
    for step in range(20):
        xb, yb = batches[step % 3]
        with torch.no_grad():
            z = split.features(xb)
        eps = torch.randn(4, 16, 1, 1, generator=gen)
        sigma = F.softplus(lam)
        var = z.var(dim=(2, 3)) + 1e-10
        kl = 0.5 * (var / (sigma**2 + 1e-10) + torch.log((sigma**2 + 1e-10) / var) - 1)
        loss = F.cross_entropy(split.head(z + sigma[None, :, None, None] * eps), yb) + 0.5 * kl.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.allclose(ours.sigma, F.softplus(lam.detach()), rtol=1e-4, atol=1e-5)


def test_population_fit_keeps_its_features_and_gives_what_iterating_again_gives(monkeypatch):
    """Within the cache budget the model's lower part runs once per image (the σ_z² pass), not once per Adam step;
    with no budget the batches are iterated again, and both fits are the same."""
    from nonrobust import bottleneck

    torch.manual_seed(0)
    split = split_model(models.build("tiny_cnn").eval(), "features.5")
    x, y = torch.rand(12, 3, 8, 8), torch.randint(0, 10, (12,))
    batches = [(x[i : i + 4], y[i : i + 4]) for i in range(0, 12, 4)]
    config = IBConfig(protocol="population", iterations=10, seed=3)
    calls = []
    lower = split.model.features[0]
    hook = lower.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    kept = distill_population(split, batches, config, progress=False)
    assert sum(calls) == 12  # each image once
    calls.clear()
    monkeypatch.setattr(bottleneck, "POPULATION_CACHE_BYTES", 0)
    again = distill_population(split, batches, config, progress=False)
    hook.remove()
    assert sum(calls) == 12 + 10 * 4  # the σ_z² pass, then one mini-batch of 4 per step
    assert torch.equal(kept.sigma, again.sigma) and torch.equal(kept.robust_mask, again.robust_mask)


@pytest.mark.parametrize("noise", ["unit", "channel"])
def test_summed_kl_matches_a_hand_written_loss(noise):
    """kl="sum" (the paper's text): each image's loss is CE + β·Σ over its units of ½[σ_z²/σ² + log(σ²/σ_z²) − 1];
    with channel noise a channel is one unit, with unit noise each of its H·W positions is."""
    torch.manual_seed(0)
    split = split_model(models.build("tiny_cnn").eval(), "features.5")
    x, y = torch.rand(3, 3, 8, 8), torch.tensor([0, 1, 2])
    with torch.no_grad():
        z = split.features(x)
    b, c, h, w = z.shape
    shape = (15, b, c, h, w) if noise == "unit" else (15, b, c, 1, 1)
    eps = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    ours = distill(split, x, y, IBConfig(noise=noise, kl="sum", beta=0.7, iterations=15), noise=eps)
    var = z.var(dim=(2, 3))
    units = h * w if noise == "unit" else 1
    lam = torch.zeros(b, c, requires_grad=True)
    opt = torch.optim.Adam([lam], lr=0.1)
    for step in range(15):
        sigma = F.softplus(lam)
        sq = sigma**2 + 1e-10
        kl_per_unit = 0.5 * ((var + 1e-10) / sq + torch.log(sq / (var + 1e-10)) - 1)
        loss = F.cross_entropy(split.head(z + sigma[:, :, None, None] * eps[step]), y, reduction="sum") + 0.7 * units * kl_per_unit.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.allclose(ours.sigma, F.softplus(lam.detach()), rtol=1e-4, atol=1e-5)
    mean = distill(split, x, y, IBConfig(noise=noise, kl="mean", beta=0.7, iterations=15), noise=eps)
    assert not torch.allclose(mean.sigma, ours.sigma, atol=1e-3)  # the option changes the result


def test_distill_works_under_no_grad():
    split = split_model(models.build("tiny_cnn").eval(), "features.5")
    x, y = torch.rand(2, 3, 16, 16), torch.tensor([0, 1])
    with torch.no_grad():
        res = distill(split, x, y, IBConfig(iterations=3))
    assert torch.equal(res.sigma, distill(split, x, y, IBConfig(iterations=3)).sigma)


def test_samples_average_the_gradient_over_noise_draws_as_a_plain_loop():
    """samples=K: each Adam step takes the mean loss over K noise draws (draw step·K + k), batch-mean as the paper protocol."""
    torch.manual_seed(0)
    split = split_model(models.build("tiny_cnn").eval(), "features.5")
    x, y = torch.rand(5, 3, 8, 8), torch.tensor([0, 1, 2, 3, 4])
    with torch.no_grad():
        z = split.features(x)
    iters, k = 12, 4
    noise = torch.randn(iters * k, 5, z.shape[1], 1, 1, generator=torch.Generator().manual_seed(5))
    ours = distill(split, x, y, IBConfig(iterations=iters, samples=k, beta=0.5), noise=noise)
    var = z.var(dim=(2, 3))
    lam = torch.zeros(5, z.shape[1], requires_grad=True)
    opt = torch.optim.Adam([lam], lr=0.1)
    for step in range(iters):
        sigma = F.softplus(lam)
        kl = 0.5 * ((var + 1e-10) / (sigma**2 + 1e-10) + torch.log((sigma**2 + 1e-10) / (var + 1e-10)) - 1)
        ce = sum(F.cross_entropy(split.head(z + sigma[:, :, None, None] * noise[step * k + j]), y) for j in range(k)) / k
        loss = ce + 0.5 * kl.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.allclose(ours.sigma, F.softplus(lam.detach()), rtol=1e-5, atol=1e-6)
    with pytest.raises(UserError, match="noise must have shape"):
        distill(split, x, y, IBConfig(iterations=iters, samples=k), noise=noise[:iters])


def test_label_sources_true_predicted_and_random_wrong():
    torch.manual_seed(0)
    split = split_model(models.build("tiny_cnn").eval(), "features.5")
    x, y = torch.rand(10, 3, 8, 8), torch.randint(0, 10, (10,))
    with torch.no_grad():
        pred = split.model(x).argmax(1)
    config = IBConfig(protocol="batch-free", iterations=15)
    true = distill(split, x, y, config)
    assert torch.equal(true.labels, y)
    predicted = distill(split, x, y, replace(config, labels="predicted"))
    assert torch.equal(predicted.labels, pred)
    assert torch.equal(predicted.sigma, distill(split, x, pred, config).sigma)  # the same as being given the prediction
    idx = torch.arange(20, 30)
    wrong = distill(split, x, y, replace(config, labels="random-wrong"), indices=idx)
    assert (wrong.labels != y).all() and wrong.labels.min() >= 0 and wrong.labels.max() < 10
    assert len(set(wrong.labels.tolist())) > 1  # seeded per image, not one shift for all
    assert torch.equal(wrong.sigma, distill(split, x, wrong.labels, config, indices=idx).sigma)
    # an image's wrong label depends on its index, not on its batch
    part = distill(split, x[4:], y[4:], replace(config, labels="random-wrong"), indices=idx[4:])
    assert torch.equal(part.labels, wrong.labels[4:])
    with pytest.raises(UserError, match="population"):
        IBConfig(protocol="population", labels="random-wrong")


def test_seed_agreement_by_hand():
    from nonrobust.bottleneck import seed_agreement, summarise_agreement

    def sets(*members):
        m = torch.zeros(4, dtype=torch.bool)
        m[list(members)] = True
        return m

    # image 0: {0,1} {1,2} {1}; image 1: {} {} {3}
    masks = torch.stack([torch.stack([sets(0, 1), sets()]), torch.stack([sets(1, 2), sets()]), torch.stack([sets(1), sets(3)])])
    a = seed_agreement(masks)
    assert torch.allclose(a["jaccard"], torch.tensor([4 / 9, 1 / 3], dtype=torch.float64))  # (1/3 + 1/2 + 1/2)/3; (1 + 0 + 0)/3
    assert torch.allclose(a["both_empty"], torch.tensor([0.0, 1 / 3], dtype=torch.float64))
    assert a["every"].tolist() == [1, 0] and a["any"].tolist() == [3, 1]
    s = summarise_agreement(a, channels=4, seeds=3)
    assert s["jaccard_mean"] == pytest.approx(7 / 18) and s["pairs_both_empty"] == pytest.approx(1 / 6)
    assert s["jaccard_nonempty_pairs"] == pytest.approx((4 / 9) / (5 / 3))
    assert s["robust_every_seed"] == pytest.approx(1 / 8) and s["robust_any_seed"] == pytest.approx(1 / 2)
    assert s["every_of_any"] == pytest.approx(1 / 4)


@settings(max_examples=25, deadline=None)
@given(k=st.integers(2, 4), b=st.integers(1, 3), c=st.integers(1, 5), seed=st.integers(0, 1000))
def test_seed_agreement_invariants(k, b, c, seed):
    from nonrobust.bottleneck import seed_agreement

    masks = torch.rand(k, b, c, generator=torch.Generator().manual_seed(seed)) > 0.5
    a = seed_agreement(masks)
    assert ((a["jaccard"] >= 0) & (a["jaccard"] <= 1)).all()
    assert (a["every"] <= a["any"]).all()
    same = seed_agreement(masks[:1].expand(k, b, c))
    assert torch.equal(same["jaccard"], torch.ones(b, dtype=torch.float64)) and torch.equal(same["every"], same["any"])


def test_threshold_rules():
    """max (the paper), channel (σ² above the channel's own σ_z²) and quantile:Q, for every protocol."""
    from nonrobust.bottleneck import robust_channels

    torch.manual_seed(0)
    split = split_model(models.build("tiny_cnn").eval(), "features.5")
    x, y = torch.rand(6, 3, 8, 8), torch.randint(0, 10, (6,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for protocol in ("paper", "batch-free"):
            base = distill(split, x, y, IBConfig(protocol=protocol, iterations=10))
            var = base.var_z
            rules = {
                "max": var.max().expand(6) if protocol == "paper" else var.amax(1),
                "quantile:0.5": torch.quantile(var.flatten().double(), 0.5).float().expand(6) if protocol == "paper"
                else torch.quantile(var.double(), 0.5, dim=1).float(),
                "channel": var,
            }
            for rule, expected in rules.items():
                res = distill(split, x, y, IBConfig(protocol=protocol, iterations=10, threshold=rule))
                assert torch.equal(res.sigma, base.sigma)  # the rule changes the masks, never σ
                assert torch.allclose(res.threshold, expected), (protocol, rule)
                t = expected[:, None] if expected.dim() == 1 else expected
                assert torch.equal(res.robust_mask, res.sigma.square() > t), (protocol, rule)
                assert torch.equal(robust_channels(res.sigma, res.threshold), res.robust_mask)
        batches = [(x[:3], y[:3]), (x[3:], y[3:])]
        pop = {r: distill_population(split, batches, IBConfig(protocol="population", iterations=6, threshold=r), progress=False)
               for r in ("max", "channel", "quantile:0.9")}
    assert torch.equal(pop["channel"].robust_mask, pop["channel"].sigma.square() > pop["channel"].var_z)
    assert torch.allclose(pop["quantile:0.9"].threshold, torch.quantile(pop["max"].var_z.double(), 0.9).float())
    assert pop["max"].robust_mask.sum() <= pop["quantile:0.9"].robust_mask.sum()  # a lower T marks at least as many channels
    for bad in ("median", "quantile:1.5", "quantile:x"):
        with pytest.raises(UserError, match="threshold rule"):
            IBConfig(threshold=bad)
