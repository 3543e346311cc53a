"""The report's step cache: each step's result stored under a key of everything it depends on."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, cast

from ..errors import UserError
from ..identity import work_key
from ..io import read_json, write_json
from ..runtime import Distributed

log = logging.getLogger("nonrobust.report")


class Steps:
    """Run named steps once: ``DIR/steps/<name>.json`` holds each result under its work key
    (:func:`nonrobust.identity.work_key` of the model, the evaluated images, ``base`` and the step's own settings)."""

    def __init__(self, out_dir: Path, model: str, data: str, base: dict[str, Any]) -> None:
        self.dir = out_dir / "steps"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.model, self.data, self.base = model, data, base  # digests of the model and the evaluated images
        self.timings: dict[str, dict[str, Any]] = {}

    def run(self, name: str, params: dict[str, Any], fn: Callable[[], dict[str, Any]], files: tuple[Path, ...] = ()) -> dict[str, Any]:
        key = work_key(f"report-step:{name}", model=self.model, data=self.data, settings={"base": self.base, "params": params})
        path = self.dir / f"{name}.json"
        if path.is_file():
            try:
                record = read_json(path)
            except UserError:
                record = {}
            if record.get("key") == key and all(Path(f).is_file() for f in files):
                self.timings[name] = {"seconds": record["seconds"], "reused": True}
                log.info("step %s: reusing %s", name, path)
                return cast("dict[str, Any]", record["result"])
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
