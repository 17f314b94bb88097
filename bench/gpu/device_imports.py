"""For the CPU dry run: refuse, here, every import the device machine could not satisfy.

The device has only its image's packages (bench/gpu/device_packages.txt) and what the bundle carries (its
``site/``), and nothing can be installed there once a GPU minute is running. This writes a ``sitecustomize.py``
that, put first on PYTHONPATH, makes every process of the dry run (the server, serve_bench, predict) raise
ImportError for a top-level module outside the standard library, the repository, the bundle and the device's
packages, with a line saying what to add to bench/gpu/requirements.txt.

    python bench/gpu/device_imports.py --write-guard DIR --site BUNDLE/site
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT_ROOT = HERE.parents[1]

GUARD = '''\
"""Written by bench/gpu/device_imports.py: refuses imports the GPU device would not have (CPU dry run only)."""
import sys

ALLOWED = frozenset({allowed!r})


class _DeviceImports:
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if path is None and top not in ALLOWED:
            raise ImportError(
                f"{{top}} is neither on the device image nor carried: add its distribution to "
                "bench/gpu/requirements.txt (bench/gpu/device_packages.txt lists the device's)"
            )
        return None


sys.meta_path.insert(0, _DeviceImports())
'''


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def top_level_names(folder: Path) -> set[str]:
    """Importable top-level names in a folder: packages, modules and extension modules."""
    names = set()
    for entry in folder.iterdir():
        if entry.is_dir() and not entry.name.endswith((".dist-info", ".data")) and entry.name != "bin":
            names.add(entry.name)
        elif entry.suffix in (".py", ".so"):
            names.add(entry.name.split(".")[0])
    return names


def allowed_modules(site: Path) -> set[str]:
    """Standard library, the repository's own top-level names, the bundle's, and every module here whose
    distribution the device image has."""
    lines = (line.strip() for line in (HERE / "device_packages.txt").read_text().splitlines())
    device = {normalize(line) for line in lines if line and not line.startswith("#")}
    allowed = set(sys.stdlib_module_names) | set(sys.builtin_module_names) | {"sitecustomize", "__main__"}
    allowed |= top_level_names(PROJECT_ROOT) | top_level_names(HERE) | top_level_names(site)
    for module, distributions in importlib.metadata.packages_distributions().items():
        if any(normalize(distribution) in device for distribution in distributions):
            allowed.add(module)
    return allowed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-guard", type=Path, required=True, help="folder for sitecustomize.py")
    parser.add_argument("--site", type=Path, required=True, help="the bundle's site/ folder")
    args = parser.parse_args()
    args.write_guard.mkdir(parents=True, exist_ok=True)
    guard = GUARD.format(allowed=sorted(allowed_modules(args.site)))
    (args.write_guard / "sitecustomize.py").write_text(guard)
    return 0


if __name__ == "__main__":
    sys.exit(main())
