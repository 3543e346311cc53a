"""The shipped models and data slice load without a download and agree with their metadata."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from nonrobust import data, loading, models

SHIPPED = [name for name, spec in models.PRETRAINED.items() if spec.available()]


def test_every_registered_model_is_shipped():
    assert SHIPPED == list(models.PRETRAINED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_loads_offline_with_its_recipe_and_measurements(name):
    """Each shipped model: eval mode, float32 on load, its recipe (config, wall time) and clean accuracy on the whole test set
    in its metadata, and the shipped CIFAR-10 slice (part of that test set) scored close to the recorded figure."""
    model, meta = loading.resolve(name)
    assert not model.training and all(p.dtype == torch.float32 for p in model.parameters())
    config = meta.recipe["config"]
    assert meta.arch == config["arch"] and meta.dataset == "cifar10" and meta.input_shape == (3, 32, 32)
    assert meta.split_layer == models.ARCHITECTURES[meta.arch].default_layer
    assert meta.metrics["training_seconds"] > 0 and models.training_summary(meta).startswith(f"{config['method']}, {config['epochs']} epochs")
    clean = meta.metrics["clean_accuracy"]
    assert clean["n"] == 10000 and f"clean {clean['value']:.1%} (n=10000)" in models.headline(meta)
    for key, _ in models.shipped._HEADLINE_METRICS[1:]:  # every attack models list shows
        entry = meta.metrics.get(key)
        if isinstance(entry, dict):  # a measured attack carries its budget and the sizes it measured
            assert entry["attack"]["eps"] == pytest.approx(8 / 255) and entry["attack"]["norm"] == "linf"
            assert entry["perturbation"]["linf_max"] <= 8 / 255 + 1e-6, key
    x, y = data.load_dataset("cifar10-slice", n=200).tensors()
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    assert abs(acc - clean["value"]) < 0.08, (name, acc)


def _half(name: str) -> bool:
    rounding = models.PRETRAINED[name].meta().metrics.get("weight_rounding", {})
    return rounding.get("shipped", rounding.get("dtype")) == "float16"


@pytest.mark.parametrize("name", [n for n in SHIPPED if _half(n)])
def test_float16_shipped_model_round_trips_and_records_what_rounding_cost(name, tmp_path):
    """Half-precision assets: weights stored as F16 (normalisation as F32), the rounding measured on the whole test set
    and within 0.2 points, and saving the loaded model in float16 again gives back exactly the same weights."""
    spec = models.PRETRAINED[name]
    model, meta = models.load_with_meta(spec.path())
    with safe_open(str(spec.path()), framework="pt") as fh:
        stored = {k: fh.get_slice(k).get_dtype() for k in fh.keys()}
    assert stored["normalize.mean"] == "F32" and {d for k, d in stored.items() if k.endswith(".weight")} == {"F16"}
    rounding = meta.metrics["weight_rounding"]
    assert rounding["dtype"] == "float16" and rounding["n"] == 10000 and abs(rounding["change_points"]) <= 0.2
    assert rounding["clean_accuracy_rounded"] == meta.metrics["clean_accuracy"]["value"]
    models.save(model, tmp_path / "again.safetensors", meta, dtype=torch.float16)
    again = models.load(tmp_path / "again.safetensors")
    for (key, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), key


def test_shipped_small_at_is_the_one_the_findings_use():
    model, meta = loading.resolve("cifar10-small-at")
    assert meta.arch == "small_cnn" and meta.split_layer == "features.23" and meta.metrics["pgd20_accuracy"]["n"] == 10000


def test_the_training_presets_state_the_shipped_models_measured_training_time():
    """The wall time a CPU preset states is the one its shipped model's metadata measured (one home: the metadata)."""
    from nonrobust.reproduce import REPRODUCE_PRESETS
    from nonrobust.training import PRESETS

    for preset, name in (("cpu-small", "cifar10-small-at"), ("cpu-vgg16", "cifar10-vgg16-at"), ("cpu-vgg16-std", "cifar10-vgg16-std"),
                         ("cpu-wrn16", "cifar10-wrn16-at"), ("cpu-small-trades", "cifar10-small-trades"),
                         ("cpu-small-mart", "cifar10-small-mart")):
        seconds = models.PRETRAINED[name].meta().metrics["training_seconds"]
        assert f"training_seconds, {round(seconds)} s" in PRESETS[preset].description, preset
        assert f"{preset}-cifar10" not in REPRODUCE_PRESETS or PRESETS[preset].description in REPRODUCE_PRESETS[f"{preset}-cifar10"].description


def test_the_committed_independent_checks_reproduce_the_shipped_figures_within_a_point():
    """docs/findings/NAME-independent-check.json (scripts/independent_check.py: its own reader, network and PGD) agrees with
    NAME's metadata: clean accuracy on the same 10,000 images, and PGD-20 where both counted the same images."""
    from helpers import ROOT

    checks = {path.name.removesuffix("-independent-check.json"): json.loads(path.read_text(encoding="utf-8"))
              for path in (ROOT / "docs" / "findings").glob("*-independent-check.json")}
    assert {"cifar10-wrn16-at", "cifar10-small-trades", "cifar10-small-mart"} <= set(checks)
    for name, check in checks.items():
        metrics = models.PRETRAINED[name].meta().metrics
        assert check["clean_accuracy"]["nonrobust"]["value"] == metrics["clean_accuracy"]["value"], name
        assert abs(check["clean_accuracy"]["value"] - metrics["clean_accuracy"]["value"]) <= 0.01, name
        pgd, ours = check["pgd20_accuracy"], metrics["pgd20_accuracy"]
        assert pgd["nonrobust"]["value"] == ours["value"], name
        if pgd["n"] == ours["n"]:
            assert abs(pgd["value"] - ours["value"]) <= 0.01, name


def test_training_summary_names_changed_flags_and_the_run_a_fine_tune_started_from():
    """A fine-tuned model's line: its own flags beside the preset (where it ran is left out), then the run it started from."""
    import dataclasses

    meta = models.PRETRAINED["cifar10-small-at"].meta()
    first = {"config": {"method": "standard", "epochs": 6}, "command": ["nonrobust", "train", "--preset", "p1", "--out", "/r/a"],
             "machine": "M1"}
    second = {"config": {"method": "standard", "epochs": 4, "init": "/r/a/best.safetensors"}, "machine": "M2",
              "command": ["nonrobust", "train", "--preset", "p1", "--init", "/r/a/best.safetensors", "--data-dir=/d", "--resume",
                          "--schedule", "cosine", "--epochs", "4", "--out", "/r/b"],
              "previous": {"recipe": first, "training_seconds": 6262}}
    tuned = dataclasses.replace(meta, recipe=second, metrics={**meta.metrics, "training_seconds": 2400})
    assert models.training_summary(tuned) == ("standard, 4 epochs (preset p1 with --schedule cosine --epochs 4), 40 min on M2, "
                                              "from the weights of: standard, 6 epochs (preset p1), 1 h 44 min on M1")


def test_shipping_a_fine_tuned_run_keeps_the_recipe_of_the_weights_it_started_from(tmp_path):
    from helpers import load_script

    ship = load_script("ship_pretrained")
    torch.manual_seed(0)
    model = models.build("tiny_cnn", num_classes=10)
    recipe = {"config": {"method": "standard", "epochs": 6}, "command": ["nonrobust", "train", "--preset", "p1"]}
    models.save(model, tmp_path / "first.safetensors", models.make_meta(model, dataset="synthetic", recipe=recipe,
                                                                      metrics={"training_seconds": 60.0, "selected_epoch": 6}))
    kept = ship.previous_run(tmp_path / "first.safetensors")
    assert kept["recipe"] == recipe and kept["training_seconds"] == 60.0 and kept["selected_epoch"] == 6
    assert kept["model_digest"] == ship.model_digest(model) and kept["weights"] == "first.safetensors"
    torch.save(model.state_dict(), tmp_path / "plain.pt")  # a plain state dict: only its bytes can be named
    assert set(ship.previous_run(tmp_path / "plain.pt")) == {"weights", "weights_sha256"}
    with pytest.raises(SystemExit, match="gone"):
        ship.previous_run(tmp_path / "missing.safetensors")
