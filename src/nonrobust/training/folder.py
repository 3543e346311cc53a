"""The run folder: the committed state of an epoch, the checkpoints and metrics derived from it, and their repair after a crash."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from .. import models
from ..data import ImageDataset
from ..errors import UserError, check
from ..io import atomic_write, load_tensors, save_tensors
from .config import TrainConfig
from .methods import METHODS

log = logging.getLogger(__name__)


STATE_FORMAT = "nonrobust-train-state"
_STATE_VERSION = 1
_RESUMABLE_CHANGES = ("epochs", "device")
_FILES = {"config": "config.json", "state": "state.safetensors", "last": "last.safetensors",
          "best": "best.safetensors", "metrics": "metrics.jsonl", "provenance": "provenance.json"}


# --------------------------------------------------------------------------- persistence
def _optimizer_to_file(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors and JSON (no pickle)."""
    sd = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    other: dict[str, dict[str, Any]] = {}
    for pid, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{pid}.{key}"] = value
            else:
                other.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "other": other}


def _optimizer_from_file(opt: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {int(pid): dict(values) for pid, values in meta["other"].items()}
    for name, value in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [f"{k}={old.get(k)!r} (now {new.get(k)!r})" for k in sorted(set(old) | set(new))
            if k not in _RESUMABLE_CHANGES and old.get(k) != new.get(k)]


# --------------------------------------------------------------------------- the run folder
@dataclass
class _RunFolder:
    """The files of one run (rank 0 writes them): the committed state, the derived checkpoints and metrics, and their repair."""

    out: Path
    cfg: TrainConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    train_set: ImageDataset  # what the checkpoints' metadata says the model was trained on
    record: dict[str, Any]  # recipe fields besides the config: command, world size, environment
    identity: dict[str, Any]  # digests of what the run is made from: training images, held-out images, initial weights
    origin: dict[str, Any]  # the provenance block of the run (provenance.json, and every checkpoint's metadata)
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None

    @property
    def select_by(self) -> str:
        return METHODS[self.cfg.method].select_by

    def path(self, key: str) -> Path:
        return self.out / _FILES[key]

    def score(self, entry: dict[str, Any]) -> float:
        return cast(float, entry["eval_clean_acc" if self.select_by == "clean" else "eval_pgd_acc"])

    def checkpoint(self, path: Path, entry: dict[str, Any]) -> None:
        recipe = {"config": self.cfg.to_dict(), "method": METHODS[self.cfg.method].description, **self.record}
        metrics = {"epoch": entry["epoch"], **{k: v for k, v in entry.items() if k.startswith("eval_")},
                   "selected_by": self.select_by, "history": self.history}
        ds = self.train_set
        meta = models.make_meta(self.model, dataset=ds.name, classes=list(ds.classes), input_shape=ds.input_shape,
                                recipe=recipe, metrics=metrics, provenance=self.origin)
        models.save(self.model, path, meta)

    def save_state(self) -> None:
        opt_tensors, opt_meta = _optimizer_to_file(self.optimizer)
        weights = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        meta = {"format": STATE_FORMAT, "version": _STATE_VERSION, "epoch": len(self.history), "config": self.cfg.to_dict(),
                "history": self.history, "best": self.best, "optimizer": opt_meta, "world_size": self.record["world_size"],
                "identity": self.identity}
        save_tensors(self.path("state"), {**weights, **opt_tensors}, meta)

    def load_state(self, device: torch.device) -> None:
        tensors, meta = load_tensors(self.path("state"))
        check(meta.get("format") == STATE_FORMAT, f"{self.path('state')}: not a nonrobust training state")
        check(int(meta.get("version", 0)) <= _STATE_VERSION, f"{self.path('state')}: written by a newer nonrobust; upgrade to resume")
        saved = meta.get("identity") or {}
        changed = [what for key, what in _IDENTITY_PARTS.items() if key in saved and key in self.identity and saved[key] != self.identity[key]]
        check(not changed, f"--resume: {self.out} was trained from other {' and '.join(changed)} than this run would use (their content "
                           "differs): resume with the same ones, or choose another --out to start a new run")
        weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        self.model.load_state_dict(weights, strict=True)
        _optimizer_from_file(self.optimizer, {k: v.to(device) for k, v in tensors.items() if k.startswith("optim.")},
                             meta["optimizer"])
        self.history, self.best = list(meta["history"]), meta["best"]
        if meta.get("world_size", 1) != self.record["world_size"]:
            log.warning("resuming a %d-process run with %d processes: the random streams per rank differ from the original run",
                        meta.get("world_size", 1), self.record["world_size"])

    def write_metrics(self) -> None:
        with atomic_write(self.path("metrics"), "w") as fh:
            fh.writelines(json.dumps(e) + "\n" for e in self.history)

    def append_metrics(self, entry: dict[str, Any]) -> None:
        with open(self.path("metrics"), "a") as fh:
            fh.write(json.dumps(entry) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def repair(self) -> None:
        """Bring the derived files in line with the committed state (after a crash between writes)."""
        if not self.history:
            return
        self.write_metrics()
        self.checkpoint(self.path("last"), self.history[-1])
        best_file_epoch = None
        if self.path("best").is_file():
            with contextlib.suppress(UserError):
                best_file_epoch = load_tensors(self.path("best"), keys=())[1].get("metrics", {}).get("epoch")
        if self.best and best_file_epoch != self.best["epoch"]:
            if self.best["epoch"] == len(self.history):
                self.checkpoint(self.path("best"), self.history[-1])
            else:
                log.warning("%s does not hold the best epoch %d", self.path("best"), self.best["epoch"])

    def end_epoch(self, entry: dict[str, Any]) -> None:
        """Record a finished epoch: state first (the commit point), then the derived files."""
        entry["best"] = self.best is None or self.score(entry) > self.best["score"]
        if entry["best"]:
            self.best = {"epoch": entry["epoch"], "score": self.score(entry), "by": self.select_by}
        self.history.append(entry)
        self.save_state()
        if entry["best"]:
            self.checkpoint(self.path("best"), entry)
        self.checkpoint(self.path("last"), entry)
        self.append_metrics(entry)

    def summary(self) -> dict[str, Any]:
        best = self.history[self.best["epoch"] - 1] if self.best else None
        return {"out_dir": str(self.out), "epochs": len(self.history), "last": self.history[-1] if self.history else None,
                "best": best, "checkpoint": str(self.path("last")), "best_checkpoint": str(self.path("best"))}


_IDENTITY_PARTS = {"train_data": "training images", "eval_data": "held-out images", "init": "initial weights"}
"""What a resumed run must share with the run it continues, by content (:mod:`nonrobust.identity`)."""


