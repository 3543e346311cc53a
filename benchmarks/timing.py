"""The benchmarks' one clock: wall time of a call, with the GPU's queued work finished before each reading."""

from __future__ import annotations

import time
from typing import Callable

import torch


def clock(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds ``fn()`` takes on ``device`` (CUDA work is synchronised before and after, so it is counted)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0
