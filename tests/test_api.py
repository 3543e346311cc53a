"""The front door: ``import nonrobust`` exports a small documented API, its examples run, and README's Python blocks run."""

from __future__ import annotations

import doctest
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import nonrobust
from nonrobust import api

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    """The ```python blocks of README's "Python API" section, in order."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Python API"):]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_every_export_is_documented_with_args_returns_and_an_example():
    exported = [name for name in nonrobust.__all__ if name != "__version__"]
    assert exported == api.__all__
    for name in exported:
        doc = getattr(nonrobust, name).__doc__ or ""
        assert "Returns:" in doc and ">>>" in doc, name
        assert "Args:" in doc, name


def test_the_examples_in_the_docstrings_run():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the bottleneck's "no channel came out robust" on 8 images
        result = doctest.testmod(api, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 20 and result.failed == 0, result


def test_readme_python_blocks_run():
    blocks = _python_blocks()
    assert len(blocks) >= 4
    for block in blocks:
        compile(block, "README.md", "exec")  # every block is valid Python
    namespace: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for block in blocks[:2]:  # the front door and the modules, on the shipped model and slice
            exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    table = namespace["table"]
    assert table["n"] == 64 and set(table["attacks"]) == {"PGD-20", "NRF-L∞"}
    # the later blocks run whole tables and reports on full data sets: check that every call they name exists
    from nonrobust import analyses, attacks, report

    for module, name in [(attacks, "make_attack_set"), (analyses, "feature_accuracy"), (analyses, "adversarial_agreement"),
                         (report, "profile"), (report, "ReportSettings"), (report, "run_report")]:
        assert name in blocks[2] + blocks[3] and callable(getattr(module, name)), name
    assert report.profile("demo").model == "cifar10-small-at"


def test_import_nonrobust_is_light_and_unknown_names_fail():
    code = "import sys, nonrobust; assert 'torch' not in sys.modules, 'torch imported'; print(nonrobust.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == nonrobust.__version__
    with pytest.raises(AttributeError, match="no attribute"):
        nonrobust.not_a_function  # noqa: B018
    assert set(api.__all__) <= set(dir(nonrobust))
