"""`build-out/models/<name>/index.html`: one page per model, across its versions.

Written after every publish: a table of every version (created, content hash, test accuracy and loss, macro F1,
parameters, hyperparameters) linking its `report.html`, and a plot of test accuracy and loss across versions as an
inline SVG — self-contained, no scripts, no network, openable from disk. The file sits beside the numbered version
folders, where Triton and `serving` look only at numeric entries (`modelrepo.list_versions`). Reads manifests
through `modelrepo.read_manifest`; nothing here imports TensorFlow or matplotlib.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from buildsys.html_page import html_page
from modelrepo import FormatError, Manifest, list_versions, read_manifest, write_atomic

INDEX_FILE = "index.html"
REPORT_FILE = "report.html"  # the report action's file name (buildsys.actions.report imports numpy)
INDEX_STYLE = """\
.charts { display: flex; flex-wrap: wrap; gap: 24px; margin: 8px 0 20px; }
th:nth-child(-n+3), td:nth-child(-n+3), td:nth-child(8) { text-align: left; }
td.bad { color: #c62828; text-align: left; }
"""


def _rows(model_dir: Path) -> list[tuple[int, Manifest | None, str]]:
    """(version, manifest or None, why it is unreadable) for every published version, oldest first."""
    rows: list[tuple[int, Manifest | None, str]] = []
    for version in list_versions(model_dir):
        try:
            rows.append((version, read_manifest(model_dir / str(version)), ""))
        except FormatError as error:  # one broken version must not hide the others
            rows.append((version, None, str(error)))
    return rows


def _svg_series(title: str, points: list[tuple[int, float]], colour: str, width: int = 440, height: int = 200) -> str:
    """A small line chart of (version, value) points with its axis range, as inline SVG."""
    if not points:
        return ""
    left, right, top, bottom = 48, 12, 26, 30
    low, high = min(value for _, value in points), max(value for _, value in points)
    if high - low < 1e-9:
        low, high = low - 0.5 * (abs(low) or 1) * 0.01, high + 0.5 * (abs(high) or 1) * 0.01
    first, last = points[0][0], points[-1][0]

    def x(version: int) -> float:
        return left + (width - left - right) * ((version - first) / (last - first) if last > first else 0.5)

    def y(value: float) -> float:
        return top + (height - top - bottom) * (1 - (value - low) / (high - low))

    path = " ".join(f"{x(v):.1f},{y(value):.1f}" for v, value in points)
    dots = "".join(
        f'<circle cx="{x(v):.1f}" cy="{y(value):.1f}" r="3.5" fill="{colour}"><title>version {v}: {value:.4f}</title>'
        "</circle>"
        for v, value in points
    )
    ticks = "".join(
        f'<text x="{x(v):.1f}" y="{height - 10}" text-anchor="middle" font-size="11">{v}</text>' for v, _ in points
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="{html.escape(title)} by version">'
        f'<text x="{left}" y="16" font-size="13" font-weight="600">{html.escape(title)}</text>'
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="#999"/>'
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#999"/>'
        f'<text x="{left - 6}" y="{top + 4}" text-anchor="end" font-size="11">{high:.4g}</text>'
        f'<text x="{left - 6}" y="{height - bottom}" text-anchor="end" font-size="11">{low:.4g}</text>'
        f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>{dots}{ticks}'
        f'<text x="{(left + width - right) / 2}" y="{height - 0}" text-anchor="middle" font-size="11">version</text>'
        "</svg>"
    )


def render_index(model_dir: Path) -> str:
    """The page for the model in `model_dir` (its name is the folder's)."""
    name = model_dir.name
    rows = _rows(model_dir)
    table = []
    accuracy: list[tuple[int, float]] = []
    loss: list[tuple[int, float]] = []
    for version, manifest, problem in reversed(rows):  # newest first, as a changelog reads
        if manifest is None:
            table.append(f'<tr><td>{version}</td><td colspan="7" class="bad">{html.escape(problem)}</td></tr>')
            continue
        test = manifest.metrics.get("test") or {}
        macro = ((manifest.metrics.get("averages") or {}).get("macro") or {}).get("f1")
        has_report = (model_dir / str(version) / REPORT_FILE).is_file()
        link = f'<a href="{version}/{REPORT_FILE}">report</a>' if has_report else "–"
        cells = [
            str(version),
            html.escape(manifest.created),
            f"<code>{html.escape(manifest.content_hash[:12])}</code>",
            _number(test.get("accuracy")),
            _number(test.get("loss")),
            _number(macro),
            f"{manifest.params:,}" if manifest.params is not None else "–",
            f"<code>{html.escape(json.dumps(manifest.hparams, sort_keys=True))}</code>",
            link,
        ]
        table.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
        if isinstance(test.get("accuracy"), int | float):
            accuracy.append((version, float(test["accuracy"])))
        if isinstance(test.get("loss"), int | float):
            loss.append((version, float(test["loss"])))
    accuracy.reverse()
    loss.reverse()
    label = next((m.label for _, m, _ in rows if m is not None and m.label), name)
    headers = ["version", "created", "content hash", "test accuracy", "test loss", "macro F1", "parameters",
               "hyperparameters", ""]  # fmt: skip
    body = f"""<h1>{html.escape(name)}</h1>
<p class="sub">{html.escape(label)} · {len(rows)} published version(s);
<code>python -m buildsys diff {html.escape(name)}</code> compares the two latest.</p>
<div class="charts">
{_svg_series("test accuracy", accuracy, "#1f5fbf")}
{_svg_series("test loss", loss, "#e07b00")}
</div>
<table><thead><tr>{"".join(f"<th>{h}</th>" for h in headers)}</tr></thead>
<tbody>{"".join(table)}</tbody></table>"""
    return html_page(f"{name} — buildsys versions", body, INDEX_STYLE)


def _number(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) and not isinstance(value, bool) else "–"


def write_index(model_dir: Path) -> Path:
    """Writes `model_dir/index.html` atomically (a reader sees the old page or the new one); returns its path."""
    path = model_dir / INDEX_FILE
    write_atomic(path, render_index(model_dir))
    return path
