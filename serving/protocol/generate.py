"""Regenerates the Python stubs in this folder from the .proto files beside them.

Run from anywhere with ``python -m serving.protocol.generate``. It needs a grpcio-tools whose bundled protoc
is not newer than the protobuf runtime (protobuf 6.x needs grpcio-tools <= 1.80; 1.82 emits protobuf 7 code),
for example without touching the environment: ``pip install --no-deps --target /tmp/grpc-tools
grpcio-tools==1.80.0`` then ``PYTHONPATH=/tmp/grpc-tools python -m serving.protocol.generate``. protoc writes
flat imports (``import model_config_pb2``); they are rewritten to package imports so the stubs work as
``serving.protocol.*`` without putting this folder on ``sys.path``. The .proto files are compiled with ``-I``
pointing at this folder so their descriptor file names stay ``model_config.proto`` and ``grpc_service.proto``,
exactly as in tritonclient's stubs: the two sets then share one descriptor pool.
"""

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE = "serving.protocol"
STUBS_WITH_SERVICE = ["grpc_service.proto"]
STUBS_MESSAGES_ONLY = ["model_config.proto"]


def _protoc(args: list[str]) -> None:
    """Runs grpc_tools' bundled protoc, whose version matches the protobuf runtime it was built for."""
    from grpc_tools import protoc

    status = protoc.main(["protoc", f"-I{HERE}", *args])
    if status != 0:
        raise SystemExit(f"protoc failed with status {status} for {args}")


def _fix_imports(path: Path) -> None:
    text = path.read_text()
    fixed = re.sub(r"^import (\w+_pb2) as", rf"from {PACKAGE} import \1 as", text, flags=re.MULTILINE)
    path.write_text(fixed)


def _check_runtime_accepts(path: Path) -> None:
    """Refuses stubs the installed protobuf runtime would reject at import time, naming both versions."""
    import google.protobuf

    found = re.search(r"^# Protobuf Python Version: (\d+)\.(\d+)", path.read_text(), flags=re.MULTILINE)
    if found is None:
        raise SystemExit(f"{path.name}: no 'Protobuf Python Version' line; unexpected protoc output")
    gencode = (int(found.group(1)), int(found.group(2)))
    runtime = tuple(int(part) for part in google.protobuf.__version__.split(".")[:2])
    if gencode > runtime:
        raise SystemExit(
            f"{path.name}: protoc emitted protobuf {gencode[0]}.{gencode[1]} code but the runtime is "
            f"{google.protobuf.__version__}; use an older grpcio-tools (see this module's docstring)"
        )


def main() -> int:
    _protoc([f"--python_out={HERE}", *STUBS_MESSAGES_ONLY])
    _protoc([f"--python_out={HERE}", f"--grpc_python_out={HERE}", *STUBS_WITH_SERVICE])
    for stub in sorted(HERE.glob("*_pb2*.py")):
        _fix_imports(stub)
        if stub.name.endswith("_pb2.py"):
            _check_runtime_accepts(stub)
        print(f"generated {stub.relative_to(HERE.parent.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
