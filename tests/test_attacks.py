"""Attacks: budgets, hand-computable cases, monotonicity, model-state hygiene, AutoAttack agreement."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from nonrobust.attacks import ATTACKS, CWL2, NRF, PGD, AutoAttackRunner, Ball, frozen, make_attack, margin_loss
from nonrobust.errors import UserError


def small_model(seed: int = 0, classes: int = 4, channels: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(channels, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, classes),
    ).eval()


class Linear(nn.Module):
    """logits = W·flatten(x): the gradient of any loss is known in closed form."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        return x.flatten(1) @ self.w.T


@functools.lru_cache(maxsize=None)
def _trained_blobs(seed: int):
    """A 3-class problem of noisy coloured images and a small CNN trained on it (a few seconds)."""
    g = torch.Generator().manual_seed(seed)
    n = 600
    y = torch.randint(0, 3, (n,), generator=g)
    base = torch.tensor([[0.6, 0.4, 0.4], [0.4, 0.6, 0.4], [0.4, 0.4, 0.6]])[y]
    x = (base[:, :, None, None] + 0.3 * torch.randn(n, 3, 8, 8, generator=g)).clamp(0, 1)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), x[:200], y[:200]


def trained_blobs(seed: int = 0):
    model, x, y = _trained_blobs(seed)
    return copy.deepcopy(model), x.clone(), y.clone()


LINF_ATTACKS = ["fgsm", "bim", "pgd", "pgd-20", "cw-inf"]


@settings(max_examples=15, deadline=None)
@given(
    name=st.sampled_from(LINF_ATTACKS),
    eps=st.floats(1e-3, 0.3),
    batch=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_linf_attacks_stay_in_ball_and_box(name, eps, batch, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, 6, 6, generator=g)
    y = torch.randint(0, 4, (batch,), generator=g)
    x_adv = make_attack(name, eps=eps)(small_model(seed % 7), x, y, generator=g)
    assert x_adv.shape == x.shape
    # exactly inside: in the float32 arithmetic a user checks with, and exactly (float64)
    assert (x_adv - x).abs().max().item() <= eps
    assert (x_adv.double() - x.double()).abs().max().item() <= eps
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_projection_rounding_past_the_budget_is_undone_by_one_float_step():
    """For this x, x + 8/255 in float32 lands 1.9e-9 past 8/255 (float32's 8/255 is itself larger): fit moves it one float step back."""
    eps = 8 / 255
    x = torch.full((1, 1, 1, 1), 0.022325754165649414)
    projected = Ball("linf", eps).project(x + 1.0, x)
    assert (projected.double() - x.double()).item() > eps  # the rounding this fixes
    fitted = Ball("linf", eps).fit(projected, x)
    assert (fitted.double() - x.double()).item() <= eps and (fitted - x).item() <= eps
    assert fitted.item() == torch.nextafter(projected, x).item()
    inside = x + 0.01
    assert torch.equal(Ball("linf", eps).fit(inside, x), inside)  # points inside are left alone
    # L2: an image just outside the ball is scaled back inside; one inside is left alone
    x2 = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.5
    d = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    d = d / d.flatten(1).norm(dim=1)[:, None, None, None]
    outside = x2 + d * torch.tensor([0.3 * (1 + 1e-6), 0.2])[:, None, None, None]
    fitted2 = Ball("l2", 0.3).fit(outside, x2)
    assert (fitted2.double() - x2.double()).flatten(1).norm(dim=1)[0].item() <= 0.3
    assert torch.equal(fitted2[1], outside[1])


@settings(max_examples=10, deadline=None)
@given(eps=st.floats(0.05, 2.0), seed=st.integers(0, 2**16))
def test_l2_pgd_stays_in_ball_and_norms_are_reported(eps, seed):
    from nonrobust.attacks import perturbation_norms

    g = torch.Generator().manual_seed(seed)
    x = torch.rand(4, 3, 6, 6, generator=g)
    y = torch.randint(0, 4, (4,), generator=g)
    x_adv = make_attack("pgd-l2", eps=eps)(small_model(), x, y, generator=g)
    l2 = (x_adv.double() - x.double()).flatten(1).norm(dim=1)
    assert l2.max().item() <= eps  # exactly inside, and as float32 arithmetic measures it
    assert (x_adv - x).flatten(1).norm(dim=1).max().item() <= eps
    norms = perturbation_norms(x, x_adv)
    assert norms["l2_max"] == pytest.approx(float(l2.max()), rel=1e-12)
    assert norms["l2_median"] == pytest.approx(float(l2.median()), rel=1e-12)


def test_fgsm_on_a_linear_model_is_eps_times_the_sign_of_the_weight_difference():
    # Two classes, logits = W x. CE gradient wrt x for label 0 is (p1)(w1 − w0) ∝ (w1 − w0),
    # so FGSM moves every pixel by eps·sign(w1 − w0) (x in the interior, no clipping).
    torch.manual_seed(0)
    w = torch.randn(2, 3 * 4 * 4)
    x = torch.full((1, 3, 4, 4), 0.5)
    y = torch.tensor([0])
    eps = 0.1
    x_adv = make_attack("fgsm", eps=eps)(Linear(w), x, y)
    expected = x + eps * torch.sign(w[1] - w[0]).view(1, 3, 4, 4)
    assert torch.allclose(x_adv, expected, atol=1e-7)


def test_pgd_on_a_linear_model_reaches_the_corner_of_the_ball():
    # For a linear two-class model every step has the same sign direction, so PGD without
    # random start ends at x + eps·sign(w1 − w0), like FGSM.
    torch.manual_seed(1)
    w = torch.randn(2, 3 * 4 * 4)
    x = torch.full((2, 3, 4, 4), 0.5)
    y = torch.tensor([0, 0])
    x_adv = PGD(eps=0.05, steps=7, random_start=False)(Linear(w), x, y)
    expected = x + 0.05 * torch.sign(w[1] - w[0]).view(1, 3, 4, 4)
    assert torch.allclose(x_adv, expected, atol=1e-6)


def test_l2_pgd_on_a_linear_model_moves_along_the_weight_difference():
    torch.manual_seed(2)
    w = torch.randn(2, 3 * 4 * 4)
    x = torch.full((1, 3, 4, 4), 0.5)
    eps = 0.2
    x_adv = PGD(norm="l2", eps=eps, steps=5, alpha=0.1, random_start=False)(Linear(w), x, torch.tensor([0]))
    d = (w[1] - w[0]) / (w[1] - w[0]).norm()
    assert torch.allclose((x_adv - x).flatten(), eps * d, atol=1e-5)


def test_stronger_pgd_is_never_weaker():
    model, x, y = trained_blobs()
    accs = []
    for eps, steps in [(0.02, 5), (0.05, 5), (0.05, 20), (0.1, 20), (0.2, 20)]:
        x_adv = PGD(eps=eps, steps=steps, alpha=2.5 * eps / steps, random_start=False)(model, x, y)
        with torch.no_grad():
            accs.append(float((model(x_adv).argmax(1) == y).float().mean()))
    assert all(a >= b - 0.01 for a, b in zip(accs, accs[1:], strict=False)), accs
    assert accs[0] > accs[-1]


def test_unbounded_attacks_succeed_on_nearly_every_point():
    model, x, y = trained_blobs()
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    x, y = x[ok][:60], y[ok][:60]
    for attack in (CWL2(c=10.0, steps=100, lr=0.05), PGD(eps=1.0, steps=20)):
        x_adv = attack(model, x, y)
        with torch.no_grad():
            success = float((model(x_adv).argmax(1) != y).float().mean())
        assert success >= 0.95, (attack.name, success)


def test_cw_l2_returns_clean_images_where_it_fails_and_reports_true_norms():
    model, x, y = trained_blobs()
    x, y = x[:20], y[:20]
    x_adv = CWL2(c=1e-4, steps=10)(model, x, y)  # c tiny: the distance term wins, nothing is found
    with torch.no_grad():
        fooled = model(x_adv).argmax(1) != model(x).argmax(1)
    assert torch.equal(x_adv[~fooled], x[~fooled])


def test_binary_search_finds_smaller_or_equal_perturbations():
    model, x, y = trained_blobs()
    x, y = x[:30], y[:30]
    one = CWL2(c=5.0, steps=60, lr=0.05)(model, x, y)
    searched = CWL2(c=5.0, steps=60, lr=0.05, binary_search_steps=4)(model, x, y)
    with torch.no_grad():
        both = (model(one).argmax(1) != y) & (model(searched).argmax(1) != y)
    l2 = lambda a: (a - x).flatten(1).norm(dim=1)  # noqa: E731
    assert both.sum() > 10
    assert float(l2(searched)[both].median()) <= float(l2(one)[both].median()) + 1e-4


def test_targeted_pgd_reaches_the_target():
    model, x, y = trained_blobs()
    target = (y + 1) % 3
    x_adv = PGD(eps=0.5, steps=30, targeted=True)(model, x[:50], target[:50])
    with torch.no_grad():
        assert float((model(x_adv).argmax(1) == target[:50]).float().mean()) > 0.9


def test_margin_loss_by_hand():
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0]])
    assert margin_loss(logits, torch.tensor([0, 2])).tolist() == [-1.0, 4.0]


@pytest.mark.parametrize("name", ["pgd", "cw-l2", "apgd-ce"])
def test_attacks_restore_mode_and_requires_grad(name):
    model = small_model()
    model.train()
    model[0].weight.requires_grad_(False)  # a mixed state must come back exactly
    before = [p.requires_grad for p in model.parameters()]
    x, y = torch.rand(3, 3, 6, 6), torch.tensor([0, 1, 2])
    attack = make_attack(name, **({"steps": 2} if name != "apgd-ce" else {}))
    attack(model, x, y)
    assert all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == before


def test_frozen_restores_state_when_the_attack_raises():
    model = small_model().train()

    def boom(x):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        with frozen(model):
            assert not model.training
            boom(None)
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_attack_does_not_touch_the_global_rng():
    model = small_model()
    x, y = torch.rand(2, 3, 6, 6), torch.tensor([0, 1])
    state = torch.get_rng_state()
    PGD(steps=2)(model, x, y, generator=torch.Generator().manual_seed(0))
    AutoAttackRunner(components=("apgd-ce",))(model, x, y)
    assert torch.equal(state, torch.get_rng_state())


def test_seeded_attacks_are_reproducible():
    model = small_model()
    x, y = torch.rand(4, 3, 6, 6), torch.tensor([0, 1, 2, 3])
    a = PGD(steps=3)(model, x, y, generator=torch.Generator().manual_seed(5))
    b = PGD(steps=3)(model, x, y, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_our_pgd_agrees_with_apgd_ce():
    model, x, y = trained_blobs()
    eps = 0.08
    ours = PGD(eps=eps, steps=50, alpha=eps / 10)(model, x, y, generator=torch.Generator().manual_seed(0))
    ref = make_attack("apgd-ce", eps=eps)(model, x, y)
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
        a = float((model(ours).argmax(1) == y).float().mean())
        b = float((model(ref).argmax(1) == y).float().mean())
    assert clean - b > 0.1, "the budget must matter for this comparison to mean anything"
    assert abs(a - b) <= 0.05, (clean, a, b)
    assert (ref.double() - x.double()).abs().max().item() <= eps  # AutoAttack's output, fitted into the ball


class _Split:
    """A hand-made split of ``small_model`` after its BatchNorm (no context crosses the cut)."""

    def __init__(self, model):
        self.model, self.layer = model, "1"

    def features_and_context(self, x):
        return self.model[:2](x), ()

    def head(self, z, context=(), consume=False):
        return self.model[2:](z)


@pytest.mark.parametrize("form", ["surrogate", "exact", "linf"])
def test_nrf_forms_respect_their_threat_model(form):
    model, x, y = trained_blobs()
    model = nn.Sequential(model[0], nn.Identity(), *model[1:]).eval()
    x, y = x[:40], y[:40]
    mask = torch.tensor([1, 0, 1, 0, 1, 0, 1, 0])
    attack = NRF(split=_Split(model), mask=mask, form=form, steps=30, c=1.0, eps=0.1 if form == "linf" else None)
    x_adv = attack(model, x, y)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    info = attack.describe()
    assert info["norm"] == ("linf" if form == "linf" else "l2")
    assert info["masked_channels"] == 4
    if form == "linf":
        assert (x_adv.double() - x.double()).abs().max().item() <= 0.1
    with torch.no_grad():
        assert float((model(x_adv).argmax(1) != y).float().mean()) > 0.5


def test_nrf_surrogate_objective_has_the_value_and_gradient_of_method_md():
    """NRF's surrogate objective is −(‖x'−x‖² + c·Σf − ‖G‖) with G = mask·∂(−Σf)/∂Z̄ over the whole batch,
    and its gradient treats ‖G‖ as ‖Z̄ − (Z̄ − G)‖: the features are pushed along G/‖G‖."""
    model, x, y = trained_blobs()
    model = nn.Sequential(model[0], nn.Identity(), *model[1:]).eval()
    x, y = x[:6], y[:6]
    mask = torch.tensor([1.0, 0, 1, 0, 1, 0, 1, 0]).expand(6, -1)
    attack = NRF(split=_Split(model), mask=mask[0], form="surrogate", c=0.7)
    x_adv = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1).requires_grad_(True)
    value, logits = attack._objective(mask)(x_adv, x, y)
    (grad,) = torch.autograd.grad(value, x_adv)
    # by hand
    x2 = x_adv.detach().clone().requires_grad_(True)
    z = model[:2](x2)
    out = model[2:](z)
    other = out.clone()
    other[torch.arange(6), y] = float("-inf")
    f = (out[torch.arange(6), y] - other.max(1).values).clamp_min(0)
    (g,) = torch.autograd.grad(-f.sum(), z, retain_graph=True)
    G = mask[:, :, None, None] * g
    l2 = (x2 - x).pow(2).sum()
    assert float(value) == pytest.approx(float(-(l2 + 0.7 * f.sum() - G.norm())), rel=1e-5)
    surrogate = -(l2 + 0.7 * f.sum()) + (z * (G / G.norm())).sum()  # d‖G‖/dZ̄ taken as G/‖G‖
    (expected,) = torch.autograd.grad(surrogate, x2)
    assert torch.allclose(grad, expected, atol=1e-6)
    assert torch.allclose(logits, out, atol=1e-6)


def test_make_attack_rejects_unknown_names_and_settings():
    with pytest.raises(UserError, match="unknown attack"):
        make_attack("nope")
    with pytest.raises(UserError, match="no setting"):
        make_attack("pgd", c=3)
    with pytest.raises(UserError, match="eps"):
        make_attack("pgd", eps=0)
    with pytest.raises(UserError, match="steps"):
        make_attack("pgd", steps=0)
    with pytest.raises(UserError, match="LayerSplit"):
        make_attack("nrf")


def test_bad_inputs_are_refused():
    model = small_model()
    with pytest.raises(UserError, match=r"\[0,1\]"):
        PGD()(model, torch.rand(2, 3, 6, 6) * 4, torch.tensor([0, 1]))
    with pytest.raises(UserError, match="NaN"):
        PGD()(model, torch.full((2, 3, 6, 6), float("nan")), torch.tensor([0, 1]))
    with pytest.raises(UserError, match="labels"):
        PGD()(model, torch.rand(2, 3, 6, 6), torch.tensor([0]))
    with pytest.raises(UserError, match="batch of images"):
        PGD()(model, torch.rand(3, 6, 6), torch.tensor([0]))


def test_every_registered_attack_describes_its_norm_and_budget():
    for name, spec in ATTACKS.items():
        if spec.needs_split:
            continue
        attack = make_attack(name)
        info = attack.describe()
        assert info["name"] == name and info["norm"] == spec.norm == attack.norm
        if name == "cw-l2":
            assert info["eps"] is None  # unbounded: its size is the measured perturbation
        else:
            assert info["eps"] == attack.eps > 0


def test_nrf_without_a_mask_takes_the_bottleneck_split_of_the_clean_batch():
    from nonrobust.bottleneck import IBConfig

    model, x, y = trained_blobs()
    model = nn.Sequential(model[0], nn.Identity(), *model[1:]).eval()
    attack = make_attack("nrf", split=_Split(model), ib=IBConfig(iterations=20), steps=20, c=1.0)
    x_adv = attack(model, x[:20], y[:20])
    info = attack.describe()
    assert info["channels"] == "nonrobust" and "bottleneck" in info["masks"]
    assert (x_adv - x[:20]).abs().max() > 0
    assert make_attack("rf", split=_Split(model)).channels == "robust"


def test_attack_sets_build_and_keep_their_budgets():
    from nonrobust.attacks import ATTACK_SETS, make_attack_set

    model = small_model()
    split = _Split(model)
    table3 = make_attack_set("paper-table3", split=split)
    assert table3["PGD"].describe()["eps"] == 0.03 and table3["CW"].describe()["norm"] == "l2"
    assert table3["AA (reference: APGD-CE)"].describe()["apgd_restarts"] == 1
    standard = make_attack_set("standard", split=split)
    assert {a.describe()["eps"] for a in standard.values()} == {8 / 255}
    assert {a.describe()["norm"] for a in standard.values()} == {"linf"}
    assert make_attack_set("table4", split=split)["G_r ↑ (RF)"].channels == "robust"
    with pytest.raises(UserError, match="split"):
        make_attack_set("standard")
    assert set(ATTACK_SETS) >= {"paper-table3", "standard", "table4"}


def test_attacks_work_under_no_grad():
    model = small_model()
    x, y = torch.rand(2, 3, 6, 6), torch.tensor([0, 1])
    with torch.no_grad():
        x_adv = PGD(steps=2)(model, x, y)
    assert (x_adv - x).abs().max() > 0


def test_describe_is_a_complete_settings_key():
    """Changing any one setting of NRF (every bottleneck setting and the mask's contents included) changes its key.

    Before 0.1.2 the key left out the bottleneck's iterations, lr, noise and kl and recorded only a
    given mask's channel count, so a report or a resumed attack reused examples made otherwise.
    """
    from dataclasses import fields as dc_fields, replace

    from nonrobust.bottleneck import IBConfig
    from nonrobust.io import digest

    model = small_model()
    other_split = _Split(model)
    other_split.layer = "0"
    base = NRF(split=_Split(model), ib=IBConfig(), form="surrogate")
    linf = NRF(split=_Split(model), ib=IBConfig(), form="linf", eps=0.1)
    key = digest(base.describe())
    changes = dict(split=other_split, mask=torch.tensor([1, 0, 1, 0, 1, 0]), channels="robust", ib=None, form="exact", sign=-1, c=0.2,
                   steps=7, lr=0.05, eps=0.1, alpha=0.01, alpha_factor=3.0, random_start=False, early_stop=False, loop="reference",
                   name="nrf-renamed")
    assert set(changes) == {f.name for f in dc_fields(NRF)}, "a new NRF setting needs a changed value here"
    for name, value in changes.items():
        if name == "ib":
            continue
        # the L2 forms take no step size (Adam's lr instead): alpha_factor is checked on the linf form, which has no lr
        start = linf if name == "alpha_factor" else base
        assert digest(replace(start, **{name: value}).describe()) != digest(start.describe()), name
    ib_changes = dict(protocol="batch-free", beta=0.5, iterations=50, lr=0.2, noise="unit", kl="sum", seed=1, samples=2, labels="predicted",
                      threshold="channel")
    assert set(ib_changes) == {f.name for f in dc_fields(IBConfig)}
    for name, value in ib_changes.items():
        assert digest(replace(base, ib=replace(IBConfig(), **{name: value})).describe()) != key, f"ib.{name}"
    # two masks with the same number of channels are different settings
    one, two = torch.tensor([1, 1, 0, 0, 0, 0]), torch.tensor([0, 0, 1, 1, 0, 0])
    assert digest(replace(base, mask=one).describe()) != digest(replace(base, mask=two).describe())
    assert digest(replace(base, mask=one).describe()) == digest(replace(base, mask=one.clone()).describe())


def test_every_attack_describes_every_setting():
    for name, spec in ATTACKS.items():
        kwargs = {"split": _Split(small_model())} if spec.needs_split else {}
        attack = make_attack(name, **kwargs)
        info = attack.describe()
        from dataclasses import fields as dc_fields

        # NRF leaves out the lr or α factor its form never uses; split is "layer"
        missing = {f.name for f in dc_fields(attack)} - set(info) - {"lr", "alpha_factor", "split"}
        assert not missing, (name, missing)


@pytest.mark.filterwarnings("ignore:no channel came out robust")
def test_nrf_seeds_the_bottleneck_by_image_index_like_table1(tmp_path):
    """The same image gets the same bottleneck noise in an attack run as in Table 1: seeded by its index in the data set."""
    from nonrobust.bottleneck import IBConfig, distill
    from nonrobust.data import ImageDataset
    from nonrobust.evaluation import batch_generator
    from nonrobust.streams import attack_to_file

    model, x, y = trained_blobs()
    model = nn.Sequential(model[0], nn.Identity(), *model[1:]).eval()
    x, y = (x[:16] * 255).round() / 255, y[:16]
    split, ib = _Split(model), IBConfig(protocol="batch-free", beta=10.0, iterations=30)
    attack = make_attack("nrf-linf", split=split, ib=ib, eps=0.1, steps=3)
    second = torch.arange(8, 16)
    by_index = distill(split, x[8:], y[8:], ib, indices=second)
    by_position = distill(split, x[8:], y[8:], ib)
    assert not torch.equal(by_index.robust_mask, by_position.robust_mask)  # the masks really depend on the seeding
    assert torch.equal(attack._channel_mask(x[8:], y[8:], second), by_index.nonrobust_mask.float())
    ds = ImageDataset("blobs", "test", (x * 255).round().to(torch.uint8), y, ["a", "b", "c"])
    attack_to_file(model, ds, attack, tmp_path / "adv.safetensors", batch_size=8, progress=False)
    from nonrobust.io import load_tensors

    stored = load_tensors(tmp_path / "adv.safetensors", keys=["x_adv"])[0]["x_adv"]
    direct = attack(model, x[8:], y[8:], generator=batch_generator(0, 1), indices=second)
    assert torch.equal(stored[8:], direct)
    assert not torch.equal(stored[8:], attack(model, x[8:], y[8:], generator=batch_generator(0, 1)))  # 0.1.1 seeded by position


def test_the_gradient_norm_term_of_nrf_matters():
    """With an all-zero mask NRF is CW-L2 with the same settings; with a non-zero mask the surrogate form differs."""
    model, x, y = trained_blobs()
    model = nn.Sequential(model[0], nn.Identity(), *model[1:]).eval()
    x, y = x[:40], y[:40]
    cw = CWL2(c=1.0, steps=30)(model, x, y)
    zero = NRF(split=_Split(model), mask=torch.zeros(8), form="surrogate", steps=30, c=1.0)(model, x, y)
    some = NRF(split=_Split(model), mask=torch.tensor([1, 0, 1, 0, 1, 0, 1, 0]), form="surrogate", steps=30, c=1.0)(model, x, y)
    assert torch.equal(zero, cw)
    assert (some - cw).abs().max() > 1e-3


def test_exact_nrf_needs_a_smooth_head():
    """A finding (docs/method.md §4): behind a piecewise-linear head (ReLU, pooling, linear: VGG-16's head at features.41)
    ∂f/∂Z̄ is constant almost everywhere, so the gradient of the exact form's ‖G‖ vanishes and exact NRF is CW-L2.
    Behind a smooth head it is not."""
    model, x, y = trained_blobs()
    relu_model = nn.Sequential(model[0], nn.Identity(), *model[1:]).eval()
    smooth_model = nn.Sequential(model[0], nn.Identity(), nn.Softplus(), *model[2:]).eval()
    x, y = x[:40], y[:40]
    mask = torch.tensor([1, 0, 1, 0, 1, 0, 1, 0])
    for m, same in ((relu_model, True), (smooth_model, False)):
        cw = CWL2(c=1.0, steps=30)(m, x, y)
        exact = NRF(split=_Split(m), mask=mask, form="exact", steps=30, c=1.0)(m, x, y)
        assert torch.equal(exact, cw) is same


def _reference_nrf(model, split, x, y, mask, c=0.1, steps=30, lr=0.1):
    """The reference code's NRF loop, transcribed from its description (docs/method.md §4): x' = (tanh w + 1)/2 with an
    unclamped inverse tanh, Adam on L2² + c·f − ‖G‖ over the batch, the margin's max over (1 − onehot)·z, the smallest-L2
    successful iterate kept (the last iterate never evaluated), early stop at i % (steps//3) == 0 when the cost rose."""
    w = torch.atanh(x * 2 - 1).requires_grad_(True)
    opt = torch.optim.Adam([w], lr=lr)
    best, best_l2 = x.clone(), torch.full((x.shape[0],), float("inf"))
    prev, every = float("inf"), steps // 3
    onehot = torch.nn.functional.one_hot(y, 3).float()
    for i in range(steps):
        xa = (torch.tanh(w) + 1) / 2
        z, _ = split.features_and_context(xa)
        logits = split.head(z)
        f = ((logits * onehot).sum(1) - (logits * (1 - onehot)).max(1).values).clamp(min=0)
        (g,) = torch.autograd.grad(-f.sum(), z, retain_graph=True)
        G = mask[None, :, None, None] * g
        cost = (xa - x).pow(2).flatten(1).sum(1).sum() + c * f.sum() - (z - (z.detach() - G.detach())).norm()
        with torch.no_grad():
            l2 = (xa - x).flatten(1).norm(dim=1)
            better = (logits.argmax(1) != y) & (l2 < best_l2)
            best[better], best_l2[better] = xa[better], l2[better]
        opt.zero_grad()
        cost.backward()
        opt.step()
        if i % every == 0:
            if cost.item() > prev:
                break
            prev = cost.item()
    return best


def test_nrf_reference_loop_matches_a_transcription_and_differs_from_ours():
    model, x, y = trained_blobs()
    model = nn.Sequential(model[0], nn.Identity(), *model[1:]).eval()
    x, y = x[:30], y[:30]
    x = x.clone()
    x[0, 0, 0, 0], x[1, 1, 2, 2] = 0.0, 1.0  # pixels at the box's edges: frozen by the unclamped inverse tanh
    mask = torch.tensor([1.0, 0, 1, 0, 1, 0, 1, 0])
    ref = _reference_nrf(model, _Split(model), x, y, mask, c=1.0)
    ours = make_attack("nrf-reference", split=_Split(model), mask=mask, c=1.0, steps=30)(model, x, y)
    assert torch.allclose(ours, ref, atol=1e-6), (ours - ref).abs().max()
    assert ours[0, 0, 0, 0] == 0.0 and ours[1, 1, 2, 2] == 1.0
    default = make_attack("nrf", split=_Split(model), mask=mask, c=1.0, steps=30)(model, x, y)
    assert not torch.equal(default, ours)  # the two loops are different attacks, each under its own name


# --------------------------------------------------------------------------- what runs is what is described
_AA_BACKED = [name for name, spec in ATTACKS.items() if spec.factory is AutoAttackRunner]


def _count_pyautoattack(monkeypatch) -> list[tuple]:
    """Replace pyautoattack's per-run methods by recorders that change nothing (so every restart and target runs)."""
    from pyautoattack.autopgd_base import APGDAttack
    from pyautoattack.fab_base import FABAttack
    from pyautoattack.square import SquareAttack

    calls: list[tuple] = []

    def apgd(self, x, y, x_init=None):
        kind = "apgd-t" if type(self).__name__ == "APGDAttack_targeted" else f"apgd-{self.loss}"
        calls.append((kind, self.n_iter))
        return x, torch.ones(len(x), dtype=torch.bool, device=x.device), torch.zeros(len(x), device=x.device), x

    def fab(self, x, y=None, use_rand_start=False, is_targeted=False):
        calls.append(("fab-t" if is_targeted else "fab", None))
        return x

    def square(self, x, y):
        calls.append(("square", self.n_queries))
        return self.n_queries, x

    monkeypatch.setattr(APGDAttack, "attack_single_run", apgd)
    monkeypatch.setattr(FABAttack, "attack_single_run", fab)
    monkeypatch.setattr(SquareAttack, "attack_single_run", square)
    return calls


@pytest.mark.parametrize("name", _AA_BACKED)
def test_pyautoattack_runs_the_restarts_targets_and_queries_its_description_names(name, monkeypatch):
    """Counted by patching pyautoattack itself: apgd-ce is 1 restart (0.1.3 ran pyautoattack's custom default of 5)."""
    calls = _count_pyautoattack(monkeypatch)
    model = small_model(classes=10)
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)  # every image classified correctly: every component attacks all of them
    attack = make_attack(name)
    attack(model, x, y)
    s = attack.describe()
    per = {"apgd-ce": [("apgd-ce", s["apgd_iterations"])] * s["apgd_restarts"],
           "apgd-dlr": [("apgd-dlr", s["apgd_iterations"])] * s["apgd_restarts"],
           "apgd-t": [("apgd-t", s["apgd_iterations"])] * s["targets"],
           "fab-t": [("fab-t", None)] * s["targets"],
           "fab": [("fab", None)] * s["fab_restarts"],
           "square": [("square", s["square_queries"])]}
    assert calls == [c for component in attack.runs for c in per[component]]
    text = ATTACKS[name].description
    assert text.endswith(AutoAttackRunner.summarise(s))
    if name in ("apgd-ce", "aa-reference", "autoattack"):
        assert s["apgd_restarts"] == 1 and "APGD-CE (1 restart, 100 iterations)" in text and calls[0] == ("apgd-ce", 100)
        assert calls.count(("apgd-ce", 100)) == 1


def test_the_autoattack_description_changes_with_what_runs(monkeypatch):
    calls = _count_pyautoattack(monkeypatch)
    model = small_model(classes=4)
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    attack = make_attack("apgd-ce", apgd_restarts=5, apgd_iterations=7)
    attack(model, x, y)
    assert calls == [("apgd-ce", 7)] * 5
    assert "APGD-CE (5 restarts, 7 iterations)" in attack.summary()
    calls.clear()
    make_attack("autoattack")(model, x, y)  # 4 classes: 3 target classes at most
    assert calls.count(("apgd-t", 100)) == 3 and calls.count(("fab-t", None)) == 3


@pytest.mark.parametrize("name", [n for n, spec in ATTACKS.items() if not spec.needs_split])
def test_registered_settings_are_the_ones_that_run(name):
    """The registry's description is generated from AttackSpec.settings(), which equals what the built attack reports."""
    spec = ATTACKS[name]
    attack = make_attack(name)
    assert attack.describe() == spec.settings()
    assert spec.description.endswith(attack.summary())


def test_attacks_are_found_by_their_labels_and_near_misses_are_named():
    assert make_attack("PGD-20").describe() == make_attack("pgd-20").describe()
    assert make_attack("CW∞").describe()["name"] == "cw-inf"
    with pytest.raises(UserError, match="did you mean pgd-20"):
        make_attack("pgd20")


def test_budgets_in_pixel_units_are_checked():
    with pytest.raises(UserError, match="more than the whole pixel range"):
        make_attack("pgd-20", eps=8.0)
    with pytest.warns(UserWarning, match="above 16/255"):
        make_attack("fgsm", eps=20 / 255)
    make_attack("pgd-l2", eps=2.0)  # an L2 radius above 1 is an ordinary budget


def test_readme_attack_table_is_the_generated_one():
    """README's attack table is :func:`attack_table` of the registry, regenerated by scripts/readme_tables.py."""
    from helpers import load_script
    from nonrobust.attacks import attack_table

    tables = load_script("readme_tables")
    text = tables.README.read_text(encoding="utf-8")
    assert attack_table() in text
    assert tables.regenerate(text) == text, "README's generated tables are stale: run python scripts/readme_tables.py"
    assert tables.regenerate(text.replace("| `pgd-20` |", "| `pgd-21` |")) == text  # a hand edit is undone
    assert len(attack_table().splitlines()) == len(ATTACKS) + 2


def test_cw_l2_is_l2_whatever_it_is_asked():
    with pytest.raises(UserError, match="no setting.*norm"):
        make_attack("cw-l2", norm="linf")
    assert make_attack("cw-l2").norm == "l2" and make_attack("cw-l2").describe()["norm"] == "l2"


def test_every_list_of_attacks_is_a_named_set():
    """The report's menu and defaults, the quick profile, reproduce's CPU report and README name ATTACK_SETS entries."""
    from nonrobust import reproduce
    from nonrobust.attacks import ATTACK_SETS
    from nonrobust.report.settings import PROFILES, TABLE3_ATTACKS, ReportSettings

    assert all(name in ATTACKS for s in ATTACK_SETS.values() for name in s.names)
    assert TABLE3_ATTACKS == ATTACK_SETS["report"].names
    for name in ("report-full", "report-quick", "report-cpu", "figure-attack"):
        assert set(ATTACK_SETS[name].names) <= set(TABLE3_ATTACKS), name
    assert ReportSettings(model="m", data="d").attacks == ATTACK_SETS["report-full"].names
    assert PROFILES["quick"]["settings"]["attacks"] == ATTACK_SETS["report-quick"].names
    assert reproduce.REPRODUCE_PRESETS["cpu-vgg16-cifar10"].report["attacks"] == ATTACK_SETS["report-cpu"].names
    assert ReportSettings(model="m", data="d", attacks=("report-cpu", "PGD-20")).attacks == ATTACK_SETS["report-cpu"].names
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert f"any of {','.join(TABLE3_ATTACKS)}: the attack set `report`" in readme


def test_make_nrf_takes_population_masks_and_refuses_what_does_not_fit():
    """NRF with a population split is a library call: its masks by the attack's channels, checked against the model."""
    import dataclasses

    from nonrobust.attacks import make_nrf
    from nonrobust.bottleneck import IBConfig, IBResult

    model, x, y = trained_blobs()
    robust = torch.tensor([True, False] * 4)
    pop = IBResult("0", IBConfig(protocol="population"), torch.ones(8), torch.ones(8), torch.tensor(1.0), robust, 0.0)
    nrf = make_nrf("NRF-L∞", model, population=pop, steps=2)
    assert nrf.split.layer == "0" and torch.equal(nrf.mask.bool(), ~robust)  # the model's last conv: default_layer
    assert torch.equal(make_nrf("rf", model, population=pop).mask.bool(), robust)
    x_adv = nrf(model, x[:4], y[:4])
    assert float((x_adv - x[:4]).abs().max()) <= nrf.eps + 1e-7
    per_image = IBResult("0", IBConfig(), torch.ones(4, 8), torch.ones(4, 8), torch.ones(4), robust.expand(4, 8), 0.0)
    with pytest.raises(UserError, match="per-image masks belong to the images"):
        make_nrf("nrf", model, population=per_image)
    with pytest.raises(UserError, match="computed at layer 'features.3'.*--layer features.3"):
        make_nrf("nrf", model, population=dataclasses.replace(pop, layer="features.3"))
    with pytest.warns(UserWarning, match="made on another model"):
        make_nrf("nrf", model, population=dataclasses.replace(pop, extra={"provenance": {"model": {"digest": "0" * 64}}}))
    with pytest.raises(UserError, match="population protocol needs the population split"):
        make_nrf("nrf", model, ib=IBConfig(protocol="population"))
    with pytest.raises(UserError, match="does not use channel masks"):
        make_nrf("pgd-20", model)
    assert make_nrf("nrf", model, ib=IBConfig(iterations=5)).ib == IBConfig(iterations=5)
