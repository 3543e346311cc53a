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
