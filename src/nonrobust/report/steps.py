"""The report's step cache: each step's result stored under a key of everything it depends on."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

from ..errors import UserError
from ..runtime import Distributed
from ..io import (
    digest,
    read_json,
    write_json,
)

log = logging.getLogger("nonrobust.report")


class Steps:
    """Run named steps once: ``DIR/steps/<name>.json`` holds each result under a key of its inputs."""

    def __init__(self, out_dir: Path, base: dict) -> None:
        self.dir = out_dir / "steps"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.base = base
        self.timings: dict[str, dict] = {}

    def run(self, name: str, params: dict, fn: Callable[[], dict], files: tuple[Path, ...] = ()) -> dict:
        key = digest({"base": self.base, "step": name, "params": params})
        path = self.dir / f"{name}.json"
        if path.is_file():
            try:
                record = read_json(path)
            except UserError:
                record = {}
            if record.get("key") == key and all(Path(f).is_file() for f in files):
                self.timings[name] = {"seconds": record["seconds"], "reused": True}
                log.info("step %s: reusing %s", name, path)
                return record["result"]
        log.info("step %s", name)
        t0 = time.perf_counter()
        result = fn()
        seconds = round(time.perf_counter() - t0, 2)
        if Distributed.current().main:  # under torchrun every rank computed its shard; rank 0 records the step
            write_json(path, {"key": key, "params": params, "seconds": seconds, "result": result})
        self.timings[name] = {"seconds": seconds, "reused": False}
        return result

    def file(self, name: str) -> Path:
        """Where step ``name`` keeps its tensors."""
        return self.dir / f"{name}.safetensors"
