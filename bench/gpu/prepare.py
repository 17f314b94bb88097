"""Prepares, on this CPU machine, everything the GPU bench needs on a device machine that can download nothing.

1. Builds the two benchmark models with buildsys (the shipped Fashion-MNIST MLP and CIFAR-10 CNN definitions,
   their data source swapped for generated images and training cut to one epoch, as bench/prepare_models.py does
   for the CPU serving bench) in a workspace kept under ``.carry/build`` (so a second run is a no-op build), and
   copies what serving and ``predict`` read (definitions, data, config.pbtxt,
   labels, manifest.json, model.onnx) into the bundle's ``workspace/``.
2. Downloads onnxruntime-gpu (the CUDA 13 build) and the other packages of bench/gpu/requirements.txt for CPython
   3.12 on x86-64 Linux, drops the dependencies the device already has (bench/gpu/device_packages.txt) and
   installs the rest into the bundle's ``site/`` (what PYTHONPATH points at there).
3. Tars, zstd-compresses and cuts the bundle into parts small enough that each device-tool call (the working tree
   plus what it carries: 64 MiB) fits, puts the ``zstandard`` wheel (no zstd binary there) and ``manifest.json``
   in ``boot/``, and writes the exact device-call sequence into the manifest and on stdout.

Everything lands in bench/gpu/.carry/ (gitignored). Run it in the checkout the device tool sends (the session's
own checkout), from the repository root:

    .venv/bin/python bench/gpu/prepare.py              # models + wheels + parts + manifest
    .venv/bin/python bench/gpu/prepare.py --no-bundle  # models only, for a CUDA machine with plain pip

bench/gpu/README.md gives the device-call sequence and the plain-pip way.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import carry
import synthetic

HERE = Path(__file__).resolve().parent
PROJECT_ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))
from prepare_models import benchmark_definition  # noqa: E402  (bench/, beside this folder)

CARRY_DIR = HERE / ".carry"
MODELS = ("fashion_mnist_mlp", "cifar10_cnn")
DATA = {"fashion_mnist_mlp": ("fashion", 2000, 500), "cifar10_cnn": ("cifar", 800, 200)}
# Files of a published version that serving and predict read; the SavedModel, weights and report stay here.
SERVED_FILES = ("manifest.json", "model.onnx")
MODEL_FILES = ("config.pbtxt", "labels.txt")
DEVICE_PYTHON = ("3.12", "cp")
# pip matches manylinux tags exactly; these cover every wheel the requirements resolve to.
DEVICE_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
                    "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")  # fmt: skip
CALL_LIMIT = 64 << 20
MARGIN = 2 << 20  # for files the working tree gains between prepare and the calls
MAX_PART = 60 << 20
DEVICE_WORK = "/tmp/gpu-bench"
STEM = "bundle.tar.zst"


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_names(path: Path) -> list[str]:
    """Non-comment lines of a requirements-style file."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def wheel_name(path: Path) -> str:
    return normalize(path.name.split("-", 1)[0])


def pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", *args]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"prepare: pip {args[0]} failed ({result.returncode}):\n{result.stderr[-3000:]}")


def platform_flags() -> list[str]:
    flags = ["--only-binary=:all:", "--python-version", DEVICE_PYTHON[0], "--implementation", DEVICE_PYTHON[1]]
    for platform in DEVICE_PLATFORMS:
        flags += ["--platform", platform]
    return flags


def build_models(build: Path) -> dict[str, dict]:
    """Builds both models with buildsys in ``build`` (a workspace); returns each target's build summary."""
    (build / "model_defs").mkdir(parents=True, exist_ok=True)
    for target in MODELS:
        dataset, train, test = DATA[target]
        definition = build / "model_defs" / f"{target}.py"
        text = benchmark_definition(target, f"data/{dataset}.npz")
        if not definition.exists() or definition.read_text() != text:
            definition.write_text(text)
        data = build / "data" / f"{dataset}.npz"
        if not data.exists():  # the same seeds give the same file; keeping it keeps the no-op build a no-op
            synthetic.write_npz(dataset, data, train, test)
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, "-m", "buildsys", "build", *MODELS, "--workspace", str(build), "--quiet", "--json"],
        cwd=build, env=env, capture_output=True, text=True,
    )  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(f"prepare: the model build failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return {summary["label"].rsplit(":", 1)[-1]: summary for summary in json.loads(result.stdout)["targets"]}


def stage_workspace(build: Path, workspace: Path) -> dict[str, dict]:
    """Copies the definitions, their data and the latest version's served files into ``workspace``."""
    shutil.copytree(build / "model_defs", workspace / "model_defs")
    shutil.copytree(build / "data", workspace / "data")
    models = {}
    for target in MODELS:
        source = build / "build-out" / "models" / target
        version = max(int(path.name) for path in source.iterdir() if path.name.isdigit())
        destination = workspace / "build-out" / "models" / target
        (destination / str(version)).mkdir(parents=True)
        for name in MODEL_FILES:
            shutil.copy2(source / name, destination / name)
        manifest = json.loads((source / str(version) / "manifest.json").read_text())
        for name in SERVED_FILES:
            shutil.copy2(source / str(version) / name, destination / str(version) / name)
        models[target] = {"version": version, "params": manifest.get("params"), "hash": manifest["content_hash"]}
    return models


def download_wheels(wheels: Path, boot: Path) -> tuple[list[Path], dict[str, str]]:
    """Downloads the requirements with their dependencies; returns the wheels to carry and what each one is.

    A dependency the device already has is left out (its version there is what the device's other packages were
    tested with); each package requirements.txt names is carried whatever the device has.
    """
    wanted = read_names(HERE / "requirements.txt")
    named = {normalize(re.split(r"[\[=<>!~; ]", line, maxsplit=1)[0]) for line in wanted}
    on_device = {normalize(name) for name in read_names(HERE / "device_packages.txt")}
    wheels.mkdir(parents=True, exist_ok=True)
    for stale in wheels.glob("*.whl"):
        stale.unlink()
    constraints = PROJECT_ROOT / "constraints.txt"
    pip("download", "-q", "-c", str(constraints), *platform_flags(), "-d", str(wheels), *wanted)
    zstandard_version = carry.zstandard.__version__  # the same version that packs here unpacks there
    boot.mkdir(parents=True, exist_ok=True)
    for stale in boot.glob("*.whl"):
        stale.unlink()
    pip("download", "-q", "--no-deps", *platform_flags(), "-d", str(boot), f"zstandard=={zstandard_version}")
    carried, skipped = [], []
    for path in sorted(wheels.glob("*.whl")):
        (carried if wheel_name(path) in named or wheel_name(path) not in on_device else skipped).append(path)
    names = {path.name: "carried" for path in carried} | {path.name: "on the device" for path in skipped}
    return carried, names


def tree_bytes() -> int:
    """What the device tool sends besides the carried paths: tracked and untracked-not-ignored files."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=PROJECT_ROOT, capture_output=True, check=True,
    ).stdout  # fmt: skip
    paths = [PROJECT_ROOT / name for name in listed.decode().split("\0") if name]
    return sum(path.stat().st_size for path in paths if path.is_file() and not path.is_symlink())


def relative(path: Path) -> str:
    return str(path.relative_to(PROJECT_ROOT))


def device_calls(description: dict, parts_dir: Path, boot: Path, boot_first: bool) -> list[dict]:
    """One call per part: each earlier one moves what it carries out of the checkout into DEVICE_WORK, the last
    one carries the last part and runs the bench. boot/ travels with the last part, or first on its own when the
    two would not fit in one call."""
    parts = [relative(parts_dir / part["name"]) for part in description["parts"]]
    calls = []
    if boot_first:
        command = f"mkdir -p {DEVICE_WORK} && rm -rf {DEVICE_WORK}/boot && mv {relative(boot)} {DEVICE_WORK}/boot"
        calls.append({"carry": [relative(boot)], "command": command + f" && ls -l {DEVICE_WORK}/boot", "timeout_s": 60})
    for part in parts[:-1]:
        command = f"mkdir -p {DEVICE_WORK}/parts && mv {part} {DEVICE_WORK}/parts/ && ls -l {DEVICE_WORK}/parts"
        calls.append({"carry": [part], "command": command, "timeout_s": 60})
    last = [parts[-1]] if boot_first else [parts[-1], relative(boot)]
    calls.append({"carry": last, "command": "bash bench/gpu/run_on_device.sh", "timeout_s": 540})
    return calls


def folder_bytes(path: Path) -> int:
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-bundle", action="store_true", help="build the models only (a CUDA machine with pip)")
    parser.add_argument("--part-mib", type=int, help="part size in MiB (default: the most each call fits, <= 60)")
    parser.add_argument("--level", type=int, default=9, help="zstd level (19 saves ~1 %% at 10x the time)")
    args = parser.parse_args()
    started = time.monotonic()

    build, stage = CARRY_DIR / "build", CARRY_DIR / "stage"
    summaries = build_models(build)
    shutil.rmtree(stage, ignore_errors=True)
    models = stage_workspace(build, stage / "workspace")
    built = ", ".join(f"{name} v{info['version']}" for name, info in models.items())
    print(f"models: {built} in {stage / 'workspace'}")
    if args.no_bundle:
        return 0

    boot, parts_dir = CARRY_DIR / "boot", CARRY_DIR / "parts"
    carried, wheel_notes = download_wheels(CARRY_DIR / "wheels", boot)
    pip("install", "-q", "--no-deps", "--no-compile", "--no-index", "--target", str(stage / "site"),
        *platform_flags(), *map(str, carried))  # fmt: skip
    print(f"site: {len(carried)} wheels installed into {stage}/site ({folder_bytes(stage / 'site') / 1e6:.0f} MB)")

    boot_bytes = folder_bytes(boot) + 16_384  # with the manifest written below
    tree = tree_bytes()
    room = CALL_LIMIT - MARGIN - tree
    part_bytes = args.part_mib << 20 if args.part_mib else min(MAX_PART, room >> 20 << 20)
    description = carry.pack(stage, parts_dir, STEM, part_bytes, args.level)
    last_part = description["parts"][-1]["size"]
    calls = device_calls(description, parts_dir, boot, boot_first=last_part + boot_bytes > room)
    sizes = {relative(parts_dir / part["name"]): part["size"] for part in description["parts"]}
    for call in calls:
        call["bytes_with_tree"] = sum(sizes.get(path, boot_bytes) for path in call["carry"]) + tree
        if call["bytes_with_tree"] > CALL_LIMIT - MARGIN // 2:
            raise SystemExit(
                f"prepare: a call would send {call['bytes_with_tree'] / 2**20:.1f} MiB (the working tree is "
                f"{tree / 2**20:.1f} MiB of it); the device tool takes 64 MiB: use a smaller --part-mib"
            )
    manifest = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "bundle": description,
        "device_work": DEVICE_WORK,
        "part_bytes": part_bytes,
        "tree_bytes": tree,
        "models": models,
        "builds": {name: summary.get("status") for name, summary in summaries.items()},
        "wheels": wheel_notes,
        "zstandard_wheel": [path.name for path in boot.glob("*.whl")],
        "calls": calls,
    }
    carry_manifest = boot / "manifest.json"
    carry_manifest.write_text(json.dumps(manifest, indent=2) + "\n")

    compressed, count = description["compressed_bytes"] / 1e6, len(description["parts"])
    print(f"bundle: {count} parts, {compressed:.1f} MB compressed, parts of {part_bytes >> 20} MiB; "
          f"tree {tree / 2**20:.1f} MiB; {time.monotonic() - started:.0f} s")  # fmt: skip
    print("device calls, in order (each within 30 s of the previous so the machine stays warm):")
    for number, call in enumerate(calls, 1):
        size = f"{call['bytes_with_tree'] / 2**20:.1f} MiB"
        print(f"  {number}. carry={json.dumps(call['carry'])} timeout_s={call['timeout_s']} ({size})")
        print(f"     command: {call['command']}")
    print(f"manifest: {relative(carry_manifest)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
