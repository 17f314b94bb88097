"""Stopping the servers that tests start in subprocesses (MariaDB, nginx, Azurite)."""

import subprocess


def stop(process: subprocess.Popen, timeout_s: float = 20) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout_s``; returns once it has exited."""
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
