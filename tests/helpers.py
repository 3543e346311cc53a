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
