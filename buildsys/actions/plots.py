"""The figures of a build report, drawn with matplotlib's Agg backend and returned as PNG bytes.

Each function draws exactly what the report shows (a few dozen test images, never the whole split), so a report
for 10,000 test images costs the same as one for 300. Figures are built with the object-oriented API on an Agg
canvas — no pyplot, no global state, no display — so drawing is safe in any process. Nothing here imports
TensorFlow; matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

CORRECT = "#1f5fbf"  # blue
WRONG = "#c62828"  # red
DPI = 100


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def displayable(images: np.ndarray) -> np.ndarray:
    """Images as (N, H, W) or (N, H, W, 3) in [0, 1], whatever their dtype: uint8 pixels keep their meaning, other
    ranges are stretched over the shown images' own minimum and maximum."""
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    images = images.astype(np.float32)
    low, high = float(images.min(initial=0.0)), float(images.max(initial=1.0))
    return (images - low) / (high - low) if high > low else np.zeros_like(images)


def training_curves(history: dict[str, list[float]]) -> bytes | None:
    """Loss and each metric per epoch, training against validation; None when there is no history."""
    from matplotlib.ticker import MaxNLocator

    names = [name for name, values in history.items() if not name.startswith("val_") and values]
    names.sort(key=lambda name: (name != "loss", name))
    if not names:
        return None
    figure = _figure(4.2 * len(names), 3.2)
    for index, name in enumerate(names):
        axes = figure.add_subplot(1, len(names), index + 1)
        epochs = np.arange(1, len(history[name]) + 1)
        axes.plot(epochs, history[name], marker="o", markersize=3, color=CORRECT, label="training")
        validation = history.get(f"val_{name}")
        if validation:
            axes.plot(np.arange(1, len(validation) + 1), validation, marker="o", markersize=3, color="#e07b00",
                      label="validation")  # fmt: skip
        axes.set_title(name.replace("_", " "))
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel("epoch")
        axes.grid(alpha=0.3)
        axes.legend(frameon=False)
    figure.tight_layout()
    return _png(figure)


def confusion_matrix(matrix: np.ndarray, class_names: Sequence[str]) -> bytes:
    """Rows are true classes, columns predictions; the shading is normalised per row (the class's recall)."""
    matrix = np.asarray(matrix)
    classes = len(class_names)
    rows = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=float), where=rows > 0)
    side = min(12.0, 2.0 + 0.45 * classes)
    figure = _figure(side + 1.2, side)
    axes = figure.add_subplot(1, 1, 1)
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of the true class")
    axes.set_xticks(range(classes), labels=list(class_names), rotation=45 if classes > 10 else 0, ha="right"
                    if classes > 10 else "center")  # fmt: skip
    axes.set_yticks(range(classes), labels=list(class_names))
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    if classes <= 30:
        for row in range(classes):
            for column in range(classes):
                if matrix[row, column]:
                    axes.text(column, row, str(int(matrix[row, column])), ha="center", va="center", fontsize=8,
                              color="white" if shares[row, column] > 0.5 else "#222222")  # fmt: skip
    figure.tight_layout()
    return _png(figure)


def image_grid(
    images: np.ndarray,
    labels: np.ndarray,
    probabilities: np.ndarray,
    class_names: Sequence[str],
    columns: int = 8,
) -> bytes:
    """Images with their captions: `predicted score` in blue when right, `true → predicted score` in red when wrong.

    All images go into one mosaic (with room above each image for its caption) drawn by a single `imshow`, with a
    coloured frame and caption per cell; this is an order of magnitude faster than one axes per image.
    """
    shown = displayable(images)
    count = len(shown)
    columns = max(1, min(columns, count))
    rows = -(-count // columns)
    height, width = shown.shape[1:3]
    pad = max(2, width // 8)
    cell_w = width + 2 * pad
    caption = -(-cell_w * 7 // 20)  # two lines of 8.5 pt text in a 1.5-inch-wide cell
    cell_h = caption + height + 2 * pad
    mosaic = np.ones((rows * cell_h, columns * cell_w, *shown.shape[3:]), dtype=np.float32)
    predicted = probabilities.argmax(axis=1)
    for index in range(count):
        top, left = (index // columns) * cell_h + caption + pad, (index % columns) * cell_w + pad
        mosaic[top : top + height, left : left + width] = shown[index]

    inches_per_pixel = 1.5 / cell_w
    figure = _figure(columns * cell_w * inches_per_pixel, rows * cell_h * inches_per_pixel)
    axes = figure.add_axes((0, 0, 1, 1))
    axes.imshow(mosaic, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    axes.set_axis_off()
    from matplotlib.patches import Rectangle

    for index in range(count):
        row, column = divmod(index, columns)
        right = predicted[index] == labels[index]
        colour = CORRECT if right else WRONG
        top, left = row * cell_h + caption, column * cell_w
        axes.add_patch(
            Rectangle((left + pad / 2 - 0.5, top + pad / 2 - 0.5), width + pad, height + pad, fill=False,
                      edgecolor=colour, linewidth=2.5)
        )  # fmt: skip
        score = f"{probabilities[index, predicted[index]]:.0%}"
        true, guess = class_names[labels[index]], class_names[predicted[index]]
        if right:
            text = f"{guess}\n{score}"
        else:  # true → predicted on one line when it fits the cell (about 14 characters at this size)
            text = f"{true} → {guess}\n{score}" if len(true) + len(guess) <= 10 else f"{true} →\n{guess} {score}"
        axes.text(left + cell_w / 2 - 0.5, top + pad / 2 - 0.5, text, ha="center", va="bottom", fontsize=8.5,
                  color=colour, fontweight="normal" if right else "bold")  # fmt: skip
    return _png(figure)


def roc_curves(labels: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str]) -> bytes | None:
    """One-vs-rest ROC curve of every class that occurs in the test split, and their macro average (bold).

    The macro curve averages the per-class true-positive rates on a common false-positive grid (scikit-learn's
    recipe), so its area matches the macro ROC AUC the report prints. None when no class has a curve.
    """
    from sklearn.metrics import auc, roc_curve

    labels = np.asarray(labels)
    grid = np.linspace(0.0, 1.0, 201)
    curves = []
    for index, name in enumerate(class_names):
        positives = labels == index
        if 0 < positives.sum() < len(labels):
            fpr, tpr, _ = roc_curve(positives, probabilities[:, index])
            curves.append((name, fpr, tpr, auc(fpr, tpr)))
    if not curves:
        return None
    figure = _figure(5.2, 4.6)
    axes = figure.add_subplot(1, 1, 1)
    colours = _colours(len(curves))
    for (name, fpr, tpr, area), colour in zip(curves, colours, strict=True):
        axes.plot(fpr, tpr, color=colour, linewidth=1.0, alpha=0.8, label=f"{name} ({area:.3f})")
    macro = np.mean([np.interp(grid, fpr, tpr) for _, fpr, tpr, _ in curves], axis=0)
    macro[0] = 0.0
    mean_auc = float(np.mean([area for *_, area in curves]))
    axes.plot(grid, macro, color="#111111", linewidth=2.4, label=f"macro ({mean_auc:.3f})")
    axes.plot([0, 1], [0, 1], color="#999999", linewidth=0.8, linestyle="--")
    axes.set_xlim(-0.01, 1.0)
    axes.set_ylim(0.0, 1.01)
    axes.set_xlabel("false positive rate")
    axes.set_ylabel("true positive rate")
    axes.set_title("ROC, one-vs-rest (AUC)")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=7 if len(curves) <= 12 else 5, ncol=1 if len(curves) <= 12 else 2)
    figure.tight_layout()
    return _png(figure)


def per_class_scores(per_class: Sequence[dict[str, Any]]) -> bytes:
    """Precision, recall and F1 of every class as one heat-map table, the numbers in the cells.

    The colour scale starts just below the weakest score instead of at 0, so that the classes the model finds
    hard stand out even when every score is above 0.9 (the numbers stay exact).
    """
    columns = ("precision", "recall", "f1")
    values = np.array([[row[column] for column in columns] for row in per_class], dtype=float)
    low = float(max(0.0, min(values.min(initial=1.0) - 0.02, 0.9)))
    classes = len(per_class)
    figure = _figure(4.6, 0.9 + 0.3 * classes)
    axes = figure.add_subplot(1, 1, 1)
    image = axes.imshow(values, cmap="RdYlGn", vmin=low, vmax=1.0, aspect="auto")
    figure.colorbar(image, ax=axes, fraction=0.05, pad=0.04)
    axes.set_xticks(range(len(columns)), labels=["precision", "recall", "F1"])
    axes.xaxis.tick_top()
    axes.set_yticks(range(classes), labels=[f"{row['class']} ({row['support']})" for row in per_class], fontsize=8)
    for row in range(classes):
        for column in range(len(columns)):
            axes.text(column, row, f"{values[row, column]:.3f}", ha="center", va="center", fontsize=8, color="#111111")
    axes.set_ylabel("class (test images)")
    figure.tight_layout()
    return _png(figure)


def _colours(count: int) -> list[Any]:
    from matplotlib import colormaps

    palette = colormaps["tab10" if count <= 10 else "tab20"]
    return [palette(index % palette.N) for index in range(count)]
