"""scripts/weight_parts.py: a file split into bounded parts joins back byte for byte, and a bad part is refused."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import load_script

wp = load_script("weight_parts")


@settings(max_examples=30, deadline=None)
@given(size=st.integers(0, 300), max_bytes=st.integers(1, 64))
def test_parts_are_bounded_and_join_back_exactly(tmp_path_factory, size, max_bytes):
    tmp = tmp_path_factory.mktemp("parts")
    src = tmp / "w.safetensors"
    payload = os.urandom(size)
    src.write_bytes(payload)
    manifest = wp.split(src, tmp / "parts", max_bytes)
    parts = json.loads(manifest.read_text())["parts"]
    assert all(p["bytes"] <= max_bytes for p in parts)
    assert len(parts) == max(1, -(-size // max_bytes))  # an empty file is one empty part
    assert sum(p["bytes"] for p in parts) == size
    out = wp.join(manifest, tmp / "back" / "w.safetensors")
    assert out.read_bytes() == payload


def test_an_altered_or_missing_part_is_refused_and_leaves_no_file(tmp_path, capsys):
    src = tmp_path / "w.bin"
    src.write_bytes(bytes(range(256)) * 3)
    manifest = wp.split(src, tmp_path / "parts", 100)
    part = tmp_path / "parts" / "w.bin.part001"
    part.write_bytes(b"x" + part.read_bytes()[1:])
    out = tmp_path / "joined.bin"
    assert wp.main(["join", str(manifest), "--out", str(out)]) == 1
    assert "part001: part does not match its SHA-256" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".joined.bin.*"))
    part.unlink()
    with pytest.raises(wp.PartsError, match="part missing"):
        wp.join(manifest, out)
    assert not out.exists()


def test_sixteen_mib_is_the_default_bound(tmp_path):
    src = tmp_path / "big.bin"
    src.write_bytes(b"\0" * (16 * 2**20 + 5))
    parts = json.loads(wp.split(src, tmp_path / "p").read_text())["parts"]
    assert [p["bytes"] for p in parts] == [16 * 2**20, 5]


def test_an_abbreviated_option_is_an_error(tmp_path):
    src = tmp_path / "w.bin"
    src.write_bytes(b"abc")
    with pytest.raises(SystemExit) as exc:
        wp.main(["split", str(src), "--ou", str(tmp_path / "p")])
    assert exc.value.code == 2 and not (tmp_path / "p").exists()
