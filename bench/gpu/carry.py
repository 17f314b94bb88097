"""Packing a folder into zstd-compressed chunks that fit the device tool's carry limit, and unpacking them there.

The device machine can download nothing and each device-tool call carries at most 64 MiB, so what the GPU run
needs (onnxruntime-gpu and the other wheels unpacked, the built models) travels as one tar stream compressed
with zstd and cut into numbered parts, one part per call. There is no zstd binary there, only Python with the
carried `zstandard` wheel, so both directions are done here, streaming, with the standard library's tarfile and
`zstandard`: the whole bundle is never held in memory, and every part carries a SHA-256 so a part that was cut
short or altered is named before anything is unpacked.

This module must import nothing but the standard library and `zstandard`: it runs on the device before the
carried packages are on the path.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zstandard

PART_SUFFIX = ".part-"
READ_BYTES = 1 << 20


class CarryError(Exception):
    """A missing, short or altered part; the message names the part and what is wrong in one line."""


@dataclass(frozen=True)
class Part:
    """One numbered piece of the compressed stream."""

    name: str
    size: int
    sha256: str

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "size": self.size, "sha256": self.sha256}


class _PartWriter(io.RawIOBase):
    """A write-only file that starts a new part file every ``part_bytes`` bytes, hashing as it goes."""

    def __init__(self, directory: Path, stem: str, part_bytes: int) -> None:
        self.directory, self.stem, self.part_bytes = directory, stem, part_bytes
        self.parts: list[Part] = []
        self._file: BinaryIO | None = None
        self._hash = hashlib.sha256()
        self._written = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(data).cast("B")
        total = len(view)
        while view:
            if self._file is None:
                name = f"{self.stem}{PART_SUFFIX}{len(self.parts) + 1:02d}"
                self._file = open(self.directory / f"{name}.tmp", "wb")  # noqa: SIM115 - closed in _finish_part
                self._hash, self._written = hashlib.sha256(), 0
            room = self.part_bytes - self._written
            piece = view[:room]
            self._file.write(piece)
            self._hash.update(piece)
            self._written += len(piece)
            view = view[len(piece) :]
            if self._written == self.part_bytes:
                self._finish_part()
        return total

    def _finish_part(self) -> None:
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        temporary = Path(self._file.name)
        name = temporary.name.removesuffix(".tmp")
        temporary.rename(self.directory / name)
        self.parts.append(Part(name, self._written, self._hash.hexdigest()))
        self._file = None

    def close(self) -> None:
        if self._file is not None and not self.closed:
            self._finish_part()
        super().close()


def pack(source: Path, directory: Path, stem: str, part_bytes: int, level: int = 9) -> dict[str, object]:
    """Tars ``source``'s contents, compresses them with zstd and writes ``stem.part-01``... of ``part_bytes`` each.

    Returns the description that `unpack` checks against (each part's name, size and SHA-256).
    Old parts of the same stem are removed first, so a smaller bundle leaves no stale part behind.
    """
    if part_bytes < 1:
        raise ValueError(f"part size must be positive, got {part_bytes}")
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(f"{stem}{PART_SUFFIX}*"):
        stale.unlink()
    writer = _PartWriter(directory, stem, part_bytes)
    compressor = zstandard.ZstdCompressor(level=level, threads=-1)
    with (
        compressor.stream_writer(writer, closefd=False) as compressed,
        tarfile.open(fileobj=compressed, mode="w|", format=tarfile.PAX_FORMAT) as archive,
    ):
        for path in sorted(source.iterdir()):
            archive.add(path, arcname=path.name)
    writer.close()
    return {
        "stem": stem,
        "parts": [part.to_json() for part in writer.parts],
        "compressed_bytes": sum(part.size for part in writer.parts),
    }


def check_parts(directory: Path, description: dict[str, object]) -> list[Path]:
    """The part files in order, after checking each one's size and hash against ``description``.

    Raises:
        CarryError: naming the first part that is missing, of the wrong size, or altered.
    """
    paths = []
    for entry in description["parts"]:  # type: ignore[union-attr]
        path = directory / entry["name"]
        if not path.is_file():
            raise CarryError(f"{path}: part missing; carry it again (see bench/gpu/.carry/manifest.json)")
        if path.stat().st_size != entry["size"]:
            raise CarryError(f"{path}: {path.stat().st_size} bytes, expected {entry['size']}; carry it again")
        digest = hashlib.sha256()
        with open(path, "rb") as file:
            while chunk := file.read(READ_BYTES):
                digest.update(chunk)
        if digest.hexdigest() != entry["sha256"]:
            raise CarryError(f"{path}: SHA-256 differs from the manifest's; carry it again")
        paths.append(path)
    return paths


class _Joined(io.RawIOBase):
    """The parts read back to back as one stream."""

    def __init__(self, paths: list[Path]) -> None:
        self._paths: Iterator[Path] = iter(paths)
        self._file: BinaryIO | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while True:
            if self._file is None:
                path = next(self._paths, None)
                if path is None:
                    return 0
                self._file = open(path, "rb")  # noqa: SIM115 - closed when exhausted
            count = self._file.readinto(buffer)
            if count:
                return count
            self._file.close()
            self._file = None


def unpack(directory: Path, description: dict[str, object], destination: Path) -> None:
    """Checks the parts in ``directory``, then decompresses and untars them into ``destination``.

    Members are extracted with tarfile's ``data`` filter, so no member can land outside ``destination``.

    Raises:
        CarryError: a part is missing or altered.
    """
    paths = check_parts(directory, description)
    destination.mkdir(parents=True, exist_ok=True)
    decompressor = zstandard.ZstdDecompressor()
    with decompressor.stream_reader(_Joined(paths)) as stream, tarfile.open(fileobj=stream, mode="r|") as archive:
        archive.extractall(destination, filter="data")


def read_description(path: Path) -> dict[str, object]:
    """The bundle's description from the manifest written by prepare.py."""
    return json.loads(path.read_text())["bundle"]
