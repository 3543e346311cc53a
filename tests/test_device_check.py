"""scripts/device_check.sh cannot rot: its dry run passes on the CPU, and it stops at its time limit keeping what it measured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "device_check.sh"


def _run(out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(SCRIPT), "--dry-run", "--out", str(out), *extra], env=env, capture_output=True, text=True,
                          timeout=600)


def test_dry_run_passes_on_the_cpu(tmp_path):
    proc = _run(tmp_path / "dc")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    record = json.loads((tmp_path / "dc" / "device_check.json").read_text())
    steps = {s["name"]: s for s in record["steps"]}
    assert list(steps) == ["cuda-tests", "bench-attacks", "bench-bottleneck", "bench-memory", "demo", "bench-training", "nccl",
                           "torchrun-train", "torchrun-attack"]
    assert record["dry_run"] is True and record["versions"]["torch"] and record["failed"] == []
    for name, step in steps.items():
        assert step["status"] in ("ok", "skipped"), (name, step)
        assert step["status"] == "ok" or step["reason"], name  # a skipped step says why
    assert steps["nccl"]["status"] == "skipped" and "GPU" in steps["nccl"]["reason"]
    for result in ("bench_attacks.json", "bench_ib.json", "bench_memory.json", "bench_training.json"):
        assert json.loads((tmp_path / "dc" / result).read_text()), result
    assert (tmp_path / "dc" / "sharded.safetensors").is_file()


def test_stops_at_its_time_limit_keeping_what_it_has(tmp_path):
    proc = _run(tmp_path / "dc", "--time-limit", "2")
    record = json.loads((tmp_path / "dc" / "device_check.json").read_text())
    statuses = [s["status"] for s in record["steps"]]
    assert statuses[0] in ("ok", "timeout", "skipped") and proc.returncode == (1 if "timeout" in statuses else 0)
    later = [s for s in record["steps"][1:] if s["name"] not in ("demo", "nccl")]
    assert later and all(s["status"] == "skipped" and "time limit" in s["reason"] for s in later)


def test_refuses_an_unknown_option(tmp_path):
    proc = subprocess.run(["bash", str(SCRIPT), "--bogus"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown option --bogus" in proc.stderr
