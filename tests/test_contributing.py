"""CONTRIBUTING.md names extension points; each must exist, so the recipes cannot drift from the code."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEXT = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")


def _names() -> list[str]:
    return sorted(set(re.findall(r"`(nonrobust(?:\.\w+)+)", TEXT)))


@pytest.mark.parametrize("dotted", _names())
def test_every_named_extension_point_exists(dotted):
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):  # the longest importable module, then attributes
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            assert hasattr(obj, attr), f"CONTRIBUTING.md names {dotted}, which does not exist"
            obj = getattr(obj, attr)
        return
    pytest.fail(f"CONTRIBUTING.md names {dotted}, whose module does not exist")


def test_every_named_file_and_test_exists():
    for path in set(re.findall(r"`((?:src|tests)/[\w/]+\.py)`", TEXT)):
        assert (ROOT / path).is_file(), path
    tests = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "tests").glob("test_*.py"))
    for name in set(re.findall(r"`(test_\w+)`", TEXT)):
        assert f"def {name}(" in tests, name


def test_the_page_names_enough_to_check():
    assert len(_names()) >= 12
