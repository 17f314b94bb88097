"""The report action: classification metrics on the test split, and `report.html` in the version folder.

The build predicts the test split once (the same predictions the parity check compares against); from them this
module computes the confusion matrix, per-class precision/recall/F1/support with macro and weighted averages and
one-vs-rest ROC AUC and curves (scikit-learn), and writes one self-contained HTML page — every figure embedded as a
`data:` URI — plus the PNGs it embeds under `report/`, into the staging folder so that the report moves with its
version. `summary_text` serves `python -m buildsys report`, which only reads files. Nothing here imports
TensorFlow; matplotlib and scikit-learn are imported only when a report is computed.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from buildsys.html_page import html_page
from buildsys.store import write_atomic

REPORT_FILE = "report.html"
FIGURES_DIR = "report"
GRID_IMAGES = 32
MISTAKES = 16  # at most half the grid, so that it also shows what right looks like
REPORT_STYLE = """\
h2 { font-size: 19px; margin: 32px 0 6px; border-bottom: 1px solid #dde2ea; padding-bottom: 4px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { background: #f3f6fb; border-radius: 8px; padding: 10px 16px; min-width: 130px; }
.card .value { font-size: 22px; font-weight: 600; }
.card .name { font-size: 12px; color: #5b6475; }
th:first-child, td:first-child { text-align: left; }
tr.average td { font-weight: 600; background: #f7f8fa; }
table.details td { text-align: left; font-family: ui-monospace, monospace; font-size: 13px; word-break: break-all; }
img { max-width: 100%; height: auto; display: block; }
.side { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
.side img { max-width: 400px; }
.note { color: #5b6475; font-size: 14px; margin: 2px 0 8px; }
.gate { border-radius: 8px; padding: 10px 16px; margin: 12px 0; }
.gate.passed { background: #e8f1fc; border-left: 5px solid #1f5fbf; }
.gate.rejected { background: #fdecea; border-left: 5px solid #c62828; }
.gate ul { margin: 4px 0 0; }
.legend-blue { color: #1f5fbf; font-weight: 600; } .legend-red { color: #c62828; font-weight: 600; }
"""


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, per-class and averaged precision/recall/F1/support, the confusion matrix and ROC AUC.

    The confusion matrix has one row per true class and one column per predicted class. ROC AUC is one-vs-rest
    per class; its macro average covers the classes that occur in the test split (a class with no test images
    has no ROC curve), which is scikit-learn's `roc_auc_score(multi_class="ovr", average="macro")` whenever every
    class occurs.
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

    labels = np.asarray(labels)
    classes = list(range(len(class_names)))
    predicted = np.asarray(probabilities).argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=classes, zero_division=0)
    aucs: list[float | None] = []
    for index in classes:
        positives = labels == index
        aucs.append(float(roc_auc_score(positives, probabilities[:, index])) if 0 < positives.sum() < len(labels)
                    else None)  # fmt: skip
    scored = [auc for auc in aucs if auc is not None]
    averages = {}
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(
            labels, predicted, labels=classes, average=average, zero_division=0
        )
        averages[average] = {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(len(labels))}
    return {
        "accuracy": float((predicted == labels).mean()),
        "per_class": [
            {
                "class": name,
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
                "roc_auc": aucs[i],
            }
            for i, name in enumerate(class_names)
        ],
        "averages": averages,
        "confusion_matrix": confusion_matrix(labels, predicted, labels=classes).tolist(),
        "roc_auc_macro": float(np.mean(scored)) if scored else None,
    }


def layer_table(model: Any) -> list[dict[str, Any]]:
    """One row per layer of a built Keras model (name, type, output shape, parameters), for the manifest.

    Recorded at build time so that the report — and anyone reading the manifest — sees the model's structure
    without loading TensorFlow.
    """
    rows = []
    for layer in model.layers:
        shape = getattr(getattr(layer, "output", None), "shape", None)
        rows.append(
            {
                "name": layer.name,
                "type": type(layer).__name__,
                "output_shape": [None if d is None else int(d) for d in shape] if shape is not None else None,
                "params": int(layer.count_params()),
            }
        )
    return rows


def _chosen_samples(total: int) -> np.ndarray:
    """A fixed, seeded sample of the test split for the grid, so that rebuilding shows the same images."""
    return np.sort(np.random.default_rng(0).choice(total, size=min(GRID_IMAGES, total), replace=False))


def confident_mistakes(labels: np.ndarray, probabilities: np.ndarray, count: int = MISTAKES) -> np.ndarray:
    """Indices of the wrong predictions made with the highest confidence, most confident first."""
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    confidence = probabilities[wrong, predicted[wrong]]
    return wrong[np.argsort(-confidence, kind="stable")[:count]]


def grid_samples(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """The test images the report's grid shows, in order: the model's mistakes first (the most confident first, up
    to `MISTAKES`), then a fixed seeded sample of the rest, so a rebuild shows the same images."""
    mistakes = confident_mistakes(labels, probabilities)
    sample = _chosen_samples(len(labels))
    rest = sample[~np.isin(sample, mistakes)][: GRID_IMAGES - len(mistakes)]
    return np.concatenate([mistakes, rest]).astype(np.int64)


def write_report(
    destination: Path, manifest: dict[str, Any], images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray
) -> Path:
    """Draws the figures and writes `report/*.png` and `report.html` into `destination`; returns the HTML path.

    `manifest` must already hold the metrics from `classification_metrics` (and may hold `quality_gate`);
    `images`, `labels` and `probabilities` are the test split and the model's predictions on it.
    """
    from buildsys.actions import plots

    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities, dtype=np.float32)
    class_names = manifest["class_names"]
    predicted = probabilities.argmax(axis=1)
    grid = grid_samples(labels, probabilities)
    mistakes = int((predicted[grid] != labels[grid]).sum())
    metrics = manifest["metrics"]

    figures: dict[str, tuple[str, bytes | None]] = {
        "training_curves": ("Training curves", plots.training_curves(manifest.get("history") or {})),
        "confusion_matrix": (
            "Confusion matrix",
            plots.confusion_matrix(np.asarray(metrics["confusion_matrix"]), class_names),
        ),
        "roc_curves": ("ROC curves", plots.roc_curves(labels, probabilities, class_names)),
        "per_class_scores": ("Per-class scores", plots.per_class_scores(metrics["per_class"])),
        "test_images": (
            "Test images",
            plots.image_grid(images[grid], labels[grid], probabilities[grid], class_names),
        ),
    }
    embedded = {}
    for key, (title, png) in figures.items():
        if png is None:
            continue
        write_atomic(destination / FIGURES_DIR / f"{key}.png", png)
        embedded[key] = (
            f'<img alt="{html.escape(title)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
        )
    path = destination / REPORT_FILE
    write_atomic(path, _html(manifest, embedded, mistakes, int((predicted != labels).sum())).encode())
    return path


def _number(value: Any, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], classes: Sequence[str] = ()) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join(
        f'<tr class="{html.escape(classes[i]) if i < len(classes) else ""}">'
        + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row)
        + "</tr>"
        for i, row in enumerate(rows)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _gate_banner(gate: dict[str, Any] | None) -> str:
    if not gate or not gate.get("declared"):
        return ""
    kind = "passed" if gate["passed"] else "rejected"
    title = "Quality gate passed" if gate["passed"] else "Rejected by the quality gate — not published"
    notes = "".join(f"<li>{html.escape(note)}</li>" for note in [*gate["failures"], *gate["notes"]])
    return f'<div class="gate {kind}"><strong>{title}</strong><ul>{notes}</ul></div>'


def _html(manifest: dict[str, Any], figures: dict[str, str], mistakes: int, wrong: int) -> str:
    metrics = manifest["metrics"]
    test = metrics.get("test", {})
    heading = manifest["name"]
    subtitle = (
        f"{manifest.get('label', '')} · content hash {manifest.get('content_hash', '')[:12]} · "
        f"built {manifest.get('created', '')}"
    )
    cards = [
        ("accuracy", _number(metrics["accuracy"])),
        ("macro F1", _number(metrics["averages"]["macro"]["f1"])),
        ("ROC AUC (macro, one-vs-rest)", _number(metrics["roc_auc_macro"])),
        ("test loss", _number(test.get("loss"))),
        ("test images", f"{metrics['averages']['macro']['support']:,}"),
        ("parameters", f"{manifest.get('params', 0):,}"),
    ]
    per_class = [
        [row["class"], _number(row["precision"]), _number(row["recall"]), _number(row["f1"]), row["support"],
         _number(row["roc_auc"])]
        for row in metrics["per_class"]
    ]  # fmt: skip
    for average in ("macro", "weighted"):
        scores = metrics["averages"][average]
        auc = metrics["roc_auc_macro"] if average == "macro" else None
        per_class.append(
            [f"{average} average", _number(scores["precision"]), _number(scores["recall"]), _number(scores["f1"]),
             scores["support"], _number(auc)]
        )  # fmt: skip
    row_classes = [""] * len(metrics["per_class"]) + ["average", "average"]
    layers = manifest.get("model_summary") or []
    layer_rows = [
        [layer["name"], layer["type"], str(tuple(layer["output_shape"] or ())), f"{layer['params']:,}"]
        for layer in layers
    ]
    timings = manifest.get("timings", {})
    details = [
        ["label", manifest.get("label", "")],
        ["content hash", manifest.get("content_hash", "")],
        ["data fingerprint", manifest.get("data_fingerprint", "")],
        ["data sizes", ", ".join(f"{k} {v:,}" for k, v in manifest.get("data_sizes", {}).items())],
        ["seed", manifest.get("seed", "")],
        ["hyperparameters", json.dumps(manifest.get("hparams", {}), sort_keys=True)],
        ["parameters", f"{manifest.get('params', 0):,}"],
        ["created", manifest.get("created", "")],
        ["framework versions", ", ".join(f"{k} {v}" for k, v in manifest.get("framework_versions", {}).items())],
    ]
    parity = manifest.get("parity")
    if parity:
        details.append(
            ["export parity", f"ONNX {parity['onnx_max_abs_diff']:.2g}, SavedModel "
             f"{parity['savedmodel_max_abs_diff']:.2g} (max abs over {parity['samples']} inputs)"]
        )  # fmt: skip

    def figure(key: str, title: str, caption: str) -> str:
        if key not in figures:
            return f"<section><h2>{title}</h2><p class='note'>{caption}</p></section>"
        return f"<section><h2>{title}</h2><p class='note'>{caption}</p>{figures[key]}</section>"

    grid_caption = (
        f"First the {mistakes} wrong predictions made with the highest confidence (of {wrong:,} mistakes in all), "
        "captioned true → predicted and its probability, in <span class='legend-red'>red</span>; then a fixed "
        "sample of the test split, captioned with the predicted class, in <span class='legend-blue'>blue</span> "
        "when right."
        if mistakes
        else "The model made no mistakes on the test split; a fixed sample of it, captioned with the predicted class "
        "and its probability."
    )
    body = f"""<h1>{html.escape(heading)}</h1>
<p class="sub">{html.escape(subtitle)}</p>
{_gate_banner(manifest.get("quality_gate"))}
<div class="cards">{
        "".join(
            f'<div class="card"><div class="value">{html.escape(v)}</div><div class="name">{html.escape(k)}</div></div>'
            for k, v in cards
        )
    }</div>
{figure("training_curves", "Training curves", "Loss and each metric per epoch, training against validation.")}
{
        figure(
            "confusion_matrix",
            "Confusion matrix",
            "Test split; rows are true classes, columns predictions; counts in the cells, shading normalised per row.",
        )
    }
<section><h2>Per-class metrics</h2>
<p class="note">Precision, recall and F1 from the arg-max prediction; ROC AUC one-vs-rest from the probabilities,
with each class's curve and their macro average beside the numbers.</p>
<div class="side">
{_table(["class", "precision", "recall", "F1", "support", "ROC AUC"], per_class, row_classes)}
{figures.get("roc_curves", "")}
</div>
</section>
{
        figure(
            "per_class_scores",
            "Per-class scores",
            "Precision, recall and F1 per class (test images in brackets); the colour scale starts just below the "
            "weakest score, so the classes the model finds hardest stand out.",
        )
    }
{figure("test_images", "Test images", grid_caption)}
<section><h2>Model</h2>
{_table(["layer", "type", "output shape", "parameters"], layer_rows) if layer_rows else ""}
<table class="details"><tbody>{
        "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in details)
    }</tbody></table>
</section>
<section><h2>Timings</h2>
{_table(["step", "seconds"], [[k, f"{v:.2f}"] for k, v in timings.items()])}
</section>
"""
    return html_page(f"{heading} — buildsys report", body, REPORT_STYLE)


def summary_text(manifest: dict[str, Any]) -> str:
    """The report's numbers as plain text, for the terminal."""
    metrics = manifest["metrics"]
    lines = [
        f"accuracy {metrics['accuracy']:.4f}, ROC AUC (macro, one-vs-rest) {_number(metrics['roc_auc_macro'])}, "
        f"test loss {_number(metrics.get('test', {}).get('loss'))}",
    ]
    width = max(len("weighted avg"), *(len(row["class"]) for row in metrics["per_class"]))
    lines.append(f"{'class':<{width}}  precision  recall     f1  support  roc_auc")
    rows = [(row["class"], row, row["roc_auc"]) for row in metrics["per_class"]]
    rows += [("macro avg", metrics["averages"]["macro"], metrics["roc_auc_macro"])]
    rows += [("weighted avg", metrics["averages"]["weighted"], None)]
    for name, scores, auc in rows:
        lines.append(
            f"{name:<{width}}  {scores['precision']:9.4f}  {scores['recall']:6.4f}  {scores['f1']:6.4f}  "
            f"{scores['support']:7d}  {_number(auc):>7}"
        )
    matrix = np.asarray(metrics["confusion_matrix"])
    off_diagonal = matrix - np.diag(np.diag(matrix))
    if off_diagonal.any():
        pairs = np.argsort(-off_diagonal, axis=None)[:3]
        names = manifest["class_names"]
        confused = [
            f"{names[i]}→{names[j]} ×{off_diagonal[i, j]}"
            for i, j in (np.unravel_index(p, matrix.shape) for p in pairs)
            if off_diagonal[i, j]
        ]
        lines.append("most confused (true→predicted): " + ", ".join(confused))
    gate = manifest.get("quality_gate")
    if gate and gate.get("declared"):
        verdict = "passed" if gate["passed"] else "rejected"
        lines.append(f"quality gate: {verdict}; " + "; ".join([*gate["failures"], *gate["notes"]]))
    return "\n".join(lines)
