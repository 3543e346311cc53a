#!/usr/bin/env bash
# The project's GPU check in one run, on a machine lent with a GPU: from a fresh copy of the repository, offline.
#
#   bash scripts/device_check.sh [--out DIR] [--time-limit SECONDS] [--wheels DIR] [--dry-run]
#
# It installs nonrobust on top of the machine's own (CUDA) torch without touching torch and without the network
# (pip --no-deps --no-index; --wheels DIR installs missing dependencies from a local wheel folder), then runs
# scripts/device_check.py: the CUDA tests, the benchmarks on the GPU, the demo, training throughput and NCCL.
# Everything goes to DIR (default $OUT, else ./device-check): device_check.json, one log per step, each
# benchmark's JSON. --dry-run checks the script on the CPU (the GPU steps are skipped with the reason).
set -u
cd "$(dirname "$0")/.."
out="${OUT:-device-check}"
limit=480
wheels=""
dry=""
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="$2"; shift 2 ;;
        --time-limit) limit="$2"; shift 2 ;;
        --wheels) wheels="$2"; shift 2 ;;
        --dry-run) dry="--dry-run"; shift ;;
        *) echo "error: unknown option $1 (use --out DIR, --time-limit SECONDS, --wheels DIR, --dry-run)" >&2; exit 2 ;;
    esac
done
mkdir -p "$out"
py="${PYTHON:-python3}"
if ! "$py" -c "import torch" 2>/dev/null; then
    echo "error: no torch in $py: install the machine's CUDA build of PyTorch first" >&2
    exit 2
fi
if [ -n "$wheels" ]; then  # the dependencies the machine lacks, from a local folder of wheels (never torch)
    "$py" -m pip install --no-index --find-links "$wheels" safetensors numpy tqdm matplotlib scikit-learn pyautoattack pytest hypothesis \
        > "$out/install-wheels.log" 2>&1 || echo "warning: some wheels did not install (see $out/install-wheels.log)" >&2
fi
if ! "$py" -c "import nonrobust" 2>/dev/null; then
    # the package itself, on top of whatever torch is there: no dependencies resolved, nothing downloaded
    if ! "$py" -m pip install --no-deps --no-index --no-build-isolation -e . > "$out/install.log" 2>&1; then
        echo "warning: pip could not install nonrobust offline (see $out/install.log); using PYTHONPATH=src" >&2
        export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
    fi
fi
exec "$py" scripts/device_check.py --out "$out" --time-limit "$limit" $dry
