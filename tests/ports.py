"""Free local ports for the servers that the tests start (MariaDB, nginx, the serving server, TF workers)."""

import random
import socket
from pathlib import Path

# Handed out in this session: two servers started one after the other never get the same port.
_given: set[int] = set()


def free_port() -> int:
    """A local port that nothing listens on, taken from below the kernel's ephemeral range.

    A port from binding port 0 lies in that range, and the kernel may give it to an outgoing connection (any client
    in the tests) before the server meant to take it binds it, which then fails with "Address already in use".
    """
    low = _ephemeral_low()
    for _ in range(1000):
        port = random.randrange(10_000, low) if low > 10_001 else _any_port()
        if port in _given:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise RuntimeError("no free local port found below the ephemeral range")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def _any_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
