"""The core paths on every available device (``device`` fixture: the CPU always, CUDA where a GPU is present).

On a GPU machine ``python -m pytest -m cuda`` runs the CUDA cases alone (``scripts/device_check.sh`` does).
Each test checks that the results live on the device asked for and that the model is left as it was.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from dataclasses import fields, replace

import pytest
import torch

from nonrobust import models
from nonrobust.attacks import ATTACKS, make_attack
from nonrobust.bottleneck import IBConfig, distill, distill_population
from nonrobust.data import ImageDataset
from nonrobust.split import split_model

CLASSES = [str(i) for i in range(10)]


def _model(device: torch.device, arch: str = "tiny_cnn") -> torch.nn.Module:
    torch.manual_seed(0)
    return models.build(arch).eval().to(device)


def _batch(device: torch.device, n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(0)
    return torch.rand(n, 3, 32, 32, generator=g).to(device), (torch.arange(n) % 10).to(device)


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("method", ["fx", "hooks"])
def test_split(device, method):
    model = _model(device)
    x, _ = _batch(device)
    s = split_model(model, "features.5", method=method)
    z, ctx = s.features_and_context(x)
    assert z.device.type == device.type
    with torch.no_grad():
        assert torch.allclose(s.head(z, ctx), model(x), atol=1e-5)


@pytest.mark.parametrize("protocol", ["paper", "batch-free", "population"])
def test_bottleneck(device, protocol):
    model = _model(device)
    x, y = _batch(device)
    s = split_model(model, "features.5")
    config = IBConfig(protocol=protocol, iterations=5, samples=2)
    with _quiet():
        res = distill_population(s, [(x, y)], config) if protocol == "population" else distill(s, x, y, config)
    z = s.features(x)
    assert res.sigma.device.type == device.type
    assert torch.equal(res.robust(z) + res.nonrobust(z), z)


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate splits of an untrained model are expected here
        yield


def _tiny_settings(name: str) -> dict:
    """Each registered attack at its smallest run: 2 steps, a 3-step bottleneck, AutoAttack's cheapest version."""
    spec = ATTACKS[name]
    names = {f.name for f in fields(spec.factory)}
    out = {}
    if "steps" in names:
        out["steps"] = 2
    if "binary_search_steps" in names:
        out["binary_search_steps"] = 1
    if "ib" in names:
        out["ib"] = IBConfig(iterations=3)
    return out


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack(device, name):
    model = _model(device)
    x, y = _batch(device, 4)
    before = _params(model)
    modes = [m.training for m in model.modules()]
    extra = {"split": split_model(model, "features.5")} if ATTACKS[name].needs_split else {}
    attack = make_attack(name, **_tiny_settings(name), **extra)
    with _quiet():
        x_adv = attack(model, x, y, generator=torch.Generator(device=device).manual_seed(0))
    assert x_adv.device.type == device.type and x_adv.shape == x.shape
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    if ATTACKS[name].norm == "linf" and getattr(attack, "eps", None):
        assert float((x_adv - x).abs().max()) <= attack.eps
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched ...
    assert [m.training for m in model.modules()] == modes and not any(p.requires_grad is False for p in model.parameters())


def test_featvis(device):
    from nonrobust.featvis import FeatVisConfig, invert_features

    model = _model(device)
    x, _ = _batch(device, 2)
    s = split_model(model, "features.5")
    out = invert_features(s, s.features(x), (3, 32, 32), FeatVisConfig(steps=3), progress=False)
    assert out.shape[0] == 2 and out.device.type == device.type


@pytest.mark.parametrize("method", ["standard", "pgd", "trades", "mart", "fast"])
def test_a_training_epoch_in_bf16_channels_last(device, tmp_path, method):
    from nonrobust.training import make_config, train

    g = torch.Generator().manual_seed(0)
    ds = ImageDataset("synthetic", "train", torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8, generator=g),
                      torch.arange(16) % 10, CLASSES)
    settings = dict(arch="tiny_cnn", data="synthetic", method=method, epochs=1, batch_size=8, lr=0.05, schedule="constant",
                    eval_n=8, eval_pgd_steps=1, device=device.type, amp="bf16", channels_last=True)
    if method != "fast":
        settings["steps"] = 1
    summary = train(make_config(**settings), tmp_path / "run", progress=False, dataset=ds, eval_dataset=replace(ds, split="test"))
    assert summary["epochs"] == 1 and torch.isfinite(torch.tensor(summary["last"]["train_loss"]))


class _Interrupted(ImageDataset):
    """A data set whose reading stops (as Ctrl-C would) the first time a batch from image 4 on is asked for."""

    stopped = False

    def batches(self, batch_size, device=None, shuffle=False, generator=None, start=0):
        if start >= 4 and not _Interrupted.stopped:
            _Interrupted.stopped = True
            raise KeyboardInterrupt
        return super().batches(batch_size, device=device, shuffle=shuffle, generator=generator, start=start)


@pytest.mark.parametrize("what", ["attack", "split"])
def test_attack_and_split_resume(device, tmp_path, what):
    """A run stopped after its first batch resumes to the file an uninterrupted run writes."""
    from nonrobust.streams import attack_to_file, split_dataset

    model = _model(device)
    g = torch.Generator().manual_seed(1)
    images, labels = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(12) % 10
    s = split_model(model, "features.5")

    def run(ds, name):
        with _quiet():
            if what == "attack":
                return attack_to_file(model, ds, make_attack("pgd", steps=2), tmp_path / name, batch_size=4, device=device, progress=False)
            return split_dataset(s, ds, IBConfig(iterations=3), tmp_path / name, batch_size=4, device=device, progress=False)

    _Interrupted.stopped = False
    with pytest.raises(KeyboardInterrupt):
        run(_Interrupted("synthetic", "test", images, labels, CLASSES), "a.safetensors")
    assert (tmp_path / "a.safetensors.partial").is_file() and not (tmp_path / "a.safetensors").exists()
    run(_Interrupted("synthetic", "test", images, labels, CLASSES), "a.safetensors")  # resumes at image 4
    run(ImageDataset("synthetic", "test", images, labels, CLASSES), "b.safetensors")
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


def test_trimmed_report(device, tmp_path):
    from nonrobust.report import ReportSettings, run_report

    settings = ReportSettings(model="cifar10-small-at", data="cifar10-slice", n=8, batch_size=8, attacks=("fgsm", "nrf-linf"), table4=False,
                              ib_iterations=3, stability=2, population_n=8, population_iterations=2, betas=(0.0, 1.0), beta_n=8, tsne_n=8,
                              featvis_images=1, featvis_steps=2, device=str(device))
    results = run_report(settings, tmp_path, progress=False)
    assert results["environment"]["device"].startswith(device.type)
    assert json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))["n"] == 8
