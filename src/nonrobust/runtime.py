"""Devices, seeds and logging: the small pieces of run-time set-up every command shares."""

from __future__ import annotations

import contextlib
import logging
import platform
from typing import Iterator

import torch
from torch import nn

from .errors import UserError

__all__ = ["resolve_device", "make_generator", "frozen", "environment", "setup_logging"]


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """Turn ``"auto"`` / ``"cpu"`` / ``"cuda"`` / ``"cuda:1"`` / ``"mps"`` into a usable device.

    ``"auto"`` (or ``None``) picks CUDA when available, else CPU. Asking for a
    device that is not there raises :class:`UserError`.
    """
    if spec is None or str(spec) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        raise UserError(f"unknown device {spec!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {spec!r} asked for, but this PyTorch build sees no CUDA GPU: use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"device {spec!r} asked for, but only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    if device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise UserError("device 'mps' asked for, but MPS is not available here: use --device cpu")
    return device


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` seeded with ``seed`` (the global RNG is never touched).

    Any integer is accepted: it is taken modulo 2⁶⁴, which is how torch itself reads
    the seeds it accepts (negative ones included), so those seed exactly as before.
    """
    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(int(seed) % 2**64)
    return gen


def derive_seed(*parts: object) -> int:
    """A 63-bit seed derived from ``parts`` (e.g. the run's seed, a purpose, an epoch, an image's index)."""
    import hashlib

    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def environment(device: torch.device | None = None) -> dict[str, str]:
    """Versions and machine facts recorded with every result."""
    from . import __version__

    env = {
        "nonrobust": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "torch_threads": str(torch.get_num_threads()),
    }
    if device is not None:
        env["device"] = str(device)
        if device.type == "cuda":
            env["gpu"] = torch.cuda.get_device_name(device)
    return env


def setup_logging(verbose: int = 0) -> None:
    """Configure the ``nonrobust`` logger for command-line use (INFO by default, DEBUG with -v)."""
    level = logging.DEBUG if verbose > 0 else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("nonrobust").setLevel(level)


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode with parameter gradients off; restore both on exit (also on error)."""
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in grads:
            p.requires_grad_(False)
        yield model
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in grads:
            p.requires_grad_(flag)
