"""The local cache's bookkeeping: what the output tree holds (`cache stats`) and what may safely go (`cache gc`).

The output tree is the local cache: every published version, the training checkpoints of unfinished builds, cached
transfer features, rejected candidates and staging folders. `gc` removes only what can be made again or was left
by a dead process, in this order: staging folders of dead builds; published versions older than the newest `keep`
of each model; then, while the tree is above `max_size`, the oldest older versions across models, cached features
and rejected candidates. It never removes a model's newest version (servers load it, config.pbtxt describes it,
dependents build on it), work folders (an interrupted build resumes from them — `clean LABEL` removes them), tuning
searches, or the version high-water marks and locks. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from buildsys.errors import BuildsysError
from buildsys.store import OutputTree, _pid_alive
from modelrepo import MODEL_NAME, FormatError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
SECTIONS = ("work", "features", "rejected", "tuning")


def parse_size(text: str) -> int:
    """`500M`, `2G`, `1.5GiB` or a number of bytes → bytes (binary units, as `du -h` prints them)."""
    match = _SIZE.match(text)
    if not match:
        raise BuildsysError(f"--max-size expects a size such as 500M, 2G or 1.5GiB; received {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def folder_size(path: Path) -> int:
    """Bytes of the regular files under `path` (or of `path` itself), symbolic links not followed."""
    if path.is_file() or path.is_symlink():
        return path.lstat().st_size
    total = 0
    for directory, _, files in os.walk(path):
        for name in files:
            total += (Path(directory) / name).lstat().st_size
    return total


def human(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


@dataclass
class VersionUsage:
    name: str
    version: int
    size: int
    origin: str  # "built" | "fetched" | "unknown"


@dataclass
class Usage:
    """What the output tree holds, by kind, in bytes."""

    versions: list[VersionUsage] = field(default_factory=list)
    sections: dict[str, tuple[int, int]] = field(default_factory=dict)  # kind -> (entries, bytes)
    dead_staging: list[tuple[Path, int]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return (
            sum(v.size for v in self.versions)
            + sum(size for _, size in self.sections.values())
            + sum(size for _, size in self.dead_staging)
        )

    def to_json(self) -> dict[str, Any]:
        models: dict[str, dict[str, Any]] = {}
        for item in self.versions:
            model = models.setdefault(item.name, {"versions": [], "bytes": 0})
            model["versions"].append({"version": item.version, "bytes": item.size, "origin": item.origin})
            model["bytes"] += item.size
        return {
            "models": models,
            **{kind: {"entries": count, "bytes": size} for kind, (count, size) in self.sections.items()},
            "staging_leftovers": {"entries": len(self.dead_staging), "bytes": sum(s for _, s in self.dead_staging)},
            "total_bytes": self.total,
        }

    def text(self) -> str:
        lines = []
        names = sorted({item.name for item in self.versions})
        for name in names:
            mine = [item for item in self.versions if item.name == name]
            fetched = sum(item.origin == "fetched" for item in mine)
            size = human(sum(item.size for item in mine))
            lines.append(
                f"{name:<24} {len(mine):>3} version(s) {size:>10}  newest {mine[-1].version}"
                + (f", {fetched} fetched from a remote cache" if fetched else "")
            )
        for kind, (count, size) in self.sections.items():
            lines.append(f"{kind + '/':<24} {count:>3} entr{'y' if count == 1 else 'ies':<7}  {human(size):>10}")
        leftovers = sum(size for _, size in self.dead_staging)
        lines.append(f"{'staging leftovers':<24} {len(self.dead_staging):>3} folder(s)   {human(leftovers):>10}")
        lines.append(f"{'total':<24} {'':>15} {human(self.total):>10}")
        return "\n".join(lines)


def _origin(tree: OutputTree, name: str, version: int) -> str:
    try:
        origin = tree.manifest(name, version).extra.get("origin")
    except (BuildsysError, FormatError):
        return "unknown"
    return origin.get("kind", "unknown") if isinstance(origin, dict) else "built"


def usage(tree: OutputTree) -> Usage:
    """Measures the output tree (reads only)."""
    found = Usage()
    if tree.models.is_dir():
        for model in sorted(tree.models.iterdir()):
            if model.is_dir() and MODEL_NAME.match(model.name):
                for version in tree.versions(model.name):
                    size = folder_size(model / str(version))
                    found.versions.append(VersionUsage(model.name, version, size, _origin(tree, model.name, version)))
    for kind in SECTIONS:
        owners = _children(tree.root / kind)  # tuning/<name>/ is one search; the others hold entries per owner
        entries = owners if kind == "tuning" else [e for owner in owners if owner.is_dir() for e in _children(owner)]
        found.sections[kind] = (len(entries), sum(folder_size(entry) for entry in entries))
    for owner in _children(tree.root / "staging"):
        for child in _children(owner):
            pid = child.name.split("-", 1)[0]
            if not pid.isdigit() or not _pid_alive(int(pid)):
                found.dead_staging.append((child, folder_size(child)))
    return found


def _children(folder: Path) -> list[Path]:
    return sorted(folder.iterdir()) if folder.is_dir() else []


@dataclass(frozen=True)
class Removal:
    path: Path
    size: int
    reason: str


def gc(tree: OutputTree, keep: int | None = None, max_size: int | None = None, dry_run: bool = False) -> list[Removal]:
    """Removes what the module docstring lists, oldest first; returns what was (or, with `dry_run`, would be)
    removed. Without `keep` and `max_size` only dead builds' staging folders go.

    Raises:
        BuildsysError: for `keep` below 1 (a model's newest version is never removed).
    """
    if keep is not None and keep < 1:
        raise BuildsysError(f"--keep must be at least 1 (a model's newest version is never removed); received {keep}")
    found = usage(tree)
    plan = [Removal(path, size, "staging folder of a dead build") for path, size in found.dead_staging]
    by_model: dict[str, list[VersionUsage]] = {}
    for item in found.versions:
        by_model.setdefault(item.name, []).append(item)
    older = sorted(
        (item for items in by_model.values() for item in items[:-1]), key=lambda item: (item.version, item.name)
    )
    doomed: list[VersionUsage] = []
    if keep is not None:
        doomed = [item for items in by_model.values() for item in items[: max(len(items) - keep, 0)]]
    remaining = found.total - sum(r.size for r in plan) - sum(item.size for item in doomed)
    if max_size is not None:
        for item in older:
            if remaining <= max_size:
                break
            if item not in doomed:
                doomed.append(item)
                remaining -= item.size
    for item in sorted(doomed, key=lambda item: (item.name, item.version)):
        path = tree.model_dir(item.name) / str(item.version)
        plan.append(Removal(path, item.size, f"{item.name} version {item.version} (not the newest)"))
    if max_size is not None:
        for kind in ("features", "rejected"):
            for owner in _children(tree.root / kind):
                for entry in _children(owner):
                    if remaining <= max_size:
                        break
                    size = folder_size(entry)
                    plan.append(Removal(entry, size, f"{kind} cache entry"))
                    remaining -= size
    if dry_run:
        return plan
    for removal in plan:
        if removal.path.parent.parent == tree.models:
            tree.remove_version(removal.path.parent.name, int(removal.path.name))
        elif removal.path.is_dir():
            shutil.rmtree(removal.path, ignore_errors=True)
        else:
            removal.path.unlink(missing_ok=True)
    return plan
