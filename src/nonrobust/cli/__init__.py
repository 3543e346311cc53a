"""The ``nonrobust`` command line: parse, call the library, print.

Every user mistake surfaces as a one-line ``error: ...`` on stderr with exit
code 2 (``--debug`` shows the traceback). Library code lives elsewhere; each
``cmd_*`` function here only wires arguments to it.

The package, one module per part:

- :mod:`.options`: the options commands share (model, data, device, settings from their dataclass fields);
- :mod:`.commands`: one ``cmd_*`` function per command;
- :mod:`.main`: the parser (:func:`build_parser`) and :func:`main`, which turns every user mistake into one line.
"""

from __future__ import annotations

from .main import build_parser, main

__all__ = [
    "main",
    "build_parser",
]
