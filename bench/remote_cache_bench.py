"""A remote cache hit against a local build of the CIFAR-10 CNN architecture (2.3 M parameters), over loopback nginx.

The shipped `cifar10_cnn` definition is copied into a throw-away workspace with its data replaced by generated
images (`--images` random 32x32 RGB training images and a quarter as many test images, as an .npz) and its epochs
by `--epochs`, so the run needs no download. Then, each as a whole `python -m buildsys build` process:

1. a local build with `--remote-cache` (trains, exports, verifies, publishes, uploads): the local rebuild time;
2. `clean`, then the same build again: a remote hit (download, verify every blob and the ONNX parity probe,
   publish), repeated `--repeats` times.

The nginx is the tests' own (tests/remote/nginx.py: Debian's nginx with WebDAV, Bazel's documented setup) on a free
loopback port. Prints the wall times, the hit's own fetch time from the build's log line, and their ratio (goal: a
hit in under 2 s).

Then the transfer alone, in this process, over a round trip of each `--rtt-ms`: a proxy in front of nginx holds
every chunk for half the round trip in each direction (a propagation delay; it buffers without limit, so it does not
model TCP's window, which would slow one connection further). The same entry is fetched (every blob verified, the
probe run) and uploaded to an empty prefix, one blob at a time and `MAX_CONNECTIONS` at a time, alternating, and
the medians and their ratio are printed.

Usage: .venv/bin/python bench/remote_cache_bench.py [--images 512] [--epochs 1] [--repeats 3] [--rtt-ms 0 10 40]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.delay_proxy import DelayProxy  # noqa: E402
from buildsys.remote import RemoteCache, RemoteSettings, transfer  # noqa: E402 - the root is on the path from here
from buildsys.remote.backends import MAX_CONNECTIONS  # noqa: E402
from tests.remote.nginx import Nginx  # noqa: E402


def workspace(root: Path, images: int, epochs: int) -> None:
    """The CIFAR-10 CNN definition on generated data with `epochs` epochs."""
    rng = np.random.default_rng(0)
    tests = max(images // 4, 16)
    np.savez(
        root / "cifar.npz",
        x_train=rng.integers(0, 256, size=(images, 32, 32, 3), dtype=np.uint8),
        y_train=rng.integers(0, 10, size=images).astype(np.int64),
        x_test=rng.integers(0, 256, size=(tests, 32, 32, 3), dtype=np.uint8),
        y_test=np.arange(tests, dtype=np.int64) % 10,
    )
    source = (REPO / "model_defs" / "cifar10_cnn.py").read_text(encoding="utf-8")
    source = source.replace('datasets.keras("cifar10")', 'datasets.npz("cifar.npz")')
    source = re.sub(r"epochs=\d+", f"epochs={epochs}", source)
    (root / "model_defs").mkdir()
    (root / "model_defs" / "cifar10_cnn.py").write_text(source, encoding="utf-8")


def timed_build(root: Path, url: str) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "buildsys", "build", "cifar10_cnn", "--remote-cache", url, "--remote-cache-required"],
        cwd=root, capture_output=True, text=True, check=False,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"build failed:\n{result.stdout}\n{result.stderr}")
    return seconds, result.stdout


def transfers(root: Path, server: Nginx, rtts: list[float], repeats: int) -> list[tuple[float, str, float, float]]:
    """(rtt, direction, median seconds one blob at a time, median with MAX_CONNECTIONS) for the built entry."""
    version = next((root / "build-out" / "models" / "cifar10_cnn").glob("*/manifest.json")).parent
    key = next((server.storage / "ac").iterdir()).name
    results = []
    for rtt in rtts:
        proxy = DelayProxy(server.port, rtt / 2000)
        url = server.url.replace(f":{server.port}/", f":{proxy.port}/")
        times: dict[tuple[str, int], list[float]] = {}
        for run in range(repeats):
            for connections in (1, MAX_CONNECTIONS):
                with mock.patch.object(transfer, "MAX_CONNECTIONS", connections):
                    staging = root / f"staging-{rtt}-{run}-{connections}"
                    staging.mkdir()
                    cache = RemoteCache(RemoteSettings(url, required=True))
                    started = time.perf_counter()
                    if cache.fetch(key, "cifar10_cnn", staging) is None:
                        raise SystemExit("the entry did not fetch through the proxy")
                    times.setdefault(("fetch", connections), []).append(time.perf_counter() - started)
                    fresh = RemoteCache(RemoteSettings(f"{url}/upload-{rtt}-{run}-{connections}", required=True))
                    started = time.perf_counter()
                    fresh.upload(version, key)
                    times.setdefault(("upload", connections), []).append(time.perf_counter() - started)
        proxy.stop()
        for direction in ("fetch", "upload"):
            serial = statistics.median(times[(direction, 1)])
            parallel = statistics.median(times[(direction, MAX_CONNECTIONS)])
            results.append((rtt, direction, serial, parallel))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512, help="generated training images")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="remote hits to time, and transfers per setting")
    parser.add_argument("--rtt-ms", type=float, nargs="*", default=[0, 10, 40], help="simulated round trips")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "workspace"
        root.mkdir()
        workspace(root, args.images, args.epochs)
        server = Nginx(Path(folder) / "nginx")
        server.start()
        try:
            local, log = timed_build(root, server.url)
            if "uploaded to remote cache" not in log:
                raise SystemExit(f"the local build did not upload:\n{log}")
            hits, fetches = [], []
            for _ in range(args.repeats):
                subprocess.run([sys.executable, "-m", "buildsys", "clean", "cifar10_cnn"], cwd=root, check=True,
                               capture_output=True)  # fmt: skip
                seconds, log = timed_build(root, server.url)
                found = re.search(r"fetched from remote cache \S+ \(([\d.]+) MB in ([\d.]+)s", log)
                if found is None:
                    raise SystemExit(f"expected a remote hit:\n{log}")
                hits.append(seconds)
                fetches.append(float(found.group(2)))
                megabytes = float(found.group(1))
            moved = transfers(root, server, args.rtt_ms, args.repeats)
        finally:
            server.stop()
    hit = statistics.median(hits)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")  # fmt: skip
    print(f"data: {args.images} generated 32x32x3 training images, {args.epochs} epoch(s); entry {megabytes:.1f} MB")
    print(f"local build (train, export, verify, publish, upload), whole process: {local:.2f} s")
    print(f"remote hit, whole process: median {hit:.2f} s, max {max(hits):.2f} s ({args.repeats} runs)")
    print(f"remote hit, download + verify only: median {statistics.median(fetches):.2f} s")
    print(f"local build / remote hit: {local / hit:.1f}x")
    print(f"transfer of the entry, median of {args.repeats}: one blob at a time vs {MAX_CONNECTIONS} at a time")
    for rtt, direction, serial, parallel in moved:
        print(f"  rtt {rtt:g} ms, {direction}: {serial:.2f} s vs {parallel:.2f} s ({serial / parallel:.2f}x)")


if __name__ == "__main__":
    main()
