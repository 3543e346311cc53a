"""Split a weights file into parts of at most 16 MiB, and join them back, checked by SHA-256.

A GPU machine lent for a training run returns files of limited size; this carries a float16
checkpoint back in parts and proves the joined file is byte-for-byte the one that was split.

    python scripts/weight_parts.py split MODEL.safetensors --out PARTS_DIR [--max-mib 16]
    python scripts/weight_parts.py join PARTS_DIR/MODEL.safetensors.parts.json --out MODEL.safetensors

``split`` writes ``NAME.part000``, ``NAME.part001``, … and ``NAME.parts.json`` (the file's name, size and
SHA-256, and each part's name, size and SHA-256). ``join`` reads each part once, checks it against the
manifest and appends it to a temporary file beside ``--out`` (:func:`nonrobust.io.atomic_write`); only when
every part and the whole file's size and SHA-256 match is it moved into place, so a missing, short or altered
part never leaves a wrong file behind. Exit 1 with a one-line error on any mismatch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from nonrobust.errors import UserError
from nonrobust.io import atomic_write, write_json

MIB = 2**20


class PartsError(Exception):
    """A part or the joined file does not match the manifest."""


def split(path: str | os.PathLike[str], out_dir: str | os.PathLike[str], max_bytes: int = 16 * MIB) -> Path:
    """Write ``path`` as parts of at most ``max_bytes`` (≥ 1) under ``out_dir``; returns the manifest's path."""
    src, out = Path(path), Path(out_dir)
    if max_bytes < 1:
        raise PartsError(f"parts must hold at least one byte, got {max_bytes}")
    if not src.is_file():
        raise PartsError(f"{src}: no such file")
    out.mkdir(parents=True, exist_ok=True)
    parts: list[dict[str, Any]] = []
    whole = hashlib.sha256()
    with src.open("rb") as f:
        while True:
            block = f.read(max_bytes)
            if not block and parts:
                break
            name = f"{src.name}.part{len(parts):03d}"
            with atomic_write(out / name) as part:
                part.write(block)
            parts.append({"name": name, "bytes": len(block), "sha256": hashlib.sha256(block).hexdigest()})
            whole.update(block)
            if len(block) < max_bytes:
                break
    manifest = {"file": src.name, "bytes": src.stat().st_size, "sha256": whole.hexdigest(), "parts": parts}
    target = out / f"{src.name}.parts.json"
    write_json(target, manifest)
    return target


def join(manifest_path: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """Join the parts named in the manifest into ``out`` after checking each part and the whole; returns ``out``."""
    mpath, target = Path(manifest_path), Path(out)
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
        parts, size, digest = manifest["parts"], int(manifest["bytes"]), str(manifest["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PartsError(f"{mpath}: not a parts manifest ({exc})") from None
    with atomic_write(target) as f:  # removed again if anything below raises
        whole, written = hashlib.sha256(), 0
        for part in parts:
            p = mpath.parent / part["name"]
            if not p.is_file():
                raise PartsError(f"{p}: part missing")
            block = p.read_bytes()
            if len(block) != part["bytes"] or hashlib.sha256(block).hexdigest() != part["sha256"]:
                raise PartsError(f"{p}: part does not match its SHA-256 in {mpath.name} (re-copy it)")
            f.write(block)
            whole.update(block)
            written += len(block)
        if written != size or whole.hexdigest() != digest:
            raise PartsError(f"the joined file does not match {mpath.name}'s size and SHA-256")
    return target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)  # --ou is not --out
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("split", help="split a file into parts", allow_abbrev=False)
    s.add_argument("file")
    s.add_argument("--out", required=True, help="folder of the parts and the manifest")
    s.add_argument("--max-mib", type=float, default=16.0, help="largest part, in MiB (default 16)")
    j = sub.add_parser("join", help="join parts back, checked", allow_abbrev=False)
    j.add_argument("manifest")
    j.add_argument("--out", required=True, help="the joined file")
    args = ap.parse_args(argv)
    try:
        if args.command == "split":
            print(split(args.file, args.out, int(args.max_mib * MIB)))
        else:
            print(join(args.manifest, args.out))
    except (PartsError, UserError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
