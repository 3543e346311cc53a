"""Robust-accuracy evaluation and resumable attack files."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from nonrobust.attacks import PGD, make_attack
from nonrobust.data import ImageDataset
from nonrobust.evaluation import batch_generator, evaluate_attacks
from nonrobust.io import load_tensors
from nonrobust.streams import attack_to_file, summarise_file


def model_and_data(n: int = 40):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 3, 6, 6), generator=g, dtype=torch.uint8)
    with torch.no_grad():  # label half of the points by the model itself so some are correct
        pred = model(images.float() / 255).argmax(1)
    labels = torch.where(torch.arange(n) % 2 == 0, pred, (pred + 1) % 3)
    return model, ImageDataset("synthetic", "test", images, labels, ["a", "b", "c"])


class Interrupting:
    """Wraps an attack and raises on its k-th call, as a kill would stop a run."""

    def __init__(self, attack, k):
        self.attack, self.k, self.calls = attack, k, 0

    def describe(self):
        return self.attack.describe()

    def __call__(self, *a, **kw):
        self.calls += 1
        if self.calls == self.k:
            raise KeyboardInterrupt
        return self.attack(*a, **kw)


def test_attack_file_resumes_to_the_same_result(tmp_path):
    model, ds = model_and_data()
    attack = PGD(steps=3, eps=0.05)  # random start: resuming must reuse per-batch seeds
    full = tmp_path / "full.safetensors"
    attack_to_file(model, ds, attack, full, batch_size=8, seed=3, progress=False)

    part = tmp_path / "part.safetensors"
    with pytest.raises(KeyboardInterrupt):
        attack_to_file(model, ds, Interrupting(attack, 3), part, batch_size=8, seed=3, progress=False)
    assert not part.exists(), "the final file must not exist before the run completes"
    progress = json.loads((tmp_path / "part.safetensors.progress.json").read_text())
    assert progress["rows"] == 16
    resumed = Interrupting(attack, 10**9)
    attack_to_file(model, ds, resumed, part, batch_size=8, seed=3, progress=False)
    assert resumed.calls == 3, "only the unfinished batches are attacked again"
    a, _ = load_tensors(full)
    b, _ = load_tensors(part)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not (tmp_path / "part.safetensors.partial").exists()


def test_attack_file_summary_matches_an_independent_count(tmp_path):
    model, ds = model_and_data()
    out = tmp_path / "adv.safetensors"
    summary = attack_to_file(model, ds, make_attack("fgsm", eps=0.1), out, batch_size=16, progress=False)
    t, meta = load_tensors(out)
    x, y = ds.tensors()
    with torch.no_grad():
        clean = model(x).argmax(1) == y
        adv = model(t["x_adv"]).argmax(1) == y
    assert summary["clean_accuracy"] == pytest.approx(float(clean.float().mean()))
    assert summary["robust_accuracy"] == pytest.approx(float((clean & adv).float().mean()))
    delta = (t["x_adv"] - x).flatten(1)
    assert summary["perturbation"]["linf_max"] == pytest.approx(float(delta.abs().max()), abs=1e-7)
    assert summary["perturbation"]["linf_max"] <= 0.1
    assert summary["perturbation"]["l2_median"] == pytest.approx(float(delta.norm(dim=1).median()), rel=1e-5)
    assert meta["attack"]["norm"] == "linf" and meta["attack"]["eps"] == 0.1
    assert json.loads(out.with_suffix(".json").read_text())["robust_accuracy"] == summary["robust_accuracy"]
    assert summarise_file(out)["robust_accuracy"] == summary["robust_accuracy"]


def test_leftover_partial_of_other_work_is_started_over(tmp_path):
    """A partial file of other settings, or of other weights behind the same model object, is never continued."""
    model, ds = model_and_data()
    out, fresh = tmp_path / "adv.safetensors", tmp_path / "fresh" / "adv.safetensors"
    with pytest.raises(KeyboardInterrupt):
        attack_to_file(model, ds, Interrupting(PGD(steps=1), 2), out, batch_size=8, progress=False)
    with pytest.warns(UserWarning, match="started over"):
        attack_to_file(model, ds, PGD(steps=2), out, batch_size=8, progress=False)
    with pytest.raises(KeyboardInterrupt):
        attack_to_file(model, ds, Interrupting(PGD(steps=2), 2), out, batch_size=8, progress=False)
    with torch.no_grad():
        next(model.parameters()).mul_(0.5)  # the same object, other weights: other work
    with pytest.warns(UserWarning, match="started over"):
        attack_to_file(model, ds, PGD(steps=2), out, batch_size=8, progress=False)
    attack_to_file(model, ds, PGD(steps=2), fresh, batch_size=8, progress=False)
    a, b = load_tensors(out)[0], load_tensors(fresh)[0]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_evaluate_attacks_worst_case_is_the_intersection():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(108, 3)).eval()  # a linear model: FGSM and noise fool different points
    _, ds = model_and_data(60)
    with torch.no_grad():
        pred = model(ds.tensors()[0]).argmax(1)
    ds = ImageDataset("synthetic", "test", ds.images, torch.where(torch.arange(60) % 2 == 0, pred, (pred + 1) % 3), ds.classes)
    attacks = {"fgsm": make_attack("fgsm", eps=0.01), "noise": PGD(eps=0.1, steps=1, alpha=1e-4, random_start=True)}
    res = evaluate_attacks(model, ds.batches(16), attacks, progress=False)
    x, y = ds.tensors()
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    assert res["n"] == 60
    assert res["clean_accuracy"] == pytest.approx(float(clean.float().mean()))
    # independently: each attack on every point of each batch (batch i draws from (seed, i)); a point counts as
    # robust when it is correct clean and attacked, and for the worst case when it survives every attack
    survived = {name: torch.zeros(60, dtype=torch.bool) for name in attacks}
    for i in range(0, 60, 16):
        xb, yb, ok = x[i:i + 16], y[i:i + 16], clean[i:i + 16]
        for name, attack in attacks.items():
            adv = attack(model, xb, yb, generator=batch_generator(0, i // 16))
            with torch.no_grad():
                survived[name][i:i + 16] = ok & (model(adv).argmax(1) == yb)
    both = survived["fgsm"] & survived["noise"]
    assert int(both.sum()) < min(int(survived["fgsm"].sum()), int(survived["noise"].sum()))  # a strict intersection
    assert res["worst_case_accuracy"] == pytest.approx(float(both.float().mean()))
    for name, attack in attacks.items():
        assert res["attacks"][name]["robust_accuracy"] == pytest.approx(float(survived[name].float().mean()))
        assert res["attacks"][name]["perturbation"]["linf_max"] <= attack.eps
        assert res["attacks"][name]["settings"]["norm"] == "linf"


def test_memory_and_file_give_the_same_per_image_results(tmp_path):
    """One loop, two sinks: evaluate_attacks in memory and attack_to_file on disk attack the same images with the
    same random starts, so every per-image column and every summary figure agrees."""
    from nonrobust.evaluation import POINT_COLUMNS

    _, ds = model_and_data(40)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(108, 3)).eval()  # linear: PGD fools some points, not all
    attack = PGD(steps=3, eps=0.01)  # a random start: the two must draw the same numbers for the same images
    mem = evaluate_attacks(model, ds.batches(16), {"PGD": attack}, seed=5, progress=False, points=True)
    summary = attack_to_file(model, ds, attack, tmp_path / "adv.safetensors", batch_size=16, seed=5, progress=False)
    on_disk, _ = load_tensors(tmp_path / "adv.safetensors", keys=POINT_COLUMNS)
    for k in POINT_COLUMNS:
        assert torch.equal(mem["points"]["PGD"][k], on_disk[k]), k
    res = mem["attacks"]["PGD"]
    assert 0 < res["robust_accuracy"] < mem["clean_accuracy"]  # the comparison means something
    for k in ("robust_accuracy", "success_rate", "perturbation", "perturbation_changed", "perturbation_fooled"):
        assert res[k] == summary[k], k
    assert mem["clean_accuracy"] == summary["clean_accuracy"]
    other = evaluate_attacks(model, ds.batches(16), {"PGD": attack}, seed=6, progress=False, points=True)
    assert not torch.equal(other["points"]["PGD"]["l2"], on_disk["l2"])  # another seed draws other starts


def test_cascade_runs_each_attack_only_on_survivors_and_gives_the_same_worst_case():
    model, ds = model_and_data(60)
    calls = []

    class Counting:
        def __init__(self, attack):
            self.attack = attack

        def describe(self):
            return self.attack.describe()

        def __call__(self, m, x, y, generator=None):
            calls.append(x.shape[0])
            return self.attack(m, x, y, generator=generator)

    # deterministic attacks (no random start), so a point gets the same attack in both modes
    attacks = {"fgsm": Counting(make_attack("fgsm", eps=0.05)), "pgd": Counting(make_attack("pgd", eps=0.05, steps=5, random_start=False))}
    ind = evaluate_attacks(model, ds.batches(60), attacks, progress=False)
    n_individual = list(calls)
    calls.clear()
    cas = evaluate_attacks(model, ds.batches(60), attacks, progress=False, cascade=True)
    assert cas["worst_case_accuracy"] == ind["worst_case_accuracy"]
    assert n_individual == [60, 60]  # individually, every attack runs on every image, as attack_to_file does
    assert calls[0] == round(ind["clean_accuracy"] * 60)  # in cascade, the first on the clean-correct images
    assert calls[1] == round(ind["attacks"]["fgsm"]["robust_accuracy"] * 60)
    assert cas["attacks"]["pgd"]["robust_accuracy"] == cas["worst_case_accuracy"]


def test_written_files_get_the_usual_permissions(tmp_path):
    import os
    import stat

    from nonrobust.io import write_json

    write_json(tmp_path / "a.json", {"a": 1})
    mode = stat.S_IMODE(os.stat(tmp_path / "a.json").st_mode)
    mask = os.umask(0)
    os.umask(mask)
    assert mode == 0o666 & ~mask


def test_a_partial_file_continues_only_with_the_same_layout(tmp_path):
    """A half-written file from a version that stored a column in another dtype must not be continued in place."""
    from nonrobust.io import StreamingTensorFile

    out = tmp_path / "t.safetensors"
    first = StreamingTensorFile(out, {"a": (torch.float32, (4,))}, {}, "same settings")
    first.write(0, {"a": torch.ones(2)})
    again = StreamingTensorFile(out, {"a": (torch.float32, (4,))}, {}, "same settings")
    assert again.rows_done == 2
    with pytest.warns(UserWarning, match="started over"):
        other = StreamingTensorFile(out, {"a": (torch.float64, (4,))}, {}, "same settings")
    assert other.rows_done == 0
