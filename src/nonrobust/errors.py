"""Errors that are the user's to fix.

Every mistake a user can make (a missing file, a wrong layer name, an eps of
zero) raises :class:`UserError` with a one-line message that names the problem
and, where possible, the fix. The CLI prints that line and exits with code 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """A problem with the user's input, files or settings (CLI exit code 2)."""


def check(condition: bool, message: str) -> None:
    """Raise :class:`UserError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise UserError(message)
