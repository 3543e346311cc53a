"""Every GPU check of the project in one prepared run (``scripts/device_check.sh`` calls this after installing).

    python scripts/device_check.py --out DIR [--time-limit 480] [--dry-run]

Steps, in order; each writes its log (and its JSON, where it has one) under ``--out``:

1. ``cuda-tests``: the CUDA cases of the suite (``pytest -m cuda``: the ``device`` fixture's cuda runs);
2. ``bench-attacks``, ``bench-bottleneck``, ``bench-memory``: ``benchmarks/*.py --device cuda``;
3. ``demo``: ``nonrobust demo --device cuda``, with its wall time;
4. ``bench-training``: VGG-16 and WRN-28-10 training throughput, fp32 and bf16, fast AT and PGD-10 AT;
5. ``nccl``: an NCCL process group (world 1: an all-reduce and a barrier on the GPU), then ``torchrun
   --nproc_per_node 1`` training and sharded ``attack`` runs on the GPU.

``device_check.json`` records the GPU, the versions and every step's status (``ok``, ``failed``,
``timeout``, ``skipped`` with the reason) and seconds; it is rewritten after each step, so a run
stopped from outside keeps what it measured. No step starts after ``--time-limit`` seconds, and a
running step is stopped at it. ``--dry-run`` checks the script itself on the CPU: the same steps in
their smallest form, the ones that need a GPU skipped with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def versions() -> dict:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    try:
        import torch

        out.update(torch=torch.__version__, cuda=torch.version.cuda, cudnn=str(torch.backends.cudnn.version()),
                   gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                   gpus=torch.cuda.device_count() if torch.cuda.is_available() else 0)
    except Exception as exc:  # a broken torch is itself the finding
        out["torch_error"] = f"{type(exc).__name__}: {exc}"
    try:
        import nonrobust

        out["nonrobust"] = nonrobust.__version__
    except Exception as exc:
        out["nonrobust_error"] = f"{type(exc).__name__}: {exc}"
    missing = []
    for module in ("safetensors", "numpy", "tqdm", "matplotlib", "sklearn", "pyautoattack", "pytest", "hypothesis"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    out["missing_packages"] = missing
    return out


class Check:
    def __init__(self, out: Path, time_limit: float, dry_run: bool) -> None:
        self.out, self.time_limit, self.dry_run = out, time_limit, dry_run
        self.t0 = time.perf_counter()
        self.record = {"dry_run": dry_run, "time_limit_s": time_limit, "versions": versions(), "steps": []}
        self.gpu = bool(self.record["versions"].get("gpus"))
        self.save()

    def save(self) -> None:
        tmp = self.out / "device_check.json.tmp"
        tmp.write_text(json.dumps(self.record, indent=2))
        os.replace(tmp, self.out / "device_check.json")

    def left(self) -> float:
        return self.time_limit - (time.perf_counter() - self.t0)

    def step(self, name: str, cmd: list[str] | None, *, needs_gpu: bool = False, why: str = "", ok_codes: tuple[int, ...] = (0,)) -> None:
        entry: dict = {"name": name}
        if cmd is None:
            entry.update(status="skipped", reason=why)
        elif needs_gpu and not self.gpu:
            entry.update(status="skipped", reason=why or "needs a CUDA GPU; none is visible")
        elif self.left() <= 0:
            entry.update(status="skipped", reason=f"the time limit ({self.time_limit:.0f} s) was reached before it started")
        else:
            log = self.out / f"{name}.log"
            entry.update(command=" ".join(cmd), log=log.name)
            start = time.perf_counter()
            with open(log, "w") as fh:
                try:
                    proc = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, timeout=max(1.0, self.left()))
                    entry["status"] = "ok" if proc.returncode in ok_codes else "failed"
                    entry["returncode"] = proc.returncode
                except subprocess.TimeoutExpired:
                    entry.update(status="timeout", reason=f"stopped at the time limit ({self.time_limit:.0f} s)")
            entry["seconds"] = round(time.perf_counter() - start, 1)
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            entry["tail"] = tail
        self.record["steps"].append(entry)
        self.save()
        print(f"{name:<18} {entry['status']:<8} {entry.get('seconds', '')} {entry.get('reason', '')}", flush=True)


def _smoke_npz(path: Path) -> Path:
    """256 random 32×32 training and 64 test images in the npz layout (no data set needs to be on the machine)."""
    import numpy as np

    g = np.random.default_rng(0)
    np.savez(path, x_train=g.integers(0, 256, (256, 32, 32, 3), dtype=np.uint8), y_train=np.arange(256) % 10,
             x_test=g.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8), y_test=np.arange(64) % 10)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--time-limit", type=float, default=480.0, help="seconds for the whole check (default 480)")
    ap.add_argument("--dry-run", action="store_true", help="check the script on the CPU: smallest forms, GPU steps skipped")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    c = Check(args.out.resolve(), args.time_limit, args.dry_run)
    py = sys.executable
    dev = "cpu" if args.dry_run else "cuda"
    quick = ["--quick"] if args.dry_run else []
    small = ["--archs", "tiny_cnn"] if args.dry_run else []  # a dry run checks the commands, not the machine
    o = c.out
    # 1. the CUDA cases of the suite (exit 5: none collected, which is what a CPU machine has)
    c.step("cuda-tests", [py, "-m", "pytest", "-q", "-m", "cuda", "tests/test_devices.py" if args.dry_run else "tests", "-p", "no:cacheprovider"],
           ok_codes=(0, 5) if args.dry_run else (0,))
    # 2. the benchmarks on the device
    c.step("bench-attacks", [py, "benchmarks/bench_attacks.py", *quick, *small, "--device", dev, "--out", str(o / "bench_attacks.json")])
    c.step("bench-bottleneck", [py, "benchmarks/bench_bottleneck.py", *quick, *small, "--device", dev, "--out", str(o / "bench_ib.json")])
    sizes = ["--sizes", "64", "128"] if args.dry_run else []
    c.step("bench-memory", [py, "benchmarks/bench_memory.py", *quick, *sizes, "--device", dev, "--out", str(o / "bench_memory.json")])
    # 3. the demo, timed
    c.step("demo", None if args.dry_run else [py, "-m", "nonrobust", "demo", "--device", dev, "--out", str(o / "demo")],
           why="the demo takes about 4 minutes on a CPU: not part of a dry run")
    # 4. training throughput
    c.step("bench-training", [py, "benchmarks/bench_training.py", *quick, "--device", dev, "--time-limit", str(max(1, int(c.left() * 0.6))),
                              "--out", str(o / "bench_training.json")])
    # 5. NCCL and torchrun
    nccl = ("import os, torch, torch.distributed as d; os.environ.setdefault('MASTER_ADDR', '127.0.0.1'); "
            "os.environ.setdefault('MASTER_PORT', '29531'); d.init_process_group('nccl', rank=0, world_size=1); "
            "t = torch.ones(4, device='cuda'); d.all_reduce(t); d.barrier(); print('nccl all_reduce', t.tolist()); d.destroy_process_group()")
    c.step("nccl", [py, "-c", nccl], needs_gpu=True)
    torchrun = [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m", "nonrobust"]
    smoke = _smoke_npz(o / "smoke.npz")
    c.step("torchrun-train", [*torchrun, "train", "--arch", "tiny_cnn", "--data", f"npz:{smoke}", "--method", "fast", "--epochs", "1",
                              "--batch-size", "64", "--eval-n", "64", "--eval-pgd-steps", "1", "--device", dev, "--out", str(o / "ddp-run")])
    c.step("torchrun-attack", [*torchrun, "attack", "--model", "cifar10-small-at", "--data", "cifar10-slice", "--first", "16" if args.dry_run else "1024",
                               "--attack", "pgd-20", "--device", dev, "--out", str(o / "sharded.safetensors")])
    failed = [s["name"] for s in c.record["steps"] if s["status"] in ("failed", "timeout")]
    c.record["failed"] = failed
    c.save()
    print(f"wrote {o / 'device_check.json'}; failed: {', '.join(failed) or 'none'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
