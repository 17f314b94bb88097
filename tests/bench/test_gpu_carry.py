"""bench/gpu/carry.py: a folder packed into zstd parts comes back bit-exact; a bad part is named before unpacking."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load_carry():
    spec = importlib.util.spec_from_file_location("gpu_carry", REPO / "bench" / "gpu" / "carry.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


carry = _load_carry()


def _tree(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``root``: relative path -> (bytes, owner-executable bit)."""
    return {
        str(path.relative_to(root)): (path.read_bytes(), path.stat().st_mode & 0o100)
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """Incompressible bytes (like CUDA kernels) next to text, an empty file, nested folders and an executable."""
    root = tmp_path / "source"
    (root / "site" / "onnxruntime" / "capi").mkdir(parents=True)
    (root / "site" / "onnxruntime" / "capi" / "libfake.so").write_bytes(os.urandom(300_000))
    (root / "site" / "onnxruntime" / "__init__.py").write_text("__version__ = '0.0'\n" * 2_000)
    (root / "models" / "cifar" / "1").mkdir(parents=True)
    (root / "models" / "cifar" / "1" / "empty").write_bytes(b"")
    tool = root / "site" / "bin" / "tool"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\necho hi\n")
    tool.chmod(0o755)
    return root


def test_pack_then_unpack_is_bit_exact(source: Path, tmp_path: Path) -> None:
    parts = tmp_path / "parts"
    description = carry.pack(source, parts, "bundle", part_bytes=64 * 1024, level=3)

    sizes = [part["size"] for part in description["parts"]]
    assert len(sizes) >= 4 and all(size == 64 * 1024 for size in sizes[:-1]) and 0 < sizes[-1] <= 64 * 1024
    assert sorted(path.name for path in parts.iterdir()) == [part["name"] for part in description["parts"]]
    assert sum(sizes) == description["compressed_bytes"]

    destination = tmp_path / "unpacked"
    carry.unpack(parts, description, destination)
    assert _tree(destination) == _tree(source)


def test_packing_again_removes_stale_parts(source: Path, tmp_path: Path) -> None:
    parts = tmp_path / "parts"
    many = carry.pack(source, parts, "bundle", part_bytes=32 * 1024, level=3)
    few = carry.pack(source, parts, "bundle", part_bytes=1 << 20, level=3)
    assert len(few["parts"]) == 1 < len(many["parts"])
    assert [path.name for path in parts.iterdir()] == [few["parts"][0]["name"]]


def test_altered_short_or_missing_parts_are_named_and_nothing_is_unpacked(source: Path, tmp_path: Path) -> None:
    parts = tmp_path / "parts"
    description = carry.pack(source, parts, "bundle", part_bytes=64 * 1024, level=3)
    second = parts / description["parts"][1]["name"]
    original = second.read_bytes()
    destination = tmp_path / "unpacked"

    second.write_bytes(bytes([original[0] ^ 1]) + original[1:])
    with pytest.raises(carry.CarryError, match=rf"{second.name}: SHA-256 differs"):
        carry.unpack(parts, description, destination)

    second.write_bytes(original[:-1])
    with pytest.raises(carry.CarryError, match=rf"{second.name}: {len(original) - 1} bytes, expected"):
        carry.unpack(parts, description, destination)

    second.unlink()
    with pytest.raises(carry.CarryError, match=rf"{second.name}: part missing"):
        carry.unpack(parts, description, destination)
    assert not destination.exists()
