"""Table 1 and Table 2 on a tiny model, checked against independent computations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nonrobust.analyses import adversarial_agreement, feature_accuracy
from nonrobust.attacks import make_attack
from nonrobust.bottleneck import IBConfig, IBResult, distill
from nonrobust.errors import UserError
from nonrobust.split import split_model


def setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(6, 3)).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(24, 3, 6, 6, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)  # the model is right on every clean image
    y[::4] = (y[::4] + 1) % 3  # ... except a quarter
    return model, split_model(model, "1"), x, y


def fixed_split(robust: list[bool]) -> IBResult:
    mask = torch.tensor(robust)
    c = len(robust)
    return IBResult("1", IBConfig(protocol="population"), torch.ones(c), torch.zeros(c), torch.tensor(0.5), mask)


def test_table1_with_a_known_split_matches_direct_computation():
    model, split, x, y = setup()
    pop = fixed_split([True, True, True, False, False, False])
    fgsm = make_attack("fgsm", eps=0.1)
    res = feature_accuracy(model, split, [(x[:12], y[:12]), (x[12:], y[12:])], {"FGSM": fgsm}, population=pop, progress=False)
    with torch.no_grad():
        acc = lambda logits: float((logits.argmax(1) == y).float().mean())  # noqa: E731
        z = split.features(x)
        m = pop.robust_mask.float().view(1, -1, 1, 1)
        assert res["rows"]["clean"]["int"] == pytest.approx(acc(model(x)))
        assert res["rows"]["clean"]["robust"] == pytest.approx(acc(split.head(z * m)))
        assert res["rows"]["clean"]["nonrobust"] == pytest.approx(acc(split.head(z * (1 - m))))
        x_adv = torch.cat([fgsm(model, x[:12], y[:12]), fgsm(model, x[12:], y[12:])])
        assert res["rows"]["FGSM"]["int"] == pytest.approx(acc(model(x_adv)))
    assert res["protocol"] == "population" and res["n"] == 24
    assert res["channels"] == {"robust": 3.0, "nonrobust": 3.0, "total": 6}


def test_table1_per_image_protocol_matches_the_bottleneck_run_by_hand():
    """Clean rows: the masks are the bottleneck's on the clean batch, seeded by image index, applied to Z; recomputed here."""
    model, split, x, y = setup()
    config = IBConfig(iterations=10)
    res = feature_accuracy(model, split, [(x, y)], {"PGD": make_attack("pgd", eps=0.05, steps=3)}, config=config, progress=False)
    assert res["protocol"] == "paper"
    masks = distill(split, x, y, config, indices=torch.arange(len(y)))
    with torch.no_grad():
        z = split.features(x)
        acc = lambda logits: float((logits.argmax(1) == y).float().mean())  # noqa: E731
        expected = {"int": acc(model(x)), "robust": acc(split.head(masks.robust(z))), "nonrobust": acc(split.head(masks.nonrobust(z)))}
    assert res["rows"]["clean"] == pytest.approx(expected)


def test_table2_counts_fooled_points_and_shares():
    model, split, x, y = setup()
    pgd = make_attack("pgd", eps=0.3, steps=5)
    config = IBConfig(protocol="batch-free", beta=3.0, iterations=30)
    res = adversarial_agreement(model, split, [(x, y)], {"PGD": pgd}, config=config, progress=False)
    # independently: the points PGD leaves wrong, masks from their adversarial features with the true labels
    x_adv = pgd(model, x, y, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        adv_pred = model(x_adv).argmax(1)
    idx = (adv_pred != y).nonzero().squeeze(1)
    masks = distill(split, x_adv[idx], y[idx], config, indices=idx)
    with torch.no_grad():
        z, ctx = split.features_and_context(x_adv[idx])
        nr_pred = split.head(masks.nonrobust(z), ctx).argmax(1)
        r_pred = split.head(masks.robust(z), ctx).argmax(1)
    row = res["rows"]["PGD"]
    assert row["fooled"] == idx.numel() > 0
    assert row["nonrobust_agrees"] == pytest.approx(float((nr_pred == adv_pred[idx]).float().mean()))
    assert row["robust_agrees"] == pytest.approx(float((r_pred == adv_pred[idx]).float().mean()))
    all_robust = adversarial_agreement(model, split, [(x, y)], {"PGD": pgd}, population=fixed_split([True] * 6), progress=False)
    assert all_robust["rows"]["PGD"]["robust_agrees"] == 1.0  # Z_r = Z: the robust head is the model itself


def test_protocol_arguments_are_checked():
    model, split, x, y = setup()
    with pytest.raises(UserError, match="either"):
        feature_accuracy(model, split, [(x, y)], {}, progress=False)
    with pytest.raises(UserError, match="population="):
        feature_accuracy(model, split, [(x, y)], {}, config=IBConfig(protocol="population"), progress=False)


def test_table1_stability_and_label_control_match_direct_computation():
    from dataclasses import replace

    from nonrobust.bottleneck import masked_predictions, seed_agreement, summarise_agreement

    model, split, x, y = setup()
    config = IBConfig(protocol="batch-free", beta=3.0, iterations=30)
    batches = [(x[:12], y[:12]), (x[12:], y[12:])]
    res = feature_accuracy(model, split, batches, {}, config=config, stability=3, label_control=True, progress=False)
    assert res["threshold"] == "max"
    runs = [distill(split, x, y, replace(config, seed=s)) for s in range(3)]  # batch-free: batching changes nothing
    expected = summarise_agreement(seed_agreement(torch.stack([r.robust_mask for r in runs])), 6, 3)
    assert res["stability"] == pytest.approx(expected)
    wrong = distill(split, x, y, replace(config, labels="random-wrong"), indices=torch.arange(24))
    preds = masked_predictions(split, wrong, x)
    control = res["label_control"]
    assert control["robust_predicts_mask_label"] == pytest.approx(float((preds["robust"] == wrong.labels).float().mean()))
    assert control["robust_predicts_true_label"] == pytest.approx(float((preds["robust"] == y).float().mean()))
    assert control["nonrobust_predicts_mask_label"] == pytest.approx(float((preds["nonrobust"] == wrong.labels).float().mean()))
    assert 0 < control["robust_predicts_mask_label"] + control["nonrobust_predicts_mask_label"]  # the count can see something
