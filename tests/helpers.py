"""Helpers the test files share: run the CLI in-process and check its one-line errors."""

from __future__ import annotations

import re

from nonrobust.cli import main

ERROR_LINE = re.compile(r"^(nonrobust[\w ]*: )?error: ")  # argparse prefixes its own errors with the program name


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
