"""The sanity checks: each control on tiny seeded models, with expectations computed by hand where they can be."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from nonrobust import sanity
from nonrobust.analyses import feature_accuracy
from nonrobust.attacks import make_attack
from nonrobust.bottleneck import IBConfig, apply_mask, distill_population, masked_predictions
from nonrobust.report import ReportSettings, run_report
from nonrobust.split import split_model


class PooledLinear(nn.Module):
    """conv → (split here) → ReLU → average pool → linear: a head whose contributions are W[y, c] · mean(relu(z_c))."""

    def __init__(self, channels: int = 6, classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.relu(self.bn(self.conv(x))))))


def _model(seed: int = 0) -> PooledLinear:
    torch.manual_seed(seed)
    return PooledLinear().eval()


def _data(n: int = 8, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 12), min_size=1, max_size=6), st.integers(0, 3))
def test_random_subset_has_exactly_the_ib_masks_size_per_image(sizes, seed):
    k = torch.tensor(sizes)
    indices = torch.arange(10, 10 + len(sizes))
    masks = sanity.random_subset_masks(k, 12, seed=seed, indices=indices)
    assert masks.shape == (len(sizes), 12) and masks.dtype == torch.bool
    assert masks.sum(1).tolist() == sizes
    # an image's mask is its own, whichever batch it is in
    again = sanity.random_subset_masks(k[-1:], 12, seed=seed, indices=indices[-1:])
    assert torch.equal(again[0], masks[-1])


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 16), st.integers(0, 16), st.integers(0, 5))
def test_every_mask_partitions_the_channels(channels, k, seed):
    """Z = Z_r + Z_nr, and the two channel sets are disjoint and cover the layer, for every control's mask."""
    k = min(k, channels)
    z = torch.randn(3, channels, 2, 2, generator=torch.Generator().manual_seed(seed))
    scores = torch.randn(3, channels, generator=torch.Generator().manual_seed(seed + 1))
    sizes = torch.full((3,), k)
    for mask in (sanity.random_subset_masks(sizes, channels, seed=seed, indices=torch.arange(3)), sanity.top_k_masks(scores, sizes),
                 sanity.random_population_mask(k, channels, seed=seed)):
        assert torch.equal(apply_mask(z, mask) + apply_mask(z, ~mask), z)
        kept_r, kept_nr = apply_mask(torch.ones_like(z), mask) != 0, apply_mask(torch.ones_like(z), ~mask) != 0
        assert not (kept_r & kept_nr).any() and (kept_r | kept_nr).all()  # each unit in exactly one of Z_r, Z_nr
        assert kept_r[:, :, 0, 0].sum(1).tolist() == [k] * 3


def test_label_oracle_on_a_linear_head_picks_the_top_k_of_weight_times_activation():
    model = _model()
    split = split_model(model, "bn")
    x, y = _data()
    with torch.no_grad():
        z = model.bn(model.conv(x))
    by_hand = model.fc.weight.detach()[y] * torch.relu(z).mean(dim=(2, 3))  # W[y, c] · pooled activation
    assert torch.allclose(sanity.channel_contributions(split, x, y), by_hand, atol=1e-6)
    sizes = torch.tensor([0, 1, 2, 3, 6, 2, 1, 4])
    masks = sanity.label_oracle_masks(split, x, y, sizes)
    for i, k in enumerate(sizes.tolist()):
        assert set(masks[i].nonzero().flatten().tolist()) == set(by_hand[i].topk(k).indices.tolist())


def test_randomising_the_top_stage_changes_the_heads_weights_and_nothing_below():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, _ = _data()
    stages = sanity.randomisation_stages(model, "bn", x, blocks=2)
    assert stages[0] == {"name": "head", "variant": "cascading", "modules": ["fc"]}
    assert [s["modules"] for s in stages[1:]] == [["fc", "conv", "bn"], ["conv", "bn"]]  # one unit below: conv with its BatchNorm
    rng = torch.get_rng_state()
    clone = sanity.randomised_copy(model, stages[0]["modules"], seed=0)
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is left as it was
    after = clone.state_dict()
    for key, value in before.items():
        assert torch.equal(model.state_dict()[key], value)  # the original is not touched
        assert torch.equal(after[key], value) != key.startswith("fc."), key  # the head changed, nothing below did
    again = sanity.randomised_copy(model, ["fc"], seed=0).state_dict()
    assert all(torch.equal(again[k], after[k]) for k in after)  # seeded


def test_an_adaptive_attack_on_a_mask_that_zeroes_every_channel_leaves_the_constant_heads_accuracy():
    model = _model()
    split = split_model(model, "bn")
    x, y = _data(12)
    constant = int(model.fc.bias.argmax())  # the head of an all-zero Z predicts its bias's largest class
    expected = float((y == constant).float().mean())
    attacks = {"PGD-20": make_attack("pgd-20")}
    none = torch.zeros(6, dtype=torch.bool)
    out = sanity.adaptive_attacks(model, split, [(x[:6], y[:6]), (x[6:], y[6:])], attacks, attacks, population_mask=none,
                                  image_masks=none.expand(12, -1), progress=False)
    for kind in ("population", "per_image"):
        row = out[kind]["rows"]["PGD-20"]
        assert out[kind]["clean"] == row["transfer"] == row["adaptive"] == row["worst_case"] == pytest.approx(expected)
        assert row["perturbation"]["linf_max"] <= 8 / 255 + 1e-6 and row["norm"] == "linf"
    assert all(p.requires_grad for p in model.parameters()) and not model.training  # the model is left as it was


def test_the_masked_model_finds_each_images_mask_also_on_a_subset_of_the_batch():
    model = _model()
    split = split_model(model, "bn")
    x, _ = _data(5)
    masks = torch.rand(5, 6, generator=torch.Generator().manual_seed(3)) > 0.5
    masked = sanity.MaskedModel(split, masks, anchors=x)
    subset = x[[3, 1]] + 0.01  # an attack within its budget, on two of the images
    assert torch.equal(masked.masks_for(subset), masks[[3, 1]])
    with torch.no_grad():
        z = split.features(subset)
        assert torch.allclose(masked(subset), split.head(apply_mask(z, masks[[3, 1]])))


def test_mask_controls_reproduce_table1_and_compare_on_the_same_images():
    model = _model()
    split = split_model(model, "bn")
    x, y = _data(16)
    batches = [(x[:8], y[:8]), (x[8:], y[8:])]
    config = IBConfig(iterations=8)
    pop = distill_population(split, batches, IBConfig(protocol="population", iterations=4, threshold="channel"), progress=False)
    attacks = {"PGD-20": make_attack("pgd-20")}
    summary, tensors = sanity.mask_controls(model, split, batches, attacks, config=config, population=pop, progress=False)
    table1 = feature_accuracy(model, split, batches, attacks, config=config, progress=False)
    assert summary["ib"]["rows"] == table1["rows"]  # the IB split's rows are Table 1's
    assert summary["random_subset"]["population_split"]["rows"] == feature_accuracy(model, split, batches, attacks, population=pop,
                                                                                    progress=False)["rows"]
    assert tensors["ib_mask"].shape == (16, 6)
    assert summary["channels"]["random_subset"] == summary["channels"]["ib"] == summary["channels"]["oracle_true"]
    # the random-subset rows recomputed by hand from its masks
    k = tensors["ib_mask"].sum(1)
    rand = sanity.random_subset_masks(k, 6, seed=config.seed, indices=torch.arange(16))
    right = masked_predictions(split, rand, x)["robust"] == y
    assert summary["random_subset"]["rows"]["clean"]["robust"] == int(right.sum()) / 16
    pair = summary["random_subset"]["versus"]["clean"]["robust"]
    ib_right = tensors["ib/clean/robust"]
    assert pair["a_only"] == int((right & ~ib_right).sum()) and pair["b_only"] == int((~right & ib_right).sum())
    json.dumps(summary)  # plain numbers only


def test_sweep_layers_walks_back_to_larger_maps():
    from nonrobust.models import build

    model = build("small_cnn", num_classes=10).eval()
    x = torch.rand(1, 3, 32, 32)
    assert sanity.sweep_layers(model, "features.23", x) == ["features.15", "features.19", "features.23"]
    assert sanity.sweep_layers(model, "features.23", x, count=1) == ["features.23"]


def test_evaluate_sanity_writes_every_check_with_its_verdict(tmp_path):
    settings = ReportSettings(model="cifar10-small-at", data="cifar10-slice", n=16, batch_size=8, attacks=("pgd-20",), ib_iterations=6,
                              population_n=16, population_iterations=4, stability=1, sanity_n=8, randomisation_blocks=2,
                              sanity_layers=("features.19", "features.23"), adaptive_attacks=("pgd-20",), device="cpu")
    results = run_report(settings, tmp_path, only=("sanity",), progress=False)
    assert set(results["sanity"]) >= set(sanity.CHECKS) and "table1" in results  # the IB split's own Table 1 beside the controls
    assert results["sanity"]["random_subset"]["rows"]["PGD-20"].keys() == results["table1"]["paper"]["rows"]["PGD-20"].keys()
    assert set(results["sanity"]["label_oracle"]) >= {"true", "wrong"}
    assert len(results["sanity"]["model_randomisation"]["stages"]) == 5 and results["sanity"]["model_randomisation"]["n"] == 8
    assert list(results["sanity"]["layers"]) == ["features.19", "features.23"]
    assert {f"sanity_{k}" for k in sanity.CHECKS} <= set(results["readings"])
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<h2>Sanity checks</h2>" in page and "Controls (under PGD-20)" in page
    assert any(note.startswith("Model randomisation, the adaptive attacks and the layer sweep ran on the first 8") for note in results["notes"])


def test_bad_sanity_settings_are_one_line_errors():
    from nonrobust.errors import UserError

    with pytest.raises(UserError, match="adaptive attack"):
        ReportSettings(model="m", data="d", adaptive_attacks=("nrf",))
    assert ReportSettings(model="m", data="d", sanity_layers="a, b").sanity_layers == ("a", "b")  # a comma-separated option


def test_mask_baselines_recompute_from_the_masks():
    model = _model()
    split = split_model(model, "bn")
    x, y = _data(10)
    masks = torch.rand(10, 6, generator=torch.Generator().manual_seed(5)) > 0.5
    b = sanity.mask_baselines(split, [(x[:4], y[:4]), (x[4:], y[4:])], masks, seed=2)
    preds = masked_predictions(split, masks, x)
    assert b["n"] == 10 and b["robust"] == int((preds["robust"] == y).sum()) / 10 and b["int"] == int((preds["int"] == y).sum()) / 10
    oracle = sanity.label_oracle_masks(split, x, y, masks.sum(1))
    assert b["label_oracle"] == int((masked_predictions(split, oracle, x)["robust"] == y).sum()) / 10


def test_split_prints_the_controls_next_to_z_r(capsys, tmp_path):
    from helpers import cli

    code, out, err = cli(capsys, "split", "--model", "cifar10-small-at", "--data", "cifar10-slice", "--first", "16", "--iterations", "5",
                         "--out", tmp_path / "s.safetensors")
    assert code == 0, err
    lines = out.splitlines()
    z_r = next(i for i, line in enumerate(lines) if "from Z_r" in line)
    assert lines[z_r + 1].startswith("controls on the same images: Z_r of a random mask of each image's size")
    assert "label oracle" in lines[z_r + 1] and "the model itself" in lines[z_r + 1]


SANITY_TABLES = (
    {"cifar10-vgg16-at": "cifar10-vgg16-at-sanity", "cifar10-small-at": "cifar10-small-at-sanity", "cifar10-wrn16-at": "cifar10-wrn16-at-test1k"},
    {"cifar10-small-std": "cifar10-small-std-sanity", "cifar10-small-trades": "cifar10-small-trades-test1k",
     "cifar10-small-mart": "cifar10-small-mart-test1k", "cifar10-vgg16-std": "cifar10-vgg16-std-test1k"},
)
"""README's two sanity tables (robust architectures; other training): each model's committed results
(docs/findings/STEM.results.json), an ``evaluate sanity`` run's or a report's."""


@pytest.mark.parametrize("findings", SANITY_TABLES)
def test_readme_sanity_tables_are_the_committed_results(findings):
    """README's controls tables are scripts/sanity_table.py of the committed results, each holding every check on the model it names."""
    from helpers import ROOT as root
    from helpers import load_script

    script = load_script("sanity_table")
    paths = {name: root / "docs" / "findings" / f"{stem}.results.json" for name, stem in findings.items()}
    assert script.table(list(paths.values())) in (root / "README.md").read_text(encoding="utf-8"), "README's sanity table is stale: rerun it"
    for name, path in paths.items():
        results = json.loads(path.read_text(encoding="utf-8"))
        assert set(sanity.CHECKS) <= set(results["sanity"]) and results["settings"]["model"] == name


FINDINGS_TABLES = (
    ({"our VGG-16 (1,000 images)": "cifar10-vgg16-at", "our small_cnn (1,000 images)": "cifar10-small-at",
      "our WRN-16-2 (1,000 images)": "cifar10-wrn16-at"}, True),
    ({"small_cnn, TRADES (1,000 images)": "cifar10-small-trades", "small_cnn, MART (1,000 images)": "cifar10-small-mart",
      "VGG-16, standard training (1,000 images)": "cifar10-vgg16-std"}, False),
)
"""README's findings tables: column label → the shipped model whose committed report (docs/findings/NAME-test1k.results.json)
fills it, and whether the paper's columns lead the table."""


@pytest.mark.parametrize("reports, with_paper", FINDINGS_TABLES)
def test_readme_findings_tables_are_the_committed_reports(reports, with_paper):
    """README's findings tables (the first beside the paper's) are scripts/findings_table.py of the committed 1,000-image reports."""
    from helpers import ROOT as root
    from helpers import load_script

    script = load_script("findings_table")
    columns = {label: (root / "docs" / "findings" / f"{name}-test1k.results.json", name) for label, name in reports.items()}
    text = script.table(columns, script.PAPER if with_paper else {})
    assert text in (root / "README.md").read_text(encoding="utf-8"), "README's findings table is stale: rerun scripts/findings_table.py"
    for (path, name) in columns.values():
        results = json.loads(path.read_text(encoding="utf-8"))
        assert results["settings"]["model"] == name and results["n"] == 1000


TABLE3_ROWS = {"ADV (fast AT, 25 epochs)": "cifar10-small-at", "TRADES (β 6, 12 epochs)": "cifar10-small-trades",
               "MART (β 6, 15 epochs)": "cifar10-small-mart"}
"""README's Table 3 block on small_cnn: row label → the shipped model whose committed 1,000-image report fills it."""


def test_readme_table3_block_is_the_committed_reports():
    """README's Table 3 block is scripts/findings_table.py --table3 of the committed reports: the same attacks on the same images."""
    from helpers import ROOT as root
    from helpers import load_script

    rows = {label: root / "docs" / "findings" / f"{name}-test1k.results.json" for label, name in TABLE3_ROWS.items()}
    assert load_script("findings_table").table3(rows) in (root / "README.md").read_text(encoding="utf-8"), \
        "README's Table 3 block is stale: rerun scripts/findings_table.py --table3"
    seen = [json.loads(path.read_text(encoding="utf-8")) for path in rows.values()]
    assert [r["settings"]["model"] for r in seen] == list(TABLE3_ROWS.values())
    assert len({r["provenance"]["data"]["digest"] for r in seen}) == 1  # table3 refuses otherwise; the committed rows share images


def test_table3_block_refuses_rows_of_other_images_or_attacks(tmp_path):
    """findings_table.table3 compares rows only on the same images (data digest) and the same attacks, else it says which row differs."""
    from helpers import ROOT as root
    from helpers import load_script

    script = load_script("findings_table")
    base = json.loads((root / "docs" / "findings" / "cifar10-small-at-test1k.results.json").read_text(encoding="utf-8"))
    other_images = json.loads(json.dumps(base))
    other_images["provenance"]["data"]["digest"] = "0" * 64
    fewer_attacks = json.loads(json.dumps(base))
    fewer_attacks["table3"]["rows"] = fewer_attacks["table3"]["rows"][:-1]
    paths = {}
    for name, r in (("a", base), ("images", other_images), ("attacks", fewer_attacks)):
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(r), encoding="utf-8")
    assert len(script.table3({"x": paths["a"], "y": paths["a"]}).splitlines()) == 4  # header, rule, two rows
    with pytest.raises(SystemExit, match="y: its images"):
        script.table3({"x": paths["a"], "y": paths["images"]})
    with pytest.raises(SystemExit, match="y: Table 3 has"):
        script.table3({"x": paths["a"], "y": paths["attacks"]})
