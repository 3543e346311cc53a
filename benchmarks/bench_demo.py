"""The demo's wall time against an older nonrobust, side by side on one machine (BENCHMARKS.md, "The demo").

    python benchmarks/bench_demo.py [--old 4d3b2fe] [--order old,new,new,old] [--threads 2] [--out FILE.json]

The old version is checked out from this repository (``git worktree``, into a temporary folder) and run
from its own ``src`` (``PYTHONPATH``); the new one is this checkout. Each run is ``nonrobust demo`` into a
fresh folder, as a user runs it, in a subprocess with the same thread count; runs alternate in
``--order`` (ABBA by default, so that a machine that slows down or speeds up during the benchmark
favours neither). Reported: each run's wall time, the median per version, their ratio, and the
report's own step timings (results.json) of each run. Machines differ by up to 2×: compare ratios.
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

ROOT = Path(__file__).resolve().parents[1]


def checkout(rev: str, into: Path) -> Path:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(into), rev], check=True, capture_output=True)
    return into / "src"


def run_demo(src: Path, out: Path, threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    code = ("import sys, nonrobust; from nonrobust.cli import main; "
            f"assert nonrobust.__file__.startswith({str(src)!r}), nonrobust.__file__; sys.exit(main(['demo', '--out', {str(out)!r}]))")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"demo from {src} failed:\n{proc.stderr[-3000:]}")
    results = json.loads((out / "results.json").read_text())
    return {"wall_seconds": round(wall, 1), "version": results["environment"]["nonrobust"],
            "steps": {k: v["seconds"] for k, v in results["steps"].items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--old", default="4d3b2fe", help="git revision of the older version (default: 0.1.3's last commit)")
    ap.add_argument("--order", default="old,new,new,old", help="the runs, in order")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sources = {"old": checkout(args.old, tmp / "old"), "new": ROOT / "src"}
        try:
            runs = []
            for i, which in enumerate(args.order.split(",")):
                run = {"which": which, **run_demo(sources[which], tmp / f"demo-{i}", args.threads)}
                runs.append(run)
                print(f"{which} ({run['version']}): {run['wall_seconds']:.1f} s", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tmp / "old")], capture_output=True)
    median = {w: statistics.median(r["wall_seconds"] for r in runs if r["which"] == w) for w in ("old", "new")}
    result = {"old_revision": args.old, "threads": args.threads, "runs": runs, "median_wall_seconds": median,
              "ratio_new_over_old": round(median["new"] / median["old"], 3)}
    print(f"median: old {median['old']:.1f} s, new {median['new']:.1f} s, ratio {result['ratio_new_over_old']:.3f}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
