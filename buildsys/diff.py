"""`buildsys diff`: two published versions of a model side by side, from their manifests and files only.

Like `git diff` for builds: what changed between version A and version B — metrics overall and per class,
hyperparameters, data fingerprints and sizes, parameter count, training options, export parity, the sizes of the
files on disk, and the timings — as aligned text or as JSON. Manifests are read through `modelrepo.read_manifest`
(one type check for every reader); nothing here imports TensorFlow.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from modelrepo import Manifest, read_manifest

SECTIONS = ("metrics", "per class", "hyperparameters", "data", "model", "options", "parity", "sizes", "timings")


def _flat(prefix: str, value: Any) -> dict[str, Any]:
    """Nested dicts as `prefix.key` rows; lists and scalars are leaves."""
    if isinstance(value, dict):
        rows: dict[str, Any] = {}
        for key, inner in value.items():
            rows.update(_flat(f"{prefix}.{key}" if prefix else str(key), inner))
        return rows
    return {prefix: value}


def _sizes(version_dir: Path) -> dict[str, int]:
    """Bytes on disk of each top-level entry of the version folder (folders summed), and the total."""
    sizes = {}
    for entry in sorted(version_dir.iterdir()):
        files = [entry] if entry.is_file() else [path for path in entry.rglob("*") if path.is_file()]
        sizes[entry.name] = sum(path.stat().st_size for path in files)
    sizes["total"] = sum(sizes.values())
    return sizes


def _sections(manifest: Manifest, version_dir: Path) -> dict[str, dict[str, Any]]:
    """One version's comparable facts, grouped as the diff shows them."""
    metrics = manifest.metrics
    overall = {f"test {name}": value for name, value in (metrics.get("test") or {}).items()}
    if "averages" in metrics:
        overall["macro F1"] = metrics["averages"]["macro"]["f1"]
        overall["weighted F1"] = metrics["averages"]["weighted"]["f1"]
    if metrics.get("roc_auc_macro") is not None:
        overall["ROC AUC (macro)"] = metrics["roc_auc_macro"]
    per_class = {}
    for row in metrics.get("per_class") or []:
        for score in ("precision", "recall", "f1"):
            per_class[f"{row['class']} {score}"] = row[score]
    extra = manifest.extra
    options = {
        "strategy": (extra.get("strategy") or {}).get("description") or (extra.get("strategy") or {}).get("name"),
        **_flat("", extra.get("training") or {}),
        **{f"{package} version": version for package, version in manifest.framework_versions.items()},
    }
    return {
        "metrics": overall,
        "per class": per_class,
        "hyperparameters": dict(manifest.hparams),
        "data": {
            "fingerprint": manifest.data_fingerprint,
            **{f"{split} images": count for split, count in (extra.get("data_sizes") or {}).items()},
        },
        "model": {
            "parameters": manifest.params,
            "layers": len(extra.get("model_summary") or []),
            "seed": manifest.seed,
            "content hash": manifest.content_hash,
            "created": manifest.created,
        },
        "options": options,
        "parity": {key: value for key, value in manifest.parity.items() if key != "samples"},
        "sizes": _sizes(version_dir),
        "timings": dict(manifest.timings),
    }


def _change(old: Any, new: Any) -> float | None:
    numbers = (int, float)
    if isinstance(old, numbers) and isinstance(new, numbers) and not isinstance(old, bool | str):
        return new - old
    return None


def diff_versions(model_dir: Path, first: int, second: int) -> dict[str, Any]:
    """Compares versions `first` and `second` of the model in `model_dir`; the JSON form `--json` prints.

    Every row has both values (None where a version lacks it), `changed`, and `change` (second − first) for
    numbers. Raises `modelrepo.FormatError` for an unreadable manifest.
    """
    left, right = (read_manifest(model_dir / str(version)) for version in (first, second))
    facts = [_sections(left, model_dir / str(first)), _sections(right, model_dir / str(second))]
    sections: dict[str, list[dict[str, Any]]] = {}
    for section in SECTIONS:
        a, b = facts[0][section], facts[1][section]
        rows = []
        for key in [*a, *(key for key in b if key not in a)]:
            old, new = a.get(key), b.get(key)
            rows.append({"name": key, "a": old, "b": new, "changed": old != new, "change": _change(old, new)})
        sections[section] = rows
    return {"name": left.name, "label": left.label or right.label, "a": first, "b": second, "sections": sections}


def _shown(value: Any, section: str) -> str:
    if value is None:
        return "–"
    if section == "sizes":
        return _bytes(value)
    if isinstance(value, bool | str):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.3g}" if section == "parity" else f"{value:.2f}s" if section == "timings" else f"{value:.4f}"
    return json.dumps(value)


def _bytes(count: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:,.0f} {unit}" if unit == "B" else f"{count:,.1f} {unit}"
        count /= 1024
    return f"{count} GB"


def _shown_change(row: dict[str, Any], section: str) -> str:
    change = row["change"]
    if not row["changed"]:
        return ""
    if change is None:
        return "changed"
    if section == "sizes":
        return ("+" if change >= 0 else "-") + _bytes(abs(int(change)))
    if section == "timings":
        return f"{change:+.2f}s"
    if isinstance(change, int):
        return f"{change:+,}"
    return f"{change:+.3g}" if section == "parity" else f"{change:+.4f}"


def format_diff(diff: dict[str, Any], *, all_rows: bool = False) -> str:
    """Aligned text: a header, then per section the rows that differ (every row with `all_rows`).

    Hashes and fingerprints are shortened to 12 characters, as `git log --oneline` does.
    """
    lines = [f"{diff['label'] or diff['name']}: version {diff['a']} → version {diff['b']}"]
    table: list[tuple[str, str, str, str]] = []
    for section, rows in diff["sections"].items():
        shown = [row for row in rows if all_rows or row["changed"]]
        if not shown:
            continue
        table.append((section, "", "", ""))
        for row in shown:
            a, b = (_shown(row[side], section) for side in ("a", "b"))
            if row["name"] in ("fingerprint", "content hash"):
                a, b = a[:12], b[:12]
            table.append((f"  {row['name']}", a, b, _shown_change(row, section)))
    if not table:
        return "\n".join([*lines, "  no differences"])
    headers = ("", f"v{diff['a']}", f"v{diff['b']}", "change")
    widths = [max(len(cells[column]) for cells in [headers, *table]) for column in range(4)]
    lines.append(f"{'':<{widths[0]}}  {headers[1]:>{widths[1]}}  {headers[2]:>{widths[2]}}  change")
    for name, a, b, change in table:
        if not a and not b:
            lines.append(name)
        else:
            lines.append(f"{name:<{widths[0]}}  {a:>{widths[1]}}  {b:>{widths[2]}}  {change}".rstrip())
    return "\n".join(lines)
