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
    """Images with predicted class and confidence above true class: blue when right, red when wrong.

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
        text = (
            f"{class_names[predicted[index]]} {probabilities[index, predicted[index]]:.0%}\n"
            f"true: {class_names[labels[index]]}"
        )
        axes.text(left + cell_w / 2 - 0.5, top + pad / 2 - 0.5, text, ha="center", va="bottom", fontsize=8.5,
                  color=colour, fontweight="normal" if right else "bold")  # fmt: skip
    return _png(figure)


def probability_bars(
    images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str]
) -> bytes:
    """For each image, the image beside the bar chart of every class's probability.

    The predicted class's bar is blue when right and red when wrong; the true class's bar is outlined in black.
    """
    shown = displayable(images)
    count, classes = probabilities.shape
    columns = 2 if count > 3 else 1
    rows = -(-count // columns)
    figure = _figure(6.2 * columns, 1.9 * rows)
    grid = figure.add_gridspec(rows, 2 * columns, width_ratios=[1, 3.2] * columns, wspace=0.25, hspace=0.6)
    predicted = probabilities.argmax(axis=1)
    for index in range(count):
        row, column = divmod(index, columns)
        picture = figure.add_subplot(grid[row, 2 * column])
        picture.imshow(shown[index], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        picture.set_axis_off()
        bars = figure.add_subplot(grid[row, 2 * column + 1])
        colours = ["#b0b7c3"] * classes
        right = predicted[index] == labels[index]
        colours[predicted[index]] = CORRECT if right else WRONG
        drawn = bars.bar(range(classes), probabilities[index], color=colours)
        drawn[labels[index]].set_edgecolor("black")
        drawn[labels[index]].set_linewidth(1.5)
        bars.set_ylim(0, 1)
        bars.set_xticks(range(classes), labels=list(class_names), fontsize=7, rotation=45 if classes > 10 else 0)
        bars.tick_params(axis="y", labelsize=7)
        bars.set_title(
            f"predicted {class_names[predicted[index]]} ({probabilities[index, predicted[index]]:.1%}), "
            f"true {class_names[labels[index]]}",
            fontsize=8,
            color=CORRECT if right else WRONG,
        )
    return _png(figure)
