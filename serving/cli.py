"""The ``serve`` command, shared by ``python -m serving`` and ``python -m buildsys serve`` (a buildsys.plugins
entry point). Only argparse and the standard library are imported here; the server loads inside ``run``, so
registering the command costs buildsys nothing.
"""

import argparse
import logging
import sys
from pathlib import Path

COMMAND = "serve"
HELP = "serve the built models over gRPC and HTTP/REST (Open Inference Protocol, ONNX Runtime)"
# The names serving.runtime maps to ONNX Runtime settings (a test keeps the two lists equal).
DEVICES = ("auto", "cuda", "cpu")
GRAPH_OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


# A boolean flag's values as tritonserver reads them.
BOOLEANS = {"true": True, "on": True, "1": True, "false": False, "off": False, "0": False}


def _boolean(text: str) -> bool:
    value = BOOLEANS.get(text.strip().lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Adds the serve flags to ``parser``."""
    parser.add_argument(
        "--repository",
        "--model-repository",
        "--model-store",
        dest="repositories",
        action="append",
        metavar="PATH_OR_URL",
        help="model repository (default build-out/models): a folder, or s3://, gs:// or as:// object storage "
        "(mirrored locally; the s3, gcs or azure extra); repeatable, as Triton's --model-repository: a model name "
        "found in more than one is served from none",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: local only)")
    for name in ("grpc", "http", "metrics"):  # tritonserver's per-front-end addresses
        parser.add_argument(f"--{name}-address", metavar="HOST", help=f"address of the {name} port (default: --host)")
    # Triton's ports (HTTP 8000, gRPC 8001, metrics 8002). 0 picks a free port (the front ends' are logged);
    # --no-grpc / --no-http / --no-metrics turn one off.
    parser.add_argument(
        "--port", "--grpc-port", dest="port", type=_non_negative_int, default=8001, help="gRPC port (default 8001)"
    )
    parser.add_argument("--http-port", type=_non_negative_int, default=8000, help="HTTP/REST port (default 8000)")
    parser.add_argument("--no-grpc", action="store_true", help="do not serve gRPC")
    parser.add_argument("--no-http", action="store_true", help="do not serve HTTP/REST")
    # tritonserver's spellings of the same switches, so that a command line written for it runs here.
    for name, what in (("grpc", "gRPC"), ("http", "HTTP/REST"), ("metrics", "Prometheus /metrics")):
        parser.add_argument(
            f"--allow-{name}", type=_boolean, default=True, metavar="BOOL", help=f"serve {what} (default true)"
        )
    parser.add_argument("--device", choices=DEVICES, default="auto", help="auto: CUDA when available")
    runtime = parser.add_argument_group("ONNX Runtime")
    runtime.add_argument(
        "--intra-op-threads",
        type=_non_negative_int,
        help="threads of each execution instance (config.pbtxt's instance_group) for every model (0: the cores "
        "shared among a model's instances; default: each model's config.pbtxt parameter intra_op_thread_count, as "
        "Triton's onnxruntime backend reads it, else 0)",
    )
    runtime.add_argument(
        "--graph-optimization-level",
        choices=GRAPH_OPTIMIZATION_LEVELS,
        help="ONNX Runtime's graph optimizations for every model (default: each model's config.pbtxt "
        "optimization { graph { level } } as Triton's onnxruntime backend reads it, else all)",
    )
    runtime.add_argument(
        "--intra-op-spinning",
        action="store_true",
        help="let idle ONNX Runtime threads spin (lower latency on a dedicated machine, more CPU)",
    )
    batching = parser.add_argument_group("dynamic batching (defaults from each model's config.pbtxt)")
    batching.add_argument("--max-batch-size", type=_positive_int, help="samples per merged model call")
    batching.add_argument(
        "--max-queue-delay-us", type=_non_negative_int, help="how long the oldest request waits for others"
    )
    batching.add_argument("--max-queue-size", type=_positive_int, help="waiting requests per model before UNAVAILABLE")
    batching.add_argument(
        "--cache-config",
        action="append",
        default=[],
        metavar="local,size=BYTES",
        help="keep answers in a response cache of this many bytes, shared by the models whose config.pbtxt has "
        "response_cache { enable: true } (Triton's flag; off by default)",
    )
    repository = parser.add_argument_group("repository")
    repository.add_argument(
        "--model-control-mode",
        choices=("poll", "explicit", "none"),
        default="poll",
        help="poll (default): load every model, pick up changes every --poll-interval, and take load/unload "
        "requests; explicit: load only the --load-model models, then only on load requests; none: load every "
        "model at start and nothing after (Triton's modes)",
    )
    repository.add_argument(
        "--load-model",
        action="append",
        default=[],
        metavar="NAME",
        help="with --model-control-mode explicit, a model to load at start (repeatable; * alone: all of them)",
    )
    repository.add_argument(
        "--poll-interval",
        "--repository-poll-secs",
        dest="poll_interval",
        type=_non_negative_float,
        default=2.0,
        help="seconds between rescans (0: no hot reload; Triton's --repository-poll-secs)",
    )
    repository.add_argument(
        "--disable-auto-complete-config",
        action="store_true",
        help="refuse a model without config.pbtxt, or whose config lists no inputs or outputs, instead of taking them "
        "from its ONNX file (Triton's flag)",
    )
    repository.add_argument(
        "--strict-model-config",
        type=_boolean,
        default=False,
        metavar="BOOL",
        help="true: as --disable-auto-complete-config (Triton's older spelling)",
    )
    repository.add_argument(
        "--model-load-thread-count",
        type=_positive_int,
        help="model versions loaded at once, at start and when new models appear (default 4, as Triton's)",
    )
    repository.add_argument(
        "--version-policy",
        help="versions to serve: latest, latest:N, all or specific:1,3 (default: config.pbtxt's policy)",
    )
    security = parser.add_argument_group("security and operations")
    security.add_argument("--tls-cert", type=Path, help="PEM certificate chain (with --tls-key)")
    security.add_argument("--tls-key", type=Path, help="PEM private key (with --tls-cert)")
    security.add_argument("--auth-token-file", type=Path, help="file holding the bearer token clients must send")
    security.add_argument(
        "--metrics-port", type=_non_negative_int, default=8002, help="Prometheus /metrics port (default 8002)"
    )
    security.add_argument("--no-metrics", action="store_true", help="do not serve Prometheus /metrics")
    security.add_argument(
        "--grace-period",
        "--exit-timeout-secs",
        dest="grace_period",
        type=_non_negative_float,
        default=30.0,
        help="seconds in-flight requests get on SIGTERM (Triton's --exit-timeout-secs)",
    )
    security.add_argument(
        "--max-concurrent-requests",
        type=_positive_int,
        default=1024,
        help="requests in the server at once, all front ends together, before UNAVAILABLE / HTTP 503 "
        "(health and readiness are answered beyond it; default 1024)",
    )
    security.add_argument(
        "--allow-client-shm",
        action="store_true",
        help="let clients on this host register system shared memory regions (/dev/shm) for inputs and outputs, "
        "as Triton's --allow-client-shm=true; off by default, since a region lets a client have the server read "
        "and write any shared memory object this user can open",
    )
    security.add_argument(
        "--strict-readiness",
        type=_boolean,
        default=True,
        metavar="BOOL",
        help="true (default): ready only while every model its policy asks for serves; false: ready whenever the "
        "server answers (Triton's flag)",
    )
    security.add_argument(
        "--exit-on-error",
        type=_boolean,
        default=False,
        metavar="BOOL",
        help="true: stop at start, exit code 2, when a model or version does not load (Triton's default); false "
        "(default here): serve the others, each refusal in the log and RepositoryIndex",
    )
    security.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    # tritonserver's log flags: the logging extension's settings (serving.log_settings) as the server starts.
    security.add_argument("--log-verbose", type=_non_negative_int, metavar="N", help="> 0: the server's DEBUG lines")
    for level in ("info", "warning", "error"):
        security.add_argument(f"--log-{level}", type=_boolean, metavar="BOOL", help=f"write {level} lines or not")
    security.add_argument("--log-format", choices=("default", "ISO8601"), help="ISO8601: ISO 8601 times")
    security.add_argument("--log-file", type=Path, help="write the log to this file instead of standard error")
    security.add_argument(
        "--trace-config",
        action="append",
        default=[],
        metavar="[triton,]SETTING=VALUE",
        help="Triton's request tracing, repeatable: triton,file=PATH (the trace file, fixed at startup), level=OFF|"
        "TIMESTAMPS|TENSORS, rate=N (one request in N), count=N (-1: no limit), triton,log-frequency=N (write every "
        "N traces to PATH.0, PATH.1, ...; 0: to PATH at shutdown); clients change all but the file while it runs",
    )


def _load_models(mode: str, names: list[str]) -> tuple[str, ...]:
    """The models to load at start under explicit model control (Triton's rules for --load-model).

    Raises:
        ValueError: --load-model without explicit model control, or * beside other names.
    """
    if names and mode != "explicit":
        raise ValueError("--load-model is for --model-control-mode explicit; the other modes load every model")
    if "*" in names and len(names) > 1:
        raise ValueError("--load-model=* loads every model and must be the only --load-model")
    return tuple(names)


def _log_changes(args: argparse.Namespace) -> tuple[tuple[str, object], ...]:
    """tritonserver's log flags that were given, as the logging extension's settings they set."""
    given = {
        "log_verbose_level": args.log_verbose,
        "log_info": args.log_info,
        "log_warning": args.log_warning,
        "log_error": args.log_error,
        "log_format": args.log_format,
    }
    return tuple((name, value) for name, value in given.items() if value is not None)


def run(args: argparse.Namespace) -> int:
    """Starts the server with the parsed flags; returns the exit code (2 for a configuration error)."""
    try:
        logging.basicConfig(
            level=args.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            **({"filename": args.log_file} if args.log_file else {"stream": sys.stderr}),
        )
    except OSError as error:
        print(f"serve: error: --log-file {args.log_file}: {error.strerror or error}", file=sys.stderr)
        return 2
    from serving.mirror import is_remote
    from serving.repository import DEFAULT_LOAD_THREADS, BatchingOverrides
    from serving.response_cache import parse_cache_config
    from serving.runtime import RuntimeOptions
    from serving.server import ServerSettings, StartupError, serve
    from serving.tracing import TraceSettings
    from serving.version_policy import VersionPolicy

    try:
        policy = VersionPolicy.parse(args.version_policy) if args.version_policy else None
        settings = ServerSettings(
            repositories=tuple(
                location if is_remote(location) else Path(location)
                for location in args.repositories or ["build-out/models"]
            ),
            host=args.host,
            grpc_host=args.grpc_address,
            http_host=args.http_address,
            metrics_host=args.metrics_address,
            port=None if args.no_grpc or not args.allow_grpc else args.port,
            http_port=None if args.no_http or not args.allow_http else args.http_port,
            runtime=RuntimeOptions(
                device=args.device,
                intra_op_threads=args.intra_op_threads,
                graph_optimization_level=args.graph_optimization_level,
                intra_op_spinning=args.intra_op_spinning,
            ),
            batching=BatchingOverrides(
                max_batch_size=args.max_batch_size,
                max_queue_delay_us=args.max_queue_delay_us,
                max_queue_size=args.max_queue_size,
            ),
            version_policy=policy,
            poll_interval_s=args.poll_interval,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            auth_token_file=args.auth_token_file,
            metrics_port=None if args.no_metrics or not args.allow_metrics else args.metrics_port,
            strict_readiness=args.strict_readiness,
            auto_complete_config=not (args.disable_auto_complete_config or args.strict_model_config),
            exit_on_error=args.exit_on_error,
            grace_period_s=args.grace_period,
            max_concurrent_requests=args.max_concurrent_requests,
            allow_client_shm=args.allow_client_shm,
            log_level=args.log_level,
            log_file=str(args.log_file or ""),
            log_changes=_log_changes(args),
            trace=TraceSettings.from_flags(args.trace_config),
            model_control=args.model_control_mode,
            load_models=_load_models(args.model_control_mode, args.load_model),
            model_load_threads=args.model_load_thread_count or DEFAULT_LOAD_THREADS,
            response_cache_bytes=parse_cache_config(args.cache_config),
        )
        return serve(settings)
    except (ValueError, StartupError) as error:
        print(f"serve: error: {error}", file=sys.stderr)
        return 2
