"""What request tracing costs: batch-1 requests through the data plane in process (no transport), with tracing
off, and with every request traced at TIMESTAMPS and at TENSORS level into trace files, and as OpenTelemetry spans
sent to a local OTLP/HTTP receiver in another process (SPANS).

Each level runs in a fresh process, the levels alternating for ``--rounds`` rounds; it prints each level's median
CPU-bound microseconds per request (the event loop runs the whole request: decode-free values in, the model on the
loop). The model is the tests' 8x8 digits classifier. Compare the "off" figure with the same script at an earlier
commit (``git worktree add``) to see what tracing costs requests that are not traced.
"""

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

LEVELS = ("OFF", "TIMESTAMPS", "TENSORS", "SPANS")


async def _measure(repo: Path, level: str, trace_folder: Path, requests: int, collector: str) -> float:
    import numpy as np

    from serving.dataplane import DataPlane, InferenceRequest, InputTensor
    from serving.runtime import RuntimeOptions
    from serving.tracing import OtelOptions, Tracer, TraceSettings

    if level == "OFF":
        settings = None
    elif level == "SPANS":
        settings = TraceSettings(("TIMESTAMPS",), rate=1, mode="opentelemetry", otel=OtelOptions(url=collector))
    else:
        settings = TraceSettings((level,), rate=1, log_frequency=1000, file=str(trace_folder / "trace.json"))
    tracer = Tracer(settings)
    dataplane = DataPlane([repo], RuntimeOptions(device="cpu", intra_op_threads=1), poll_interval_s=0, tracer=tracer)
    await dataplane.start()
    image = np.random.default_rng(0).integers(0, 16, (1, 8, 8), dtype=np.uint8)

    async def one() -> None:  # as a front end does: sample, infer, finish
        trace = tracer.sample("digits")
        request = InferenceRequest(
            model="digits", inputs=[InputTensor("image", "UINT8", (1, 8, 8), image)], trace=trace
        )
        await dataplane.infer(request)
        if trace is not None:
            tracer.finish(trace)

    for _ in range(2000):
        await one()
    runs = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(requests):
            await one()
        runs.append((time.perf_counter() - started) / requests * 1e6)
    await dataplane.close()
    return statistics.median(runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="times each level runs, alternating (default 3)")
    parser.add_argument("--requests", type=int, default=5000, help="requests per timed run (default 5,000)")
    parser.add_argument("--level", choices=LEVELS, help=argparse.SUPPRESS)  # one measurement, in a child process
    parser.add_argument("--repo", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--collector", default="", help=argparse.SUPPRESS)
    parser.add_argument("--receive", action="store_true", help=argparse.SUPPRESS)  # be the OTLP receiver
    args = parser.parse_args()
    if args.receive:
        from tests.serving.test_otel import OtlpReceiver

        print(OtlpReceiver().url, flush=True)
        time.sleep(86_400)  # until the parent kills it
    if args.level:
        with tempfile.TemporaryDirectory() as folder:
            print(asyncio.run(_measure(args.repo, args.level, Path(folder), args.requests, args.collector)))
        return 0
    from tests.serving.conftest import publish_version

    with tempfile.TemporaryDirectory() as folder:
        repo = Path(folder) / "models"
        publish_version(repo, "digits", 1, seed=1)
        receiver = subprocess.Popen([sys.executable, __file__, "--receive"], stdout=subprocess.PIPE, text=True)
        collector = receiver.stdout.readline().strip()
        results: dict[str, list[float]] = {level: [] for level in LEVELS}
        try:
            for _ in range(args.rounds):
                for level in LEVELS:
                    child = [sys.executable, __file__, "--level", level, "--repo", str(repo), "--requests",
                             str(args.requests), "--collector", collector]  # fmt: skip
                    output = subprocess.run(child, capture_output=True, text=True, check=True).stdout
                    results[level].append(float(output.strip().splitlines()[-1]))
        finally:
            receiver.kill()
    off = statistics.median(results["OFF"])
    for level, values in results.items():
        median = statistics.median(values)
        print(
            f"{level:>10}: {median:6.1f} µs/request ({median - off:+5.1f} µs)   runs: {[round(v, 1) for v in values]}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
