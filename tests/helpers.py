"""Helpers the test files share: run the CLI in-process and check its one-line errors."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

from nonrobust.cli import main

ROOT = Path(__file__).resolve().parents[1]

ERROR_LINE = re.compile(r"^(nonrobust[\w ]*: )?error: ")  # argparse prefixes its own errors with the program name


def load_script(name: str) -> ModuleType:
    """``scripts/NAME.py`` of this checkout, imported as a module (its ``main`` is not run)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cli(capsys, *argv) -> tuple[int, str, str]:
    """``nonrobust ARGV`` in this process: (exit code, stdout, stderr)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_error_line(code: int, err: str, needle: str) -> str:
    """Exit code 2, no traceback, exactly one error line, it is the last line and it names ``needle``."""
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if ERROR_LINE.match(line)]
    assert len(errors) == 1, err
    assert lines[-1] == errors[0], f"the error is not the last line: {err!r}"
    assert needle.lower() in errors[0].lower(), errors[0]
    return errors[0]


VOLATILE = {"steps", "wall_seconds", "environment"}
"""results.json keys that legitimately change from one run to the next (timings, the machine)."""


def comparable(results: dict) -> dict:
    """``results`` (results.json's content) without what legitimately changes between runs of the same work: timings, the
    machine, and the command line (another --out) in its provenance."""
    import json

    out = {k: v for k, v in json.loads(json.dumps(results, default=str)).items() if k not in VOLATILE}
    if isinstance(out.get("provenance"), dict):
        out["provenance"].pop("command", None)
    for table in ("table3", "table4"):
        for row in out.get(table, {}).get("rows", []):
            row.pop("seconds", None)
    return out


def without_command(record: dict) -> dict:
    """``record`` (a summary or a file header) without the command line in its provenance block (it names the --out path)."""
    from nonrobust.identity import find_provenance

    block = find_provenance(record)
    if block is not None:
        block.pop("command", None)
    return record


def kill_on(argv: list, event, env: dict | None = None, deadline: float = 600.0) -> bool:
    """Run ``python -m nonrobust ARGV`` and SIGKILL it as soon as ``event()`` holds (an observed progress record, a step
    file: never a timer). Returns whether the kill landed mid-run (False: the run ended before the event). ``deadline``
    only bounds a run that hangs; reaching it fails the test."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "nonrobust", *map(str, argv)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=env)
    end = time.monotonic() + deadline
    while proc.poll() is None and not event():
        assert time.monotonic() < end, f"no event within {deadline} s: {argv}"
        time.sleep(0.01)
    if proc.poll() is not None:
        err = proc.stderr.read()
        assert proc.returncode == 0, err
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def progress_rows(path) -> int:
    """Rows recorded in the progress record of the streamed output ``path`` (0 when there is none)."""
    import json
    from pathlib import Path

    record = Path(str(path) + ".progress.json")
    try:
        return int(json.loads(record.read_text())["rows"])
    except (OSError, ValueError, KeyError):
        return 0


# --------------------------------------------------------------------------- tiny worlds and tensor comparisons
def write_npz(path, n_train: int, n_test: int, side: int = 16, *, classes: int = 10, seed: int = 0, channels: int = 3) -> None:
    """An ``npz:`` data set of random uint8 images (``side``×``side``, ``channels`` 3 or 1) with labels ``i % classes``."""
    import numpy as np

    g = np.random.default_rng(seed)
    shape = (side, side, channels) if channels == 3 else (side, side)
    np.savez(path, x_train=g.integers(0, 256, (n_train, *shape), dtype=np.uint8), y_train=np.arange(n_train) % classes,
             x_test=g.integers(0, 256, (n_test, *shape), dtype=np.uint8), y_test=np.arange(n_test) % classes)


def write_tiny_model(path, *, seed: int = 0, num_classes: int = 10) -> None:
    """A freshly initialised ``tiny_cnn`` (seeded) saved as a nonrobust checkpoint."""
    import torch

    from nonrobust import models

    torch.manual_seed(seed)
    model = models.build("tiny_cnn", num_classes=num_classes)
    models.save(model, path, models.make_meta(model, dataset="synthetic"))


def assert_same_tensors(a: dict, b: dict) -> None:
    """Two dicts of tensors hold the same names, in the same order, with equal dtypes and values."""
    import torch

    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), f"{k} differs"


def assert_tensor_files_equal(a, b) -> None:
    """Two safetensors files of nonrobust hold the same tensors and the same header, but for the command line."""
    from nonrobust.io import load_tensors

    (ta, ma), (tb, mb) = load_tensors(a), load_tensors(b)
    assert_same_tensors(dict(sorted(ta.items())), dict(sorted(tb.items())))
    assert without_command(ma) == without_command(mb)  # the command line (another --out) is the one part that may differ
