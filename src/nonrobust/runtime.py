"""Devices, seeds and logging: the small pieces of run-time set-up every command shares."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from .errors import UserError, check

__all__ = ["resolve_device", "make_generator", "index_seed", "derive_seed", "frozen", "environment", "setup_logging", "Distributed", "launch_device"]

log = logging.getLogger(__name__)


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


def index_seed(seed: int, index: int) -> int:
    """The seed of item ``index`` (a batch, an image) of a seeded run: ``seed · 1,000,003 + index``.

    nonrobust derives seeds in exactly two ways, each with one home: this one for the streams of a run
    over a data set (batch ``i`` of an attack, image ``i``'s bottleneck noise), so that a stream depends
    only on the run's seed and the item's index (resumable, shardable); :func:`derive_seed` for named
    streams of training (the epoch's shuffle, augmentation, attack starts, dropout).
    """
    return int(seed) * 1_000_003 + int(index)


def derive_seed(*parts: object) -> int:
    """A 63-bit seed derived from ``parts`` (training's named streams: the run's seed, a purpose, an epoch, a rank;
    see :func:`index_seed` for the streams of a run over a data set)."""
    import hashlib

    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def environment(device: torch.device | None = None) -> dict[str, str]:
    """Versions and machine facts recorded with every result."""
    from ._version import __version__

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


# --------------------------------------------------------------------------- torchrun
@dataclass
class Distributed:
    """This process's place in a ``torchrun`` launch: ``world`` processes, this one ``rank`` (1 and 0 alone).

    Training splits each batch over the ranks (DDP). Evaluation (``attack``, ``split``, the report's
    attacks) gives rank ``r`` the batches ``i`` with ``i % world == r`` (:meth:`owns`): shards follow
    batch boundaries and every batch keeps its seeds, so the files written are the same, bit for bit,
    as one process writes.
    """

    world: int = 1
    rank: int = 0
    local_rank: int = 0
    owns_group: bool = False

    @property
    def main(self) -> bool:
        """Whether this is rank 0 (the one that writes shared files and summaries)."""
        return self.rank == 0

    def owns(self, batch: int) -> bool:
        """Whether batch number ``batch`` of a data set is this rank's to compute."""
        return batch % self.world == self.rank

    @classmethod
    def from_env(cls) -> "Distributed":
        """From torchrun's environment variables (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        return cls(world, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")))

    @classmethod
    def current(cls) -> "Distributed":
        """The initialised ``torch.distributed`` process group, if there is one; else a single process."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return cls(dist.get_world_size(), dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")))
        return cls()

    def device(self, spec: str) -> torch.device:
        """:func:`resolve_device`, except that under torchrun each rank uses ``cuda:LOCAL_RANK`` (or the CPU)."""
        if self.world == 1:
            return resolve_device(spec)
        if str(spec) != "cpu" and torch.cuda.is_available():
            if str(spec) not in ("auto", "cuda"):
                log.warning("under torchrun each rank uses cuda:LOCAL_RANK; ignoring --device %s", spec)
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        check(str(spec) in ("auto", "cpu"), f"device {spec!r} asked for, but this PyTorch build sees no CUDA GPU: use --device cpu")
        return torch.device("cpu")

    def init(self, device: torch.device) -> None:
        """Join the process group (NCCL on GPUs, gloo on the CPU) unless it exists already."""
        import torch.distributed as dist

        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
            self.owns_group = True

    def barrier(self) -> None:
        """Wait for every rank (nothing to wait for alone)."""
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over the ranks, in place."""
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(t)
        return t

    def close(self) -> None:
        """Leave the process group if :meth:`init` made it."""
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.owns_group = False


def launch_device(spec: str | torch.device | None = "auto") -> torch.device:
    """:func:`resolve_device` for a command that may run under ``torchrun``: there, each rank takes its own GPU
    (``cuda:LOCAL_RANK``) and joins the process group, so that the streamed files are sharded over the ranks."""
    d = Distributed.from_env()
    if d.world == 1:
        return resolve_device(spec)
    device = d.device("auto" if spec is None else str(spec))
    d.init(device)
    return device
