"""Settings that describe themselves: a dataclass field with its default, a one-line help and the kind of value.

The settings dataclasses (:class:`~nonrobust.bottleneck.IBConfig`,
:class:`~nonrobust.report.ReportSettings`, :class:`~nonrobust.training.TrainConfig`) declare each
field with :func:`setting`; the command line builds its options from them (``nonrobust.cli``), so a
default or a help text is written once, next to the setting it describes::

    @dataclass(frozen=True)
    class Example:
        beta: float = setting(0.3, "KL weight β", "non_negative")
"""

from __future__ import annotations

import dataclasses
from typing import Any, cast

__all__ = ["KINDS", "setting", "help_of", "kind_of", "default_of", "DEFAULT_DATA_ENV", "DATA_DIR_HELP"]

DEFAULT_DATA_ENV = "NONROBUST_DATA"
"""The environment variable that names the data folder when ``--data-dir`` is not given (see :func:`nonrobust.data.default_data_dir`)."""
DATA_DIR_HELP = f"where data sets live (default: ${DEFAULT_DATA_ENV}, else ~/.cache/nonrobust/data)"
"""The one help text of every ``--data-dir`` option and ``data_dir`` setting."""

KINDS = ("positive_int", "positive", "non_negative", "int", "float", "text", "choice", "flag", "list")
"""How a setting's value is read from text: a positive integer, a number > 0, a number ≥ 0, any integer, any
number, a string, one of the field's ``Literal`` choices, a yes/no flag, or a list of numbers ≥ 0."""


def setting(default: Any, help: str, kind: str = "text", *, factory: bool = False) -> Any:  # noqa: A002 - the field's help
    """A dataclass field with a default, a one-line ``help`` and the ``kind`` of value (one of :data:`KINDS`).

    ``factory=True`` makes ``default`` a zero-argument callable (for mutable defaults).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown setting kind {kind!r}: one of {KINDS}")
    metadata = {"help": help, "kind": kind}
    if factory:
        return dataclasses.field(default_factory=default, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _field(cls: type, name: str) -> dataclasses.Field[Any]:
    return {f.name: f for f in dataclasses.fields(cls)}[name]


def help_of(cls: type, name: str) -> str:
    """The one-line help of field ``name`` of dataclass ``cls`` (``""`` if it has none)."""
    return cast(str, _field(cls, name).metadata.get("help", ""))


def kind_of(cls: type, name: str) -> str:
    """The :data:`KINDS` entry of field ``name`` of dataclass ``cls`` (``"text"`` if it has none)."""
    return cast(str, _field(cls, name).metadata.get("kind", "text"))


def default_of(cls: type, name: str) -> Any:
    """The default of field ``name`` of dataclass ``cls`` (``dataclasses.MISSING`` if it has none)."""
    f = _field(cls, name)
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default
