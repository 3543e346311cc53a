"""One report at a time per folder: ``DIR/.lock``."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Iterator

from ..errors import UserError

log = logging.getLogger("nonrobust.report")


@contextlib.contextmanager
def exclusive(out_dir: Path) -> Iterator[None]:
    """Hold ``out_dir/.lock`` for the run; a second report into the same folder fails clearly.

    A lock left by a killed run on this machine (its process is gone) is taken over.
    """
    path = out_dir / ".lock"
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                other = json.loads(path.read_text() or "{}")
            except (OSError, json.JSONDecodeError):
                other = {}
            if other.get("host") == me["host"] and not _alive(int(other.get("pid", -1))):
                log.warning("taking over %s left by a stopped run (pid %s)", path, other.get("pid"))
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            raise UserError(f"{out_dir} is being written by another report (pid {other.get('pid', '?')} on "
                            f"{other.get('host', '?')} since {other.get('since', '?')}): wait for it, or pass another --out "
                            f"(if that process is gone, delete {path})") from None
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(me))
        break
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
