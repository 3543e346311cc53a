"""Evaluation sharded over torchrun ranks: 2 gloo processes on the CPU write what one process writes, and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from nonrobust.io import StreamingTensorFile, load_tensors
from nonrobust.runtime import Distributed

from helpers import comparable, write_npz, write_tiny_model  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread per process on both sides: the same arithmetic, bit for bit
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "nonrobust"]
ONE = [sys.executable, "-m", "nonrobust"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("dist")
    write_tiny_model(d / "tiny.safetensors")
    write_npz(d / "d.npz", 40, 40, side=32)
    return d


def _run(cmd: list, cwd: Path, timeout: int = 180) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _common(world: Path) -> list[str]:
    # --first, not --n: torchrun reads --n as an abbreviation of its own --nnodes
    return ["--model", world / "tiny.safetensors", "--data", f"npz:{world / 'd.npz'}", "--batch-size", "8", "--device", "cpu"]


def _folders(tmp_path: Path) -> tuple[Path, Path]:
    """Where the single process and the two ranks run: the same relative --out in each, so the command lines (in the
    files' provenance) are the same too."""
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
    return tmp_path / "one", tmp_path / "two"


@pytest.mark.parametrize("command", [
    ["attack", "--attack", "pgd", "--steps", "3"],
    ["attack", "--attack", "nrf-linf", "--steps", "3", "--iterations", "5"],
    ["split", "--protocol", "paper", "--iterations", "5", "--stability", "2"],
    ["split", "--protocol", "population", "--iterations", "5"],
], ids=["attack pgd", "attack nrf-linf", "split paper", "split population"])
def test_two_ranks_write_what_one_process_writes(world, tmp_path, command):
    one_dir, two_dir = _folders(tmp_path)
    _run([*ONE, *command, *_common(world), "--out", "out.safetensors"], one_dir)
    proc = _run([*TORCHRUN, *command, *_common(world), "--out", "out.safetensors"], two_dir)
    assert (one_dir / "out.safetensors").read_bytes() == (two_dir / "out.safetensors").read_bytes()
    one, two = (json.loads((d / "out.json").read_text()) for d in (one_dir, two_dir))
    for summary in (one, two):
        summary.pop("seconds_this_run", None)
    assert one == two
    assert proc.stdout.count("wrote ") == 1  # rank 0 reports, once
    assert not list(two_dir.glob("out.safetensors.*"))  # no partial file or progress record is left


def test_two_ranks_report_equals_one_process(world, tmp_path):
    report = ["report", "--first", "24", "--attacks", "fgsm,pgd-20,nrf-linf", "--no-table4", "--ib-iterations", "4", "--stability", "2",
              "--population-n", "8", "--population-iterations", "2", "--betas", "0", "1", "--beta-n", "8", "--tsne-n", "16",
              "--featvis-images", "1", "--featvis-steps", "2"]
    one_dir, two_dir = _folders(tmp_path)
    _run([*ONE, *report, *_common(world), "--out", "r"], one_dir)
    _run([*TORCHRUN, *report, *_common(world), "--out", "r"], two_dir)
    for attack in ("fgsm", "pgd-20", "nrf-linf"):
        path = Path("r") / "adversarial" / f"{attack}.safetensors"
        assert (one_dir / path).read_bytes() == (two_dir / path).read_bytes(), attack
    one, two = (comparable(json.loads((d / "r" / "results.json").read_text())) for d in (one_dir, two_dir))
    assert one == two


def test_a_killed_rank_stops_the_run_and_the_same_command_resumes_every_rank(world, tmp_path):
    cmd = [*TORCHRUN, "attack", "--attack", "pgd", "--steps", "400", *_common(world), "--batch-size", "4", "--out", "adv.safetensors"]
    proc = subprocess.Popen([str(c) for c in cmd], cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    progress = [tmp_path / f"adv.safetensors.progress.rank{r}-of-2.json" for r in (0, 1)]

    def every_rank_finished_a_batch() -> bool:  # the observed event the kill waits for: a progress record of each rank
        return all(p.is_file() and json.loads(p.read_text())["blocks"] >= 1 for p in progress)

    deadline = time.time() + 300  # only a bound on a hung run: the kill itself waits for the records
    while time.time() < deadline and proc.poll() is None and not every_rank_finished_a_batch():
        time.sleep(0.1)
    assert every_rank_finished_a_batch(), "a rank never finished a batch"
    # kill rank 1's worker process (a child of the torchrun agent whose environment says RANK=1)
    victim = next(pid for pid in _children(proc.pid) if _environ(pid).get("RANK") == "1")
    os.kill(victim, signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0  # the job stops as a whole
    assert not (tmp_path / "adv.safetensors").exists() and (tmp_path / "adv.safetensors.partial").is_file()
    done = {r: json.loads((tmp_path / f"adv.safetensors.progress.rank{r}-of-2.json").read_text())["blocks"] for r in (0, 1)}
    assert min(done.values()) >= 1 and done[0] + done[1] < 10  # both had started, and both had work left
    _run(cmd, tmp_path)  # the same command: every rank resumes at its first unfinished batch
    (tmp_path / "one").mkdir()
    _run([*ONE, *cmd[len(TORCHRUN):]], tmp_path / "one")
    assert (tmp_path / "adv.safetensors").read_bytes() == (tmp_path / "one" / "adv.safetensors").read_bytes()


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out] + [c for p in out for c in _children(int(p))]


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


# --------------------------------------------------------------------------- the shared file, rank by rank in one process
@dataclass
class _Rank(Distributed):
    """A rank of a pretend world: the barriers are no-ops, so the ranks can take turns in one process."""

    def barrier(self) -> None:
        pass


SPECS = {"a": (torch.float32, (10, 3)), "b": (torch.int64, (10,))}
ROWS = {"a": torch.arange(30.0).view(10, 3), "b": torch.arange(10) * 7}


def _blocks(writer: StreamingTensorFile, limit: int | None = None) -> None:
    for i, start in enumerate(writer.pending_starts()):
        if limit is not None and i >= limit:
            return
        stop = min(start + writer.block_rows, writer.n_rows)
        writer.write(start, {k: v[start:stop] for k, v in ROWS.items()})


def test_ranks_fill_one_file_that_equals_a_single_writers(tmp_path):
    single = StreamingTensorFile(tmp_path / "one.safetensors", SPECS, {"x": 1}, "fp", block_rows=3)
    _blocks(single)
    single.finish()
    ranks = [StreamingTensorFile(tmp_path / "two.safetensors", SPECS, {"x": 1}, "fp", dist=_Rank(2, r), block_rows=3) for r in (0, 1)]
    assert [w.pending_starts() for w in ranks] == [[0, 6], [3, 9]]  # batches 0, 2 and 1, 3
    assert [w.own_rows for w in ranks] == [6, 4]
    _blocks(ranks[1], limit=1)
    again = StreamingTensorFile(tmp_path / "two.safetensors", SPECS, {"x": 1}, "fp", dist=_Rank(2, 1), block_rows=3)
    assert again.pending_starts() == [9] and again.resumed_rows == 3  # rank 1 resumes after its first batch
    with pytest.raises(ValueError, match="expected rows from 9"):
        again.write(3, {k: v[3:6] for k, v in ROWS.items()})
    _blocks(again)
    _blocks(ranks[0])
    ranks[0].finish()
    assert (tmp_path / "one.safetensors").read_bytes() == (tmp_path / "two.safetensors").read_bytes()
    assert load_tensors(tmp_path / "two.safetensors")[0]["b"].tolist() == ROWS["b"].tolist()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.safetensors", "two.safetensors"]


def test_a_sharded_partial_of_other_work_or_another_world_starts_over(tmp_path):
    w = StreamingTensorFile(tmp_path / "f.safetensors", SPECS, {}, "fp", dist=_Rank(2, 0), block_rows=3)
    _blocks(w, limit=1)
    with pytest.warns(UserWarning, match="started over"):
        other = StreamingTensorFile(tmp_path / "f.safetensors", SPECS, {}, "other", dist=_Rank(2, 0), block_rows=3)
    assert other.pending_starts() == [0, 6]  # nothing of the other work is continued
    w = StreamingTensorFile(tmp_path / "f.safetensors", SPECS, {}, "fp", dist=_Rank(2, 0), block_rows=3)
    _blocks(w, limit=1)
    three = StreamingTensorFile(tmp_path / "f.safetensors", SPECS, {}, "fp", dist=_Rank(3, 0), block_rows=3)
    assert three.pending_starts() == [0, 9]  # a new world size lays the file out again
    alone = StreamingTensorFile(tmp_path / "f.safetensors", SPECS, {}, "fp", block_rows=3)
    assert alone.pending_starts() == [0, 3, 6, 9]  # so does a single process after a sharded run
