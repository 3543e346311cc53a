"""Sharded evaluation on this machine: 2 processes × 1 thread (torchrun, gloo) against 1 process × 2 threads.

    python benchmarks/bench_sharded.py [--quick] [--out benchmarks/results/bench_sharded.json]

The job: ``nonrobust attack`` with PGD-10 (L∞ 8/255) of the shipped ``cifar10-small-at`` on the
first ``--n`` images of the shipped CIFAR-10 slice, batch 64, and ``nonrobust split`` (``paper``
protocol, 200 steps) on the same images. Each configuration runs ``--rounds`` times, alternating;
the table gives the median wall time of the whole command (start-up included) and of the attack
loop alone (``seconds_this_run`` of the summary). Sharding moves no tensor between the ranks:
each rank writes its own batches into the shared output file, so the communication is two
barriers per output file (and one more at the end of a report), whatever the number of batches.
The outputs of both configurations are compared byte for byte.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

JOBS = {
    "attack": ["attack", "--attack", "pgd", "--steps", "10"],
    "split": ["split", "--protocol", "paper"],
}
CONFIGS = {
    "1 process × 2 threads": ([sys.executable, "-m", "nonrobust"], "2"),
    "2 processes × 1 thread": ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "nonrobust"], "1"),
}


def run(config: str, job: str, n: int, out: Path) -> dict:
    launcher, threads = CONFIGS[config]
    cmd = [*launcher, *JOBS[job], "--model", "cifar10-small-at", "--data", "cifar10-slice", "--first", str(n), "--batch-size", "64",
           "--device", "cpu", "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": threads}, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{config} {job} failed:\n{proc.stderr[-2000:]}")
    summary = json.loads(out.with_suffix(".json").read_text())
    return {"wall_s": wall, "loop_s": summary.get("seconds_this_run"), "bytes": out.read_bytes()}


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="64 images, 1 round (a smoke test)")
    ap.add_argument("--out")
    args = ap.parse_args()
    n, rounds = (64, 1) if args.quick else (args.n, args.rounds)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for job in JOBS:
            times: dict[str, list[dict]] = {c: [] for c in CONFIGS}
            for r in range(rounds):
                for config in CONFIGS:
                    times[config].append(run(config, job, n, Path(tmp) / f"{job}-{r}-{len(times[config])}-{config[0]}.safetensors"))
            same = len({t["bytes"] for c in CONFIGS for t in times[c]}) == 1
            for config in CONFIGS:
                wall = statistics.median(t["wall_s"] for t in times[config])
                loops = [t["loop_s"] for t in times[config] if t["loop_s"] is not None]
                loop = statistics.median(loops) if loops else None
                rows.append({"job": job, "config": config, "n": n, "wall_s": wall, "loop_s": loop, "identical_outputs": same})
                print(f"{job:<7} {config:<24} wall {wall:6.1f} s" + (f", loop {loop:6.1f} s" if loop else "") + f"  outputs identical: {same}",
                      flush=True)
    from nonrobust.runtime import environment

    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"rounds": rounds, "environment": environment(), "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
