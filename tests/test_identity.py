"""Every result knows what made it: content keys for every cache and resume, provenance in every output, one writer at a time.

The matrix: each resumable command is killed on an observed event (its first progress record), then rerun with
one part of its identity changed (another model; the same checkpoint path with other weights; other data of the
same size at the same path; another split; one setting). The rerun must recompute, and its output must be the
bytes a fresh run of the changed command writes; an unchanged rerun must resume. ``train --resume`` refuses
instead, in one line, when what the run is made from has changed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nonrobust import data, identity, io, models, streams, training
from nonrobust.attacks import CHANGE_FLOOR, point_sizes
from nonrobust.io import load_tensors

from helpers import assert_one_error_line, cli, comparable, write_npz, write_tiny_model  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> Path:
    """Two 4-class models and two data sets of the same size (24 training and 24 test images of 16×16, other pixels),
    written once; each test copies what it changes."""
    d = tmp_path_factory.mktemp("parts")
    for i in (1, 2):
        write_tiny_model(d / f"m{i}.safetensors", seed=i - 1, num_classes=4)
    for name, seed in (("a", 0), ("b", 1)):
        write_npz(d / f"{name}.npz", 24, 24, classes=4, seed=seed)
    return d


# --------------------------------------------------------------------------- the commands and how each is killed
BATCH = ["--batch-size", "8", "--device", "cpu"]
TINY_REPORT = ["--attacks", "fgsm", "--no-table4", "--ib-iterations", "2", "--stability", "1", "--no-label-control",
               "--population-n", "8", "--population-iterations", "2", "--betas", "0", "--beta-n", "8", "--tsne-n", "8",
               "--featvis-images", "0"]
COMMANDS = {
    "attack": (["attack", "--attack", "pgd", "--steps", "2"], "adv.safetensors"),
    "split-paper": (["split", "--iterations", "3"], "split.safetensors"),
    "split-population": (["split", "--protocol", "population", "--iterations", "3"], "split.safetensors"),
    "report": (["report", *TINY_REPORT], "report"),
    "evaluate": (["evaluate", "table3", *TINY_REPORT], "evaluate"),
}
CHANGES = ("model", "weights", "data", "split", "setting")


def _argv(command: str, world: Path, model: str = "model.safetensors", split: str = "test", seed: str = "0") -> list:
    head, out = COMMANDS[command]
    return [*head, "--model", world / model, "--data", f"npz:{world / 'data.npz'}", "--split", split, "--seed", seed, *BATCH,
            "--out", world / out]


def _interrupt(monkeypatch, command: str, world: Path) -> dict:
    """Make the next run stop (KeyboardInterrupt, as Ctrl-C) right after its first progress record; returns what was observed."""
    seen: dict = {}
    if command == "split-population":  # fitted whole, written once: stop after the fit, before anything is written
        fit = streams.distill_population

        def stop(*args, **kwargs):
            fit(*args, **kwargs)
            seen["rows"] = 0
            raise KeyboardInterrupt

        monkeypatch.setattr(streams, "distill_population", stop)
        return seen
    write = io.StreamingTensorFile.write

    def stop_after_first(self, start, tensors):
        write(self, start, tensors)
        progress = json.loads(self.progress_path.read_text())
        seen.update(rows=progress["rows"], total=progress["total"])
        raise KeyboardInterrupt

    monkeypatch.setattr(io.StreamingTensorFile, "write", stop_after_first)
    return seen


def _outputs(command: str, world: Path) -> dict:
    """The outputs to compare, as bytes (tensor files) or JSON without timings."""
    out = world / COMMANDS[command][1]
    if out.is_dir():
        found = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.safetensors"))}
        found["results.json"] = comparable(json.loads((out / "results.json").read_text()))
        return found
    summary = json.loads(out.with_suffix(".json").read_text())
    summary.pop("seconds_this_run", None)
    return {out.name: out.read_bytes(), "summary": summary}


def _remove_outputs(command: str, world: Path) -> None:
    out = world / COMMANDS[command][1]
    if out.is_dir():
        shutil.rmtree(out)
    for p in world.glob(f"{out.name}*"):
        p.unlink()


def _fresh_world(parts: Path, tmp_path: Path) -> Path:
    world = tmp_path / "world"
    world.mkdir()
    shutil.copy(parts / "m1.safetensors", world / "model.safetensors")
    shutil.copy(parts / "m2.safetensors", world / "other.safetensors")
    shutil.copy(parts / "a.npz", world / "data.npz")
    return world


def _changed(change: str, command: str, world: Path, parts: Path) -> list:
    """Apply one change to the world and return the changed command."""
    if change == "model":
        return _argv(command, world, model="other.safetensors")
    if change == "weights":  # the same checkpoint path, overwritten with other weights
        shutil.copy(parts / "m2.safetensors", world / "model.safetensors")
    if change == "data":  # the same data path, other images of the same size
        shutil.copy(parts / "b.npz", world / "data.npz")
    if change == "split":
        return _argv(command, world, split="train")
    if change == "setting":
        return _argv(command, world, seed="1")
    return _argv(command, world)


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("change", [*CHANGES, "none"])
def test_a_killed_run_resumes_only_the_same_work(capsys, monkeypatch, parts, tmp_path, command, change):
    world = _fresh_world(parts, tmp_path)
    with monkeypatch.context() as m:
        seen = _interrupt(m, command, world)
        code, _, err = cli(capsys, *_argv(command, world))
    assert code == 130 and seen, err
    assert err.strip().splitlines()[-1] == "interrupted: rerun the same command to resume from the last finished batch"
    if "total" in seen:
        assert 0 < seen["rows"] < seen["total"], f"the kill did not land mid-run: {seen}"
    argv = _changed(change, command, world, parts)
    written = {"n": 0}
    write = io.StreamingTensorFile.write

    def count(self, start, tensors):
        written["n"] += 1
        return write(self, start, tensors)

    with monkeypatch.context() as m:
        m.setattr(io.StreamingTensorFile, "write", count)
        code, _, err = cli(capsys, *argv)
    assert code == 0, err
    rerun = _outputs(command, world)
    if "total" in seen:
        batches = -(-seen["total"] // 8)
        if change == "none":  # resumed: the batch written before the kill is not computed again
            assert written["n"] == batches - 1 and "started over" not in err
        else:  # another identity: everything is computed again, and it says so
            assert written["n"] >= batches and "started over" in err, err
    _remove_outputs(command, world)
    code, _, err = cli(capsys, *argv)
    assert code == 0, err
    assert _outputs(command, world) == rerun


# --------------------------------------------------------------------------- training
def _train_argv(world: Path, *extra) -> list:
    return ["train", "--arch", "tiny_cnn", "--data", f"npz:{world / 'data.npz'}", "--epochs", "2", "--batch-size", "8",
            "--eval-n", "8", "--eval-pgd-steps", "1", "--steps", "1", "--init", world / "init.safetensors", "--device", "cpu",
            *extra, "--out", world / "run"]


def _kill_after_first_epoch(monkeypatch) -> None:
    end = training.folder._RunFolder.end_epoch

    def stop(self, entry):
        end(self, entry)
        raise KeyboardInterrupt

    monkeypatch.setattr(training.folder._RunFolder, "end_epoch", stop)


@pytest.mark.parametrize("change, needle", [
    ("data", "trained from other training images"),
    ("weights", "trained from other initial weights"),
    ("setting", "was trained with lr"),
    ("model", "was trained with arch"),
])
def test_train_resume_refuses_a_run_made_from_other_things(capsys, monkeypatch, parts, tmp_path, change, needle):
    world = _fresh_world(parts, tmp_path)
    shutil.copy(parts / "m1.safetensors", world / "init.safetensors")
    with monkeypatch.context() as m:
        _kill_after_first_epoch(m)
        code, _, err = cli(capsys, *_train_argv(world))
    assert code == 130 and err.strip().endswith("rerun it with --resume to continue from the last complete epoch"), err
    assert json.loads((world / "run" / "metrics.jsonl").read_text().splitlines()[0])["epoch"] == 1  # the kill landed after epoch 1 of 2
    extra = []
    if change == "data":
        shutil.copy(parts / "b.npz", world / "data.npz")
    elif change == "weights":
        shutil.copy(parts / "m2.safetensors", world / "init.safetensors")
    elif change == "setting":
        extra = ["--lr", "0.05"]
    argv = _train_argv(world, *extra, "--resume")
    if change == "model":
        argv[argv.index("tiny_cnn")] = "small_cnn"
    assert_one_error_line(*cli(capsys, *argv)[::2], needle)


def test_train_resume_of_the_same_run_continues_it_bit_for_bit(capsys, monkeypatch, parts, tmp_path):
    world = _fresh_world(parts, tmp_path)
    shutil.copy(parts / "m1.safetensors", world / "init.safetensors")
    assert cli(capsys, *_train_argv(world)[:-1], world / "whole")[0] == 0
    with monkeypatch.context() as m:
        _kill_after_first_epoch(m)
        assert cli(capsys, *_train_argv(world))[0] == 130
    code, _, err = cli(capsys, *_train_argv(world, "--resume"))
    assert code == 0, err
    a, b = (load_tensors(world / d / "last.safetensors")[0] for d in ("whole", "run"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    prov = json.loads((world / "run" / "provenance.json").read_text())
    assert prov["model"]["digest"] == identity.model_digest(models.build("tiny_cnn", num_classes=4)) or prov["model"]["digest"]
    assert prov["data"]["n"] == 24 and prov["held_out"]["n"] == 8 and prov["settings"]["init"].endswith("init.safetensors")
    assert load_tensors(world / "run" / "last.safetensors", keys=())[1]["provenance"] == prov


# --------------------------------------------------------------------------- identity itself
def test_model_digest_is_the_content_not_the_path(parts, tmp_path):
    a, b = models.load(parts / "m1.safetensors"), models.load(parts / "m2.safetensors")
    shutil.copy(parts / "m1.safetensors", tmp_path / "copy.safetensors")
    assert identity.model_digest(a) == identity.model_digest(models.load(tmp_path / "copy.safetensors"))
    assert identity.model_digest(a) != identity.model_digest(b)
    before = identity.model_digest(a)
    with torch.no_grad():
        next(a.parameters()).add_(1e-3)  # an in-place update is seen
    assert identity.model_digest(a) != before


def test_data_digest_is_the_content_and_the_indices(parts):
    a = data.load_dataset(f"npz:{parts / 'a.npz'}")
    assert identity.data_digest(a) == identity.data_digest(data.load_dataset(f"npz:{parts / 'a.npz'}"))
    assert identity.data_digest(a) != identity.data_digest(data.load_dataset(f"npz:{parts / 'b.npz'}"))
    assert identity.data_digest(a.first(8)) != identity.data_digest(a.rows(8, 16))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 10_000), max_size=60))
def test_index_runs_describe_the_indices_exactly(values):
    runs = identity.index_runs(values)
    assert identity.expand_runs(runs) == values
    assert len(runs) <= max(1, len(values))


def test_the_balanced_order_keeps_every_images_source_index(tmp_path):
    x = np.random.default_rng(5).integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    np.savez(tmp_path / "sorted.npz", x_train=x, y_train=np.arange(12) // 4, x_test=x, y_test=np.arange(12) // 4)  # sorted by class
    balanced = data.load_dataset(f"npz:{tmp_path / 'sorted.npz'}")
    files = data.load_dataset(f"npz:{tmp_path / 'sorted.npz'}", order="file")
    assert balanced.indices.tolist() == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11] and balanced.labels.tolist()[:3] == [0, 1, 2]
    assert files.indices.tolist() == list(range(12)) and files.order == "file"
    assert torch.equal(balanced.images, files.images[balanced.indices])
    assert balanced.first(5).indices.tolist() == [0, 4, 8, 1, 5]


# --------------------------------------------------------------------------- provenance in every output
_PROVENANCE_KEYS = {"schema", "key", "model", "data", "versions", "seeds", "settings", "command"}


def _assert_complete(block: dict, argv: list) -> None:
    assert set(block) >= _PROVENANCE_KEYS, sorted(block)
    assert len(block["model"]["digest"]) == 64 and block["model"]["source"] and block["model"]["dtype"] == "float32"
    assert block["model"]["device"] == "cpu"
    assert len(block["data"]["digest"]) == 64 and block["data"]["split"] in ("train", "test") and block["data"]["indices"]
    assert block["versions"]["nonrobust"] and block["versions"]["torch"] == torch.__version__
    assert block["seeds"] and block["settings"]
    assert block["command"][-len(argv):] == [str(a) for a in argv]


@pytest.mark.parametrize("command", ["attack", "split-paper", "split-population", "report"])
def test_every_command_json_carries_complete_provenance_and_inspect_reads_it(capsys, parts, tmp_path, command):
    world = _fresh_world(parts, tmp_path)
    argv = _argv(command, world)
    assert cli(capsys, *argv)[0] == 0
    out = world / COMMANDS[command][1]
    targets = [out / "results.json", out / "adversarial" / "fgsm.safetensors"] if out.is_dir() else [out.with_suffix(".json"), out]
    for target in targets:
        block, _ = identity.read_provenance(target)
        if target.name != "fgsm.safetensors":  # the report's attack file was written by the report, under its own command
            _assert_complete(block, argv)
        code, text, err = cli(capsys, "inspect", target)
        assert code == 0, err
        assert block["model"]["digest"] in text and block["data"]["digest"] in text and "command" in text
    if not out.is_dir() and command != "split-population":
        t, _ = load_tensors(out, keys=("index",))
        assert t["index"].tolist() == list(range(24))  # every row's index in the source


def test_training_and_checkpoints_carry_provenance(capsys, parts, tmp_path):
    world = _fresh_world(parts, tmp_path)
    shutil.copy(parts / "m1.safetensors", world / "init.safetensors")
    argv = _train_argv(world)
    assert cli(capsys, *argv)[0] == 0
    block, _ = identity.read_provenance(world / "run")
    _assert_complete(block, argv)
    code, text, _ = cli(capsys, "inspect", world / "run" / "best.safetensors")
    assert code == 0 and "tensors     SHA-256" in text and block["key"] in text


def test_inspect_of_a_file_without_provenance_says_so(capsys, tmp_path):
    (tmp_path / "x.json").write_text("{}")
    assert_one_error_line(*cli(capsys, "inspect", tmp_path / "x.json")[::2], "no provenance")


# --------------------------------------------------------------------------- the rest of the list
def test_corrupted_checkpoint_bytes_are_refused(capsys, parts, tmp_path):
    blob = bytearray((parts / "m1.safetensors").read_bytes())
    blob[-5] ^= 0xFF  # one byte of one weight, behind a header that still parses
    (tmp_path / "bad.safetensors").write_bytes(bytes(blob))
    with pytest.raises(Exception, match="do not match the digest stored with them"):
        models.load(tmp_path / "bad.safetensors")
    code, _, err = cli(capsys, "attack", "--model", tmp_path / "bad.safetensors", "--data", f"npz:{parts / 'a.npz'}", "--attack", "fgsm",
                       "--out", tmp_path / "adv.safetensors")
    assert_one_error_line(code, err, "the file is corrupted")
    assert not (tmp_path / "adv.safetensors").exists()


@pytest.mark.parametrize("command", ["attack", "split-paper"])
def test_a_second_writer_of_the_same_output_gets_one_error_line(capsys, monkeypatch, parts, tmp_path, command):
    """While one run writes its first batch, a second run of the same command into the same file starts: it gets one error
    line and exit 2, and the first run finishes as if alone."""
    world = _fresh_world(parts, tmp_path)
    argv = _argv(command, world)
    write, second = io.StreamingTensorFile.write, {}

    def write_and_meet_a_second_writer(self, start, tensors):
        write(self, start, tensors)
        if not second:
            second["result"] = cli(capsys, *argv)
    with monkeypatch.context() as m:
        m.setattr(io.StreamingTensorFile, "write", write_and_meet_a_second_writer)
        code, _, err = cli(capsys, *argv)
    assert code == 0, err
    other_code, _, other_err = second["result"]  # its stderr also holds the first run's progress bar, which shares the stream
    assert other_code == 2 and "Traceback" not in other_err and other_err.count("error: ") == 1, other_err
    assert other_err.rstrip().endswith("lock)") and "is being written by another nonrobust process (pid" in other_err
    first = _outputs(command, world)
    _remove_outputs(command, world)
    assert cli(capsys, *argv)[0] == 0 and _outputs(command, world) == first


def test_a_lock_of_a_live_process_stops_a_writer_and_a_stale_one_is_taken_over(capsys, parts, tmp_path):
    import socket

    world = _fresh_world(parts, tmp_path)
    argv = _argv("attack", world)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    lock = world / "adv.safetensors.lock"
    try:
        lock.write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "since": "now"}))
        assert_one_error_line(*cli(capsys, *argv)[::2], f"pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
    assert cli(capsys, *argv)[0] == 0 and not lock.exists()


def test_a_perturbation_of_float_noise_is_not_a_change(tmp_path):
    x = torch.full((3, 3, 4, 4), 0.5)
    x_adv = x.clone()
    x_adv[0, 0, 0, 0] += 1e-6
    x_adv[1, 0, 0, 0] += 2 * CHANGE_FLOOR
    sizes = point_sizes(x, x_adv)
    changed = sizes["linf"] > CHANGE_FLOOR
    assert changed.tolist() == [False, True, False]
    n = 3
    specs = {"y": (torch.int64, (n,)), "clean_pred": (torch.int64, (n,)), "adv_pred": (torch.int64, (n,)), "nan": (torch.int64, (n,)),
             "linf": (torch.float64, (n,)), "l2": (torch.float64, (n,)), "min": (torch.float32, (n,)), "max": (torch.float32, (n,))}
    writer = io.StreamingTensorFile(tmp_path / "a.safetensors", specs, {}, "key")
    writer.write(0, {"y": torch.zeros(n, dtype=torch.int64), "clean_pred": torch.zeros(n, dtype=torch.int64),
                     "adv_pred": torch.zeros(n, dtype=torch.int64), **sizes})
    writer.finish()
    assert streams.summarise_file(tmp_path / "a.safetensors")["perturbation_changed"]["points"] == 1


def test_norm_selects_the_threat_model_and_abbreviations_are_errors(capsys, parts, tmp_path):
    base = ["attack", "--model", parts / "m1.safetensors", "--data", f"npz:{parts / 'a.npz'}", "--attack", "pgd-20", "--steps", "2",
            "--device", "cpu"]
    code, out, err = cli(capsys, *base, "--norm", "l2", "--eps", "0.5", "--out", tmp_path / "l2.safetensors")
    assert code == 0, err
    summary = json.loads((tmp_path / "l2.json").read_text())
    assert summary["attack"]["norm"] == "l2" and summary["perturbation"]["l2_max"] <= 0.5 + 1e-9
    assert summary["perturbation"]["linf_max"] > 8 / 255  # an L2 step of 0.5 is not inside the L∞ ball of 8/255
    code, _, err = cli(capsys, *base, "--nor", "l2", "--out", tmp_path / "x.safetensors")
    assert_one_error_line(code, err, "unrecognized arguments: --nor")
    code, _, err = cli(capsys, *base, "--normalize", "cifar10", "--out", tmp_path / "x.safetensors")
    assert_one_error_line(code, err, "--normalize has no effect on a nonrobust checkpoint")
    code, _, err = cli(capsys, *base, "--eps", "8/255", "--out", tmp_path / "f.safetensors")
    assert code == 0 and json.loads((tmp_path / "f.json").read_text())["attack"]["eps"] == pytest.approx(8 / 255)
    code, _, err = cli(capsys, *base, "--eps", "3", "--out", tmp_path / "x.safetensors")
    assert_one_error_line(code, err, "more than the whole pixel range")
