"""The front door: ``import nonrobust`` exports a small documented API, its examples run, and README's Python blocks run."""

from __future__ import annotations

import doctest
import os
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


def _run_alone(block: str, folder: Path) -> dict:
    """Run one README block as a reader would: alone, in a fresh namespace, in an empty folder, offline."""
    namespace: dict = {"__name__": "__readme__"}
    here = os.getcwd()
    os.chdir(folder)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    finally:
        os.chdir(here)
    return namespace


@pytest.mark.parametrize("index", range(4))
def test_readme_python_blocks_run_each_alone_as_written(index, tmp_path, capsys):
    blocks = _python_blocks()
    assert len(blocks) == 4
    ns = _run_alone(blocks[index], tmp_path)
    if index == 0:  # the front door
        assert ns["table"]["n"] == 64 and set(ns["table"]["attacks"]) == {"PGD-20", "NRF-L∞"}
    elif index == 1:  # the modules
        assert ns["x_adv"].shape == ns["x"].shape and ns["res"].robust_mask.shape == (32, 256)
    elif index == 2:  # the tables, each attack run once
        assert set(ns["table3"]) == {"PGD-20", "NRF-L∞"} and set(ns["table1"]["rows"]) == {"clean", "PGD-20", "NRF-L∞"}
        assert len(list((tmp_path / "out" / "adversarial").glob("*.safetensors"))) == 2
    else:  # the report; its commented lines name calls that exist
        from nonrobust import report

        assert ns["results"]["n"] == 24 and (tmp_path / "out" / "quick" / "report.html").is_file()
        assert report.profile("demo").model == "cifar10-small-at"
        for name in ("profile", "ReportSettings", "run_report"):
            assert f"{name}(" in blocks[3] and callable(getattr(report, name))


def test_import_nonrobust_is_light_and_unknown_names_fail():
    code = "import sys, nonrobust; assert 'torch' not in sys.modules, 'torch imported'; print(nonrobust.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == nonrobust.__version__
    with pytest.raises(AttributeError, match="no attribute"):
        nonrobust.not_a_function  # noqa: B018
    assert set(api.__all__) <= set(dir(nonrobust))
