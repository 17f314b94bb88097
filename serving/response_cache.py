"""Triton's response cache (``--cache-config local,size=BYTES`` on the server, ``response_cache { enable: true }``
in a model's config.pbtxt): answers kept in memory by the request, so that a repeated request is answered without
running its model.

What decides an answer is the loaded version (each load has its own ``generation``, so a version reloaded from
changed files never answers from its former self), each input's name, datatype, shape and bytes, and the outputs
asked for with their classification count. An answer is found by a 128-bit XXH3 digest of those, and kept with
a copy of the request's inputs, which a hit must equal: Triton trusts its 64-bit hash, so two requests that
collide get one answer; here a collision, accidental or crafted by a client, is only a miss. XXH3 digests the 50
KB of 64 Fashion-MNIST images in 1 µs where BLAKE2b took 58. The cache is shared by every model and bounded in
bytes (the inputs and outputs kept and a fixed cost per entry); the least recently used answers go first. Only
answers of requests that succeeded are kept, as in Triton. It lives on the event loop, like the data plane that
uses it: no lock.
"""

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import xxhash

from serving.signature import BYTES

# What an entry costs besides its tensors' data: the digest, the objects that hold them and the dict's slot.
ENTRY_OVERHEAD_BYTES = 512
CACHE_KINDS = ("local",)


def parse_cache_config(flags: Sequence[str]) -> int | None:
    """The cache's size in bytes from Triton's ``--cache-config`` values (``local,size=BYTES``), None without any.

    Raises:
        ValueError: another cache than ``local``, another setting than ``size``, or a size that is not an integer
            of at least 1024.
    """
    size = None
    for flag in flags:
        kind, _, setting = flag.partition(",")
        key, equals, value = setting.partition("=")
        where = f"--cache-config {flag}"
        if kind not in CACHE_KINDS:
            raise ValueError(f"{where}: the one cache is 'local' (in this process's memory), not {kind!r}")
        if key != "size" or not equals:
            raise ValueError(f"{where}: expected local,size=BYTES")
        if not (value.isascii() and value.isdigit()) or len(value) > 15 or int(value) < 1024:
            raise ValueError(f"{where}: the size must be a number of bytes of at least 1024, got {value[:40]!r}")
        size = int(value)
    return size


@dataclass(frozen=True, slots=True)
class _Answer:
    """A kept answer: what it was the answer to (copies of the inputs), and its outputs."""

    size: int
    generation: int
    inputs: tuple[tuple[str, str, tuple[int, ...], np.ndarray], ...]
    asked: tuple[tuple[str, int], ...]
    outputs: list

    def answers(self, generation: int, inputs: Sequence, asked: tuple[tuple[str, int], ...]) -> bool:
        if generation != self.generation or asked != self.asked or len(inputs) != len(self.inputs):
            return False
        given = sorted(inputs, key=lambda tensor: tensor.name)
        return all(
            (tensor.name, tensor.datatype, tuple(tensor.shape)) == (name, datatype, shape)
            and np.array_equal(tensor.data, data)
            for tensor, (name, datatype, shape, data) in zip(given, self.inputs, strict=True)
        )


class ResponseCache:
    """Answers by request, least recently used first out, within ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used_bytes = 0
        self._entries: OrderedDict[bytes, _Answer] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def digest(generation: int, inputs: Sequence, asked: Sequence[tuple[str, int]]) -> bytes:
        """The digest of a request: ``inputs`` are the request's tensors (name, datatype, shape, data), in any
        order; ``asked`` the (output name, classification count) pairs asked for, empty for every output."""
        digest = xxhash.xxh3_128()
        digest.update(generation.to_bytes(8, "little"))
        for tensor in sorted(inputs, key=lambda tensor: tensor.name):
            header = f"{len(tensor.name)}:{tensor.name}|{tensor.datatype}|{','.join(map(str, tensor.shape))}|"
            digest.update(header.encode("utf-8", "surrogatepass"))
            if tensor.datatype == BYTES:
                for element in tensor.data.reshape(-1):
                    item = element if isinstance(element, bytes) else str(element).encode("utf-8", "surrogatepass")
                    digest.update(len(item).to_bytes(4, "little"))
                    digest.update(item)
            else:
                digest.update(np.ascontiguousarray(tensor.data).view(np.uint8).reshape(-1))
        digest.update(b"outputs")
        for name, class_count in sorted(asked):
            digest.update(f"{len(name)}:{name}|{class_count}|".encode("utf-8", "surrogatepass"))
        return digest.digest()

    def get(self, digest: bytes, generation: int, inputs: Sequence, asked: Sequence[tuple[str, int]]) -> list | None:
        """The outputs of the answer kept for exactly this request (a list of output tensors, never to be changed),
        or None."""
        entry = self._entries.get(digest)
        if entry is None or not entry.answers(generation, inputs, tuple(sorted(asked))):
            return None
        self._entries.move_to_end(digest)
        return entry.outputs

    def put(
        self, digest: bytes, generation: int, inputs: Sequence, asked: Sequence[tuple[str, int]], outputs: list
    ) -> None:
        """Keeps a request's answer (tensors with ``data`` arrays), with copies of its inputs, dropping the least
        recently used answers to make room; an answer larger than the whole cache is not kept."""
        kept_inputs = tuple(
            (tensor.name, tensor.datatype, tuple(tensor.shape), tensor.data.copy())
            for tensor in sorted(inputs, key=lambda tensor: tensor.name)
        )
        size = ENTRY_OVERHEAD_BYTES + sum(_nbytes(o.data) for o in outputs) + sum(_nbytes(i[3]) for i in kept_inputs)
        if size > self.max_bytes:
            return
        replaced = self._entries.pop(digest, None)  # another request of the same digest: the newer stays
        if replaced is not None:
            self.used_bytes -= replaced.size
        while self.used_bytes + size > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.used_bytes -= evicted.size
        self._entries[digest] = _Answer(size, generation, kept_inputs, tuple(sorted(asked)), outputs)
        self.used_bytes += size


def _nbytes(array: np.ndarray) -> int:
    if array.dtype == object:
        return sum(len(item) + 48 for item in array.reshape(-1))  # a bytes object's header and its data
    return array.nbytes
