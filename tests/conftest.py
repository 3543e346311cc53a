"""Shared fixtures: ``device`` runs a test on the CPU, and on CUDA too where a GPU is present (``pytest -m cuda`` selects those)."""

from __future__ import annotations

import pytest
import torch

DEVICES = [pytest.param("cpu", id="cpu")] + (
    [pytest.param("cuda", id="cuda", marks=pytest.mark.cuda)] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """``cpu`` always; ``cuda`` (marked ``cuda``) when ``torch.cuda.is_available()``."""
    return torch.device(request.param)


@pytest.fixture()
def one_thread():
    """Run a test single-threaded (tiny tensors: intra-op threads only add overhead, and make a busy 2-core machine stall and
    subprocess timings erratic); the previous thread count is restored. Use it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
