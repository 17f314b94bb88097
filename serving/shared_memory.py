"""Triton's system shared memory extension: regions of POSIX shared memory objects (``/dev/shm``) that a client on
the same host registers, so that the server reads inputs from them and writes outputs into them instead of the
tensors' bytes travelling in the messages.

Off unless the server runs with ``--allow-client-shm``, as in Triton: a registered region lets a client have the
server read and write any shared memory object that the server's user can open. A key names an object in
``/dev/shm`` and nothing else (leading slashes, then a name without ``/``, not ``.`` or ``..``; the object must be
a regular file, and a symbolic link is not followed), so no request reaches a path elsewhere. The server reads and
writes with ``pread``/``pwrite`` on a descriptor it keeps rather than through a mapping: a client that truncates
its object while it is registered makes its own request fail with INVALID_ARGUMENT, where a mapping would take the
server down with SIGBUS. A region unregistered while a request uses it stays open until that request is answered
(its descriptor closes with the last reference to it). Tensors in shared memory are bounded like tensors in
messages (``MAX_TENSOR_BYTES``), and the regions held at once by ``max_regions``, since each keeps a descriptor.
"""

import io
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from serving.codec import non_negative_int, shown
from serving.errors import ServingError, Status

SHM_DIRECTORY = Path("/dev/shm")
# A tensor read from or written to shared memory is bounded as one in a gRPC message or an HTTP body is.
MAX_TENSOR_BYTES = 64 * 1024 * 1024
# Regions registered at once (each holds a file descriptor).
MAX_REGIONS = 256
# Triton's name for its own regions (the Python backend's); a client may not register an object by it.
RESERVED_KEY_PREFIX = "triton_python_backend_shm_region_"
DISABLED = "client shared memory is off; start the server with --allow-client-shm to use it"
PARAMETERS = ("shared_memory_region", "shared_memory_offset", "shared_memory_byte_size")


def _bad(message: str) -> ServingError:
    return ServingError(Status.INVALID_ARGUMENT, message)


@dataclass(frozen=True)
class RegionStatus:
    """A registered region as the protocol's status reports it."""

    name: str
    key: str
    offset: int
    byte_size: int


class _Region:
    """One registered region: the open object and the window of it that the client registered."""

    def __init__(self, status: RegionStatus, file: io.FileIO) -> None:
        self.status = status
        # A raw FileIO: closed when the last reference goes (unregistered, and no request holds the region).
        self.file = file


@dataclass(frozen=True, slots=True)
class SharedMemorySlice:
    """Where one tensor lives: ``byte_size`` bytes at ``offset`` within a registered region."""

    region: _Region
    offset: int
    byte_size: int

    @property
    def name(self) -> str:
        return self.region.status.name

    def read(self, tensor: str) -> bytes:
        """The slice's bytes.

        Raises:
            ServingError: INVALID_ARGUMENT when the object is now shorter than the slice.
        """
        position = self.region.status.offset + self.offset
        data = os.pread(self.region.file.fileno(), self.byte_size, position)
        if len(data) != self.byte_size:
            raise _bad(
                f"{tensor}: shared memory region {shown(self.name)} ends {self.byte_size - len(data)} bytes short of "
                "the input (the object was truncated after it was registered)"
            )
        return data

    def check_fits(self, tensor: str, byte_size: int) -> None:
        """Raises INVALID_ARGUMENT when an output of ``byte_size`` bytes does not fit in the slice."""
        if byte_size > self.byte_size:
            raise _bad(
                f"{tensor}: the output is {byte_size} bytes, more than the {self.byte_size} bytes of "
                f"shared_memory_byte_size in region {shown(self.name)}"
            )

    def write(self, data: bytes) -> None:
        """Writes ``data`` (checked to fit with ``check_fits``) at the start of the slice."""
        os.pwrite(self.region.file.fileno(), data, self.region.status.offset + self.offset)


class SystemSharedMemory:
    """The registered system shared memory regions of one server, shared by every front end.

    Args:
        allowed: whether clients may register regions (``--allow-client-shm``); when False every registration
            and every tensor that names a region is refused with UNIMPLEMENTED and a line saying how to turn it on.
        directory: where shared memory objects live (``/dev/shm`` on Linux; tests may point elsewhere).
    """

    def __init__(self, allowed: bool, directory: Path = SHM_DIRECTORY, max_regions: int = MAX_REGIONS) -> None:
        self.allowed = allowed
        self.directory = directory
        self.max_regions = max_regions
        self._regions: dict[str, _Region] = {}

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """Registers ``byte_size`` bytes at ``offset`` of the shared memory object ``key`` as region ``name``.

        Raises:
            ServingError: UNIMPLEMENTED when client shared memory is off; ALREADY_EXISTS for a name in use;
                INVALID_ARGUMENT for a bad name or key, an object that cannot be opened, or a window outside it;
                UNAVAILABLE with ``max_regions`` regions registered already.
        """
        if not self.allowed:
            raise ServingError(Status.UNIMPLEMENTED, DISABLED)
        if not name:
            raise _bad("a shared memory region needs a name")
        if name in self._regions:
            raise ServingError(
                Status.ALREADY_EXISTS, f"shared memory region {shown(name)} is already registered; unregister it first"
            )
        if len(self._regions) >= self.max_regions:
            raise ServingError(
                Status.UNAVAILABLE,
                f"{len(self._regions)} shared memory regions are registered, the server's limit; unregister some",
            )
        if offset < 0 or byte_size < 0:
            raise _bad(f"region {shown(name)}: offset and byte_size must be >= 0, got {offset} and {byte_size}")
        file = self._open(name, key)
        size = os.fstat(file.fileno()).st_size
        if offset + byte_size > size:
            file.close()
            raise _bad(
                f"region {shown(name)}: offset {offset} + byte_size {byte_size} is past the end of shared memory "
                f"object {shown(key)} ({size} bytes)"
            )
        self._regions[name] = _Region(RegionStatus(name, key, offset, byte_size), file)

    def _open(self, name: str, key: str) -> io.FileIO:
        object_name = key.lstrip("/")
        if not object_name or "/" in object_name or "\0" in object_name or object_name in (".", ".."):
            raise _bad(
                f"region {shown(name)}: shared memory key {shown(key)} must be a name in /dev/shm such as "
                "'/input0' (no other '/')"
            )
        if object_name.startswith(RESERVED_KEY_PREFIX):
            raise _bad(f"region {shown(name)}: keys starting with {RESERVED_KEY_PREFIX!r} are reserved")
        try:
            descriptor = os.open(self.directory / object_name, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as error:
            raise _bad(
                f"region {shown(name)}: cannot open shared memory object {shown(key)}: {error.strerror}"
            ) from None
        file = open(descriptor, "r+b", buffering=0, closefd=True)  # noqa: SIM115 - the region owns it
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            file.close()
            raise _bad(f"region {shown(name)}: {shown(key)} is not a shared memory object")
        return file

    def unregister(self, name: str = "") -> None:
        """Unregisters region ``name``, or every region for ""; an unknown name is not an error (as in Triton).

        Raises:
            ServingError: UNIMPLEMENTED when client shared memory is off.
        """
        if not self.allowed:
            raise ServingError(Status.UNIMPLEMENTED, DISABLED)
        if name:
            self._regions.pop(name, None)
        else:
            self._regions.clear()

    def status(self, name: str = "") -> list[RegionStatus]:
        """Every registered region, or region ``name``.

        Raises:
            ServingError: UNIMPLEMENTED when client shared memory is off; NOT_FOUND for an unknown name.
        """
        if not self.allowed:
            raise ServingError(Status.UNIMPLEMENTED, DISABLED)
        if not name:
            return [region.status for region in self._regions.values()]
        region = self._regions.get(name)
        if region is None:
            raise ServingError(Status.NOT_FOUND, f"no system shared memory region {shown(name)} is registered")
        return [region.status]

    def slice_for(self, kind: str, name: str, parameters: Mapping[str, object]) -> SharedMemorySlice | None:
        """The slice a tensor's parameters name (``shared_memory_region``, ``shared_memory_byte_size`` and the
        optional ``shared_memory_offset``), or None when they name none (every request asks: kept cheap).

        Args:
            kind: "input" or "output", and ``name`` the tensor's, for messages.

        Raises:
            ServingError: INVALID_ARGUMENT for parameters of the wrong types, missing or outside the region;
                NOT_FOUND for a region that is not registered; UNIMPLEMENTED when client shared memory is off.
        """
        if PARAMETERS[0] not in parameters and PARAMETERS[1] not in parameters and PARAMETERS[2] not in parameters:
            return None
        tensor = f"{kind} {shown(name)}"
        region_name = parameters.get("shared_memory_region")
        if region_name is None:
            raise _bad(f"{tensor}: shared_memory_offset and shared_memory_byte_size need shared_memory_region")
        if not isinstance(region_name, str):
            raise _bad(f"{tensor}: shared_memory_region must be a string, got {region_name!r:.40}")
        if "shared_memory_byte_size" not in parameters:
            raise _bad(f"{tensor}: shared_memory_region needs shared_memory_byte_size")
        byte_size = non_negative_int(parameters["shared_memory_byte_size"], f"{tensor}: shared_memory_byte_size")
        offset = non_negative_int(parameters.get("shared_memory_offset", 0), f"{tensor}: shared_memory_offset")
        if not self.allowed:
            raise ServingError(Status.UNIMPLEMENTED, DISABLED)
        region = self._regions.get(region_name)
        if region is None:
            raise ServingError(
                Status.NOT_FOUND, f"{tensor}: no system shared memory region {shown(region_name)} is registered"
            )
        if byte_size > MAX_TENSOR_BYTES:
            raise _bad(f"{tensor}: shared_memory_byte_size {byte_size} is over the limit of {MAX_TENSOR_BYTES} bytes")
        registered = region.status.byte_size
        if offset >= registered or offset + byte_size > registered:
            raise _bad(
                f"{tensor}: offset {offset} + byte size {byte_size} is outside region {shown(region_name)} "
                f"({registered} bytes)"
            )
        return SharedMemorySlice(region, offset, byte_size)


# CUDA shared memory (cudaIPC handles of a client's GPU buffers) needs the server's CUDA runtime, which ONNX Runtime
# keeps to itself; the server lists no such region and says so when a client tries to register one.
CUDA_UNSUPPORTED = "CUDA shared memory is not supported by this server; register system shared memory instead"


def cuda_status(name: str = "") -> list:
    """The CUDA shared memory regions (never any).

    Raises:
        ServingError: NOT_FOUND for any name.
    """
    if name:
        raise ServingError(Status.NOT_FOUND, f"no CUDA shared memory region {shown(name)} is registered")
    return []


def register_cuda() -> NoReturn:
    """Raises UNIMPLEMENTED: the server takes no CUDA shared memory."""
    raise ServingError(Status.UNIMPLEMENTED, CUDA_UNSUPPORTED)
