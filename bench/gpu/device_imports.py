"""For the CPU dry run: refuse, here, every import the device machine could not satisfy.

The device has only its image's packages (bench/gpu/device_packages.txt) and what the bundle carries (its
``site/``), and nothing can be installed there once a GPU minute is running. This writes a ``sitecustomize.py``
that, put first on PYTHONPATH, hides from every process of the dry run (the server, serve_bench, predict) each
top-level module outside the standard library, the repository, the bundle and the device's packages: it is
missing as it would be there (an optional import falls back, a needed one fails), and its name is logged to
``hidden.txt`` so the run can say what to add to bench/gpu/requirements.txt.

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
"""Written by bench/gpu/device_imports.py (CPU dry run only): modules the GPU device would not have are hidden.

Every finder but the built-in and frozen ones is wrapped, so a hidden module is missing exactly as it would be
there: ``import`` raises ModuleNotFoundError and ``importlib.util.find_spec`` returns None. Each hidden name is
appended to hidden.txt beside this file.
"""
import sys
from pathlib import Path

ALLOWED = frozenset({allowed!r})
_LOG = Path(__file__).with_name("hidden.txt")


class _DeviceImports:
    def __init__(self, finders):
        self.finders = finders

    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top not in ALLOWED:
            with open(_LOG, "a") as log:
                log.write(top + "\\n")
            return None
        for finder in self.finders:
            find = getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find else None
            if spec is not None:
                return spec
        return None

    def invalidate_caches(self):
        for finder in self.finders:
            if hasattr(finder, "invalidate_caches"):
                finder.invalidate_caches()


_kept = [finder for finder in sys.meta_path if getattr(finder, "__name__", "") in ("BuiltinImporter", "FrozenImporter")]
sys.meta_path[:] = [*_kept, _DeviceImports([finder for finder in sys.meta_path if finder not in _kept])]
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
    repository = top_level_names(PROJECT_ROOT) | top_level_names(PROJECT_ROOT / "bench") | top_level_names(HERE)
    allowed |= repository | top_level_names(site)
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
