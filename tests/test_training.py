"""Training loop, methods, presets, resumable run folders and torchrun (nonrobust.training)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from nonrobust import models, training
from nonrobust.cli import main
from nonrobust.data import ImageDataset
from nonrobust.errors import UserError
from nonrobust.io import load_tensors
from nonrobust.training import (
    METHODS,
    PRESETS,
    TrainConfig,
    prediction_kl,
    lr_factor,
    make_config,
    trades_adversary,
    train,
)

from helpers import assert_same_tensors, write_npz  # noqa: E402

CLASSES = ["r", "g", "b"]


def _images(n: int, seed: int, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """A learnable set: class k has a brighter channel k, plus noise (uint8 N×C×H×W)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.integers(0, 150, (n, 3, size, size))
    x[np.arange(n), y] += 100
    return x.astype(np.uint8), y


def _dataset(n: int, split: str, seed: int) -> ImageDataset:
    x, y = _images(n, seed)
    return ImageDataset("synthetic", split, torch.from_numpy(x), torch.from_numpy(y), CLASSES)


TRAIN, TEST = _dataset(48, "train", 0), _dataset(16, "test", 1)


def _config(**overrides) -> TrainConfig:
    settings = dict(arch="tiny_cnn", data="synthetic", method="pgd", epochs=1, batch_size=16, lr=0.05, schedule="constant",
                    steps=2, eval_n=16, eval_pgd_steps=2, device="cpu")
    settings.update(overrides)
    if settings["method"] == "fast":
        settings.pop("steps")
    return make_config(**settings)


def _run(cfg: TrainConfig, out: Path, **kw) -> dict:
    return train(cfg, out, progress=False, dataset=TRAIN, eval_dataset=TEST, **kw)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_tensors(path)[0]


# --------------------------------------------------------------------------- methods
@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_trains_one_epoch_with_finite_loss(tmp_path, method):
    result = _run(_config(method=method), tmp_path / method)
    last = result["last"]
    assert result["epochs"] == 1 and last["epoch"] == 1
    assert math.isfinite(last["train_loss"]) and 0 <= last["train_acc"] <= 1
    model = models.load(tmp_path / method / "last.safetensors")  # the held-out check, recomputed from the checkpoint
    x, y = TEST.tensors()
    with torch.no_grad():
        assert last["eval_clean_acc"] == pytest.approx(float((model(x).argmax(1) == y).float().mean()))
    assert last["train_images"] == len(TRAIN)


class _FixedAdversary:
    """Stands in for the inner PGD: returns given adversarial images, so the loss can be computed by hand."""

    def __init__(self, x_adv: torch.Tensor) -> None:
        self.x_adv = x_adv

    def __call__(self, model, x, y, generator=None):
        return self.x_adv


def _softmax(row: list[float]) -> list[float]:
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * (math.log(a) - math.log(b)) for a, b in zip(p, q, strict=True))


@pytest.mark.parametrize("method", ["trades", "mart"])
def test_trades_and_mart_losses_match_a_hand_computation(method):
    """Two samples through a linear model with known weights; TRADES (CE inner) and MART as published, β 2."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2, 3, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, -1.0], [0.5, 2.0], [-1.5, 0.25]]))
    x = torch.tensor([[[[0.2, 0.7]]], [[[0.9, 0.1]]]])
    x_adv = torch.tensor([[[[0.3, 0.6]]], [[[0.8, 0.25]]]])
    y = torch.tensor([1, 0])
    cfg = make_config(method, arch="tiny_cnn", data="synthetic", beta=2.0, **({"inner": "ce"} if method == "trades" else {})).resolved()
    batch = training.Batch(model, model, x, y, cfg, _FixedAdversary(x_adv), torch.Generator())
    loss, logits = METHODS[method].loss(batch)
    w = [[1.0, -1.0], [0.5, 2.0], [-1.5, 0.25]]
    lin = lambda v: [r[0] * v[0] + r[1] * v[1] for r in w]  # noqa: E731
    p = [_softmax(lin([0.2, 0.7])), _softmax(lin([0.9, 0.1]))]
    q = [_softmax(lin([0.3, 0.6])), _softmax(lin([0.8, 0.25]))]
    labels = [1, 0]
    kl = [_kl(p[i], q[i]) for i in range(2)]
    if method == "trades":
        expected = sum(-math.log(p[i][labels[i]]) for i in range(2)) / 2 + 2.0 * sum(kl) / 2
    else:
        ce = sum(-math.log(q[i][labels[i]]) for i in range(2)) / 2
        boost = sum(-math.log(1.0001 - max(v for k, v in enumerate(q[i]) if k != labels[i]) + 1e-12) for i in range(2)) / 2
        expected = ce + boost + 2.0 * sum(kl[i] * (1.0000001 - p[i][labels[i]]) for i in range(2)) / 2
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    assert torch.allclose(logits, model(x_adv))


def test_reference_variants_of_trades_and_mart_train(tmp_path):
    for name in ("reference-trades", "reference-mart"):
        cfg = make_config(name, arch="tiny_cnn", data="synthetic", epochs=1, batch_size=16, steps=2, eval_n=8, eval_pgd_steps=1, device="cpu")
        assert cfg.ce_on_adv and cfg.beta == 0.5
        assert math.isfinite(_run(cfg, tmp_path / name)["last"]["train_loss"])


def test_trades_inner_maximisation_increases_the_kl():
    torch.manual_seed(0)
    model = models.build("tiny_cnn", 3).eval()
    x = TEST.tensors()[0]
    gen = torch.Generator().manual_seed(0)
    start = (x + 0.001 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    x_adv = trades_adversary(model, x, eps=8 / 255, steps=5, alpha=2 / 255, generator=gen)
    with torch.no_grad():
        clean = model(x)
        kl_start, kl_adv = prediction_kl(clean, model(start)).sum(), prediction_kl(clean, model(x_adv)).sum()
    assert kl_adv > 10 * kl_start
    assert float((x_adv - x).abs().max()) <= 8 / 255 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert not model.training and all(p.requires_grad for p in model.parameters()), "the model's modes are restored"


def test_global_rng_is_untouched(tmp_path):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    _run(_config(arch="wrn28_10", arch_options={"depth": 10, "widen": 1, "dropout": 0.3}, eval_n=4), tmp_path / "run")
    assert torch.equal(before, torch.get_rng_state())


# --------------------------------------------------------------------------- run folder
def test_run_folder_metrics_and_checkpoints(tmp_path):
    out = tmp_path / "run"
    cfg = _config(epochs=2)
    result = _run(cfg, out, command=["nonrobust", "train", "..."])
    assert sorted(p.name for p in out.iterdir()) == ["best.safetensors", "config.json", "last.safetensors", "metrics.jsonl", "provenance.json",
                                                         "state.safetensors"]
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in lines] == [1, 2]
    for key in ("train_loss", "train_acc", "eval_clean_acc", "eval_pgd_acc", "lr", "seconds", "images_per_second", "best"):
        assert key in lines[0]
    assert lines[0]["best"] is True
    assert json.loads((out / "config.json").read_text()) == cfg.resolved().to_dict()

    model, meta = models.load_with_meta(result["checkpoint"])
    assert meta.arch == "tiny_cnn" and meta.classes == CLASSES and meta.dataset == "synthetic"
    assert meta.recipe["config"] == cfg.resolved().to_dict() and meta.recipe["command"] == ["nonrobust", "train", "..."]
    assert meta.metrics["epoch"] == 2 and len(meta.metrics["history"]) == 2
    _, best_meta = models.load_with_meta(result["best_checkpoint"])
    best_epoch = max(lines, key=lambda e: (e["eval_pgd_acc"], -e["epoch"]))["epoch"]
    assert best_meta.metrics["epoch"] == best_epoch == result["best"]["epoch"]
    with torch.no_grad():
        assert model(TEST.tensors()[0]).shape == (len(TEST), 3)
    assert_same_tensors(_weights(out / "last.safetensors"),
                         {k[6:]: v for k, v in _weights(out / "state.safetensors").items() if k.startswith("model.")})


def test_resume_after_two_epochs_equals_an_uninterrupted_run(tmp_path):
    cfg = _config(epochs=3, schedule="step:1:0.5", momentum=0.9)
    _run(cfg, tmp_path / "full")
    _run(replace(cfg, epochs=2), tmp_path / "part")
    result = _run(cfg, tmp_path / "part", resume=True)
    assert result["epochs"] == 3
    assert_same_tensors(_weights(tmp_path / "full" / "last.safetensors"), _weights(tmp_path / "part" / "last.safetensors"))
    assert_same_tensors(_weights(tmp_path / "full" / "state.safetensors"), _weights(tmp_path / "part" / "state.safetensors"))
    full = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    part = [json.loads(x) for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [e["train_loss"] for e in full] == [e["train_loss"] for e in part]


def test_run_killed_mid_epoch_resumes_from_the_last_complete_epoch(tmp_path, monkeypatch):
    # dropout + cosine schedule + momentum: every source of state must be restored exactly
    cfg = _config(arch="wrn28_10", arch_options={"depth": 10, "widen": 1, "dropout": 0.3}, epochs=3, schedule="cosine",
                  momentum=0.9, eval_n=4)
    _run(cfg, tmp_path / "full")

    spec = METHODS["pgd"]
    calls = {"n": 0}

    def dies_in_epoch_3(batch):
        calls["n"] += 1
        if calls["n"] == 2 * 3 + 2:  # 3 steps per epoch: the 2nd step of epoch 3
            raise RuntimeError("killed")
        return spec.loss(batch)

    monkeypatch.setitem(METHODS, "pgd", replace(spec, loss=dies_in_epoch_3))
    with pytest.raises(RuntimeError, match="killed"):
        _run(cfg, tmp_path / "part")
    monkeypatch.setitem(METHODS, "pgd", spec)
    assert load_tensors(tmp_path / "part" / "state.safetensors", keys=())[1]["epoch"] == 2
    assert len((tmp_path / "part" / "metrics.jsonl").read_text().splitlines()) == 2

    with pytest.raises(UserError, match="--resume"):
        _run(cfg, tmp_path / "part")
    _run(cfg, tmp_path / "part", resume=True)
    assert_same_tensors(_weights(tmp_path / "full" / "state.safetensors"), _weights(tmp_path / "part" / "state.safetensors"))


def test_crash_between_state_and_derived_files_is_repaired_on_resume(tmp_path, monkeypatch):
    out = tmp_path / "run"
    cfg = _config(epochs=2)
    _run(replace(cfg, epochs=1), out)

    def crash(self, entry):
        raise RuntimeError("crash after the state was committed")

    monkeypatch.setattr(training.folder._RunFolder, "append_metrics", crash)
    with pytest.raises(RuntimeError):
        _run(cfg, out, resume=True)
    monkeypatch.undo()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1  # one epoch behind the committed state
    result = _run(cfg, out, resume=True)  # nothing left to train: only the derived files are repaired
    assert result["epochs"] == 2
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_resume_refuses_other_settings_and_allows_epochs_and_device(tmp_path):
    out = tmp_path / "run"
    cfg = _config()
    _run(cfg, out)
    with pytest.raises(UserError, match="lr=0.05"):
        _run(replace(cfg, lr=0.1), out, resume=True)
    with pytest.raises(UserError, match="already holds"):
        _run(replace(cfg, lr=0.1), out)
    with pytest.raises(UserError, match="no training run"):
        _run(cfg, tmp_path / "nothing", resume=True)
    assert _run(replace(cfg, epochs=2, device="auto"), out, resume=True)["epochs"] == 2
    with pytest.raises(UserError, match="already trained 2 epochs"):
        _run(cfg, out, resume=True)


# --------------------------------------------------------------------------- configuration
@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_build_valid_configs(name):
    cfg = make_config(name, arch="tiny_cnn", data="cifar10").resolved()
    assert cfg.method in METHODS and cfg.epochs >= 1 and cfg.alpha > 0 and cfg.steps >= 1
    assert PRESETS[name].description


def test_preset_values():
    ref = make_config("reference", arch="vgg16", data="cifar10").resolved()
    assert (ref.method, ref.lr, ref.momentum, ref.weight_decay, ref.schedule, ref.epochs, ref.batch_size) == ("pgd", 0.01, 0.0, 1e-2, "step:20:0.2", 60, 100)
    assert (ref.eps, ref.alpha, ref.steps, ref.mean, ref.std) == (0.03, 0.0069, 10, 0.5, 0.25)
    trades = make_config("trades", arch="vgg16", data="cifar10").resolved()
    assert (trades.beta, trades.inner, trades.ce_on_adv, trades.alpha) == (6.0, "kl", False, 2 / 255)
    ref_trades = make_config("reference-trades", arch="vgg16", data="cifar10").resolved()
    assert (ref_trades.beta, ref_trades.inner, ref_trades.ce_on_adv, ref_trades.lr) == (0.5, "ce", True, 0.01)
    fast = make_config("fast", arch="vgg16", data="cifar10").resolved()
    assert (fast.steps, fast.alpha, fast.schedule, fast.lr) == (1, 10 / 255, "cyclic", 0.2)
    small = make_config("cpu-small", data_dir="/data").resolved()
    assert (small.arch, small.data, small.method, small.batch_size) == ("small_cnn", "cifar10", "fast", 128)
    assert make_config("madry", arch="x", data="svhn").resolved().flip is False  # SVHN: no flips
    assert make_config("madry", arch="x", data="cifar10", flip=False, lr=0.5).lr == 0.5  # flags override presets


def test_method_defaults_resolve():
    pgd = TrainConfig("tiny_cnn", "synthetic").resolved()
    assert (pgd.steps, pgd.alpha, pgd.inner) == (10, 2.5 * (8 / 255) / 10, "ce")
    fast = TrainConfig("tiny_cnn", "synthetic", method="fast", eps=0.1).resolved()
    assert (fast.steps, fast.alpha) == (1, 0.125)
    assert TrainConfig("tiny_cnn", "synthetic", method="mart").resolved().beta == 6.0


@pytest.mark.parametrize("bad, match", [
    (dict(epochs=0), "epochs"), (dict(eps=0.0), "eps"), (dict(eps=-1.0), "eps"), (dict(method="nope"), "unknown training method"),
    (dict(method="fast", steps=10), "1 inner step"), (dict(method="mart", inner="kl"), "inner"), (dict(schedule="step:x"), "schedule"),
    (dict(amp="fp16"), "amp"), (dict(lr=0.0), "lr"), (dict(batch_size=0), "batch_size"),
])
def test_invalid_settings_raise_user_errors(bad, match):
    with pytest.raises(UserError, match=match):
        TrainConfig("tiny_cnn", "synthetic", **bad)


def test_make_config_errors():
    with pytest.raises(UserError, match="unknown preset"):
        make_config("nope", arch="a", data="b")
    with pytest.raises(UserError, match="--arch"):
        make_config(data="cifar10")
    with pytest.raises(UserError, match="unknown training setting"):
        make_config(arch="a", data="b", lrr=0.1)


def test_lr_schedules():
    assert [lr_factor("step:2:0.5", e, 0, 10, 6) for e in range(5)] == [1, 1, 0.5, 0.5, 0.25]
    assert [lr_factor("multistep:1,3:0.1", e, 0, 10, 6) for e in range(4)] == pytest.approx([1, 0.1, 0.1, 0.01])
    assert lr_factor("cosine", 0, 0, 10, 4) == 1 and lr_factor("cosine", 2, 0, 10, 4) == pytest.approx(0.5)
    cyc = [lr_factor("cyclic", e, i, 10, 5) for e in range(5) for i in range(10)]
    assert max(cyc) == pytest.approx(1) and cyc[19] == pytest.approx(1) and cyc[-1] == pytest.approx(0) and cyc[0] > 0
    assert lr_factor("constant", 3, 3, 10, 5) == 1
    with pytest.raises(UserError, match="bad schedule"):
        lr_factor("linear", 0, 0, 1, 1)
    with pytest.raises(UserError, match=r"bad schedule 'step:0:0.5': step size must be ≥ 1"):  # the reason, not only the list
        lr_factor("step:0:0.5", 0, 0, 1, 1)


def test_piecewise_schedule_interpolates_its_knots_and_jumps_where_an_epoch_is_repeated():
    spe = 4  # steps per epoch: step i of epoch e sits at e + (i + 1) / 4
    at = [lr_factor("piecewise:0=0,3=1,8=0,8=0.625,13=0", e, i, spe, 13) for e in range(13) for i in range(spe)]
    assert at[0] == pytest.approx(0.25 / 3) and at[11] == pytest.approx(1)  # t = 0.25, 3.0
    assert at[21] == pytest.approx(0.5)  # t = 5.5: halfway down from 1 at 3 to 0 at 8
    assert at[31] == 0 and at[32] == pytest.approx(0.625 * 4.75 / 5)  # t = 8.0 ends the cycle; t = 8.25 after the jump
    assert at[-1] == 0
    # the same as a one-cycle of 8 epochs, then the 13-epoch one-cycle's descent (how the shipped VGG-16 was trained)
    cyc = [lr_factor("cyclic", e, i, spe, 8 if e < 8 else 13) for e in range(13) for i in range(spe)]
    assert at == pytest.approx(cyc, abs=1e-12)
    assert lr_factor("piecewise:2=0.5,4=0.1", 0, 0, 10, 9) == 0.5 and lr_factor("piecewise:2=0.5,4=0.1", 7, 0, 10, 9) == 0.1
    for bad in ("piecewise:3=1", "piecewise:0=1,2=-1", "piecewise:4=1,2=0"):
        with pytest.raises(UserError, match="at least two knots"):
            lr_factor(bad, 0, 0, 1, 1)
    for bad in ("piecewise:0=1,x", "piecewise:0=1;2=0", "piecewise:"):
        with pytest.raises(UserError, match="bad schedule .*piecewise:E0=F0"):
            lr_factor(bad, 0, 0, 1, 1)


# --------------------------------------------------------------------------- command line
def _write_npz(path: Path, n_train: int = 96, n_test: int = 24) -> Path:
    (x, y), (xt, yt) = _images(n_train, 0), _images(n_test, 1)
    np.savez(path, x_train=x.transpose(0, 2, 3, 1), y_train=y, x_test=xt.transpose(0, 2, 3, 1), y_test=yt)
    return path


def test_cli_trains_resumes_and_refuses(tmp_path, capsys):
    data = _write_npz(tmp_path / "d.npz")
    out = tmp_path / "run"
    args = ["train", "--arch", "tiny_cnn", "--data", f"npz:{data}", "--method", "fast", "--epochs", "1", "--batch-size", "32",
            "--eval-n", "8", "--eval-pgd-steps", "1", "--device", "cpu", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "trained 1 epochs" in printed and "last.safetensors" in printed
    assert main(args + ["--lr", "0.3"]) == 2
    assert "already holds a training run with other settings" in capsys.readouterr().err
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2"]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert main(["train", "--out", str(out), "--resume", "--eps", "0.1"]) == 2
    assert "only epochs and device may change" in capsys.readouterr().err
    assert main(["train", "--data", "cifar10", "--out", str(tmp_path / "y")]) == 2
    assert "--arch" in capsys.readouterr().err


# --------------------------------------------------------------------------- torchrun
def test_torchrun_two_process_gloo_run(tmp_path):
    data = _write_npz(tmp_path / "d.npz", n_train=151)  # odd: the permutation is padded to 152 as DistributedSampler does
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "nonrobust", "train",
           "--arch", "tiny_cnn", "--data", f"npz:{data}", "--method", "pgd", "--steps", "2", "--epochs", "3", "--batch-size", "32",
           "--lr", "0.05", "--schedule", "constant", "--eval-n", "16", "--eval-pgd-steps", "2", "--device", "cpu", "--out", str(out)]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("trained 3 epochs") == 1, "only rank 0 reports"
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in lines] == [1, 2, 3]
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    assert lines[0]["train_images"] == 152  # both ranks' shards together
    model = models.load(out / "last.safetensors")
    assert models.load_with_meta(out / "best.safetensors")[1].recipe["world_size"] == 2
    with torch.no_grad():
        assert model(torch.rand(2, 3, 16, 16)).shape == (2, 3)


_FACTORY = '''
import torch
from torch import nn


def make():
    """A user's own model (not in the registry): normalisation inside, images in [0,1] to 3 logits."""
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(6, NUM_CLASSES))


NUM_CLASSES = 3
'''


def test_a_users_own_architecture_trains_and_its_checkpoint_loads_back(tmp_path, capsys):
    """``train --model file.py:function``: from scratch, fine-tuned with --init, and loaded back by --model CHECKPOINT."""
    from nonrobust import loading

    factory = tmp_path / "mine.py"
    factory.write_text(_FACTORY)
    spec = f"{factory}:make"
    result = _run(_config(arch=spec), tmp_path / "scratch")
    model, meta = loading.resolve(result["checkpoint"])
    assert meta.arch == spec and meta.split_layer == "1" and meta.num_classes == 3  # its last BatchNorm: the default split
    assert_same_tensors(dict(sorted(model.state_dict().items())), dict(sorted(_weights(Path(result["checkpoint"])).items())))
    with torch.no_grad():
        acc = float((model(TEST.tensors()[0]).argmax(1) == TEST.labels).float().mean())
    assert acc == pytest.approx(result["last"]["eval_clean_acc"])  # the held-out figure, recomputed from the checkpoint
    with pytest.raises(UserError, match="Python factory .*load it with --model"):
        models.load(result["checkpoint"])  # the registry alone cannot rebuild it, and says what can
    tuned = _run(_config(arch=spec, init=str(result["checkpoint"]), epochs=1), tmp_path / "tuned")
    assert tuned["last"]["epoch"] == 1
    factory.write_text(_FACTORY.replace("NUM_CLASSES = 3", "NUM_CLASSES = 5"))
    with pytest.raises(UserError, match="returns 5 logits, synthetic has 3 classes"):
        _run(_config(arch=spec), tmp_path / "wrong")
    with pytest.raises(UserError, match="is your own model: --arch-option has no effect"):
        _run(_config(arch=spec, arch_options={"width": 2}), tmp_path / "opts")


def test_train_takes_a_python_file_model_on_the_command_line(tmp_path, capsys):
    """Every command takes every model route: `train --model file.py:function`, then `attack` on its checkpoint."""
    factory = tmp_path / "mine.py"
    factory.write_text(_FACTORY.replace("NUM_CLASSES = 3", "NUM_CLASSES = 10"))
    write_npz(tmp_path / "d.npz", 32, 16)
    out = tmp_path / "run"
    assert main(["train", "--model", f"{factory}:make", "--data", f"npz:{tmp_path / 'd.npz'}", "--epochs", "1", "--batch-size", "16",
                 "--eval-n", "16", "--eval-pgd-steps", "1", "--method", "fast", "--device", "cpu", "--out", str(out)]) == 0
    assert main(["attack", "--model", str(out / "last.safetensors"), "--data", f"npz:{tmp_path / 'd.npz'}", "--first", "8",
                 "--attack", "fgsm", "--out", str(tmp_path / "adv.safetensors")]) == 0
    summary = json.loads((tmp_path / "adv.json").read_text())
    assert summary["n"] == 8 and summary["attack"]["name"] == "fgsm" and f"{factory}:make" in capsys.readouterr().out + str(summary)
