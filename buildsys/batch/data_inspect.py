"""`data inspect`: what a source holds, computed in one streamed pass, and an optional 5x5 grid of samples.

Reports, per split, the image count, shape and dtype, pixel min/max/mean, and per-class counts with the balance
(smallest class / largest class). The grid shows 25 images drawn uniformly at random (reservoir sampling, seed 0)
with their class names, drawn by matplotlib's Agg backend (no display). Never TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from buildsys.sources.resolve import Opened
from buildsys.store import write_file_atomic

GRID = 5


@dataclass
class SplitStats:
    images: int = 0
    shape: tuple[int, ...] = ()
    dtype: str = "uint8"
    minimum: int = 255
    maximum: int = 0
    pixel_sum: float = 0.0
    class_counts: list[int] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return self.pixel_sum / (self.images * int(np.prod(self.shape))) if self.images else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "pixel_min": self.minimum if self.images else None,
            "pixel_max": self.maximum if self.images else None,
            "pixel_mean": round(self.mean, 3),
            "class_counts": self.class_counts or None,
            "balance": _balance(self.class_counts),
        }


def _balance(counts: list[int]) -> float | None:
    return round(min(counts) / max(counts), 3) if counts and max(counts) else None


@dataclass
class Inspection:
    description: str
    class_names: tuple[str, ...] | None
    splits: dict[str, SplitStats]
    samples: list[tuple[np.ndarray, str]]

    def to_json(self) -> dict[str, Any]:
        total = [sum(column) for column in zip(*(s.class_counts for s in self.splits.values()), strict=True)]
        return {
            "source": self.description,
            "class_names": list(self.class_names) if self.class_names else None,
            "splits": {name: stats.to_json() for name, stats in self.splits.items()},
            "balance": _balance(total) if self.class_names else None,
        }

    def text(self) -> str:
        lines = [
            self.description,
            f"{'split':<8}{'images':>10}  {'shape':<14}{'dtype':<7}{'min':>5}{'max':>5}{'mean':>9}",
        ]
        for name, stats in self.splits.items():
            lines.append(
                f"{name:<8}{stats.images:>10,}  {str(stats.shape):<14}{stats.dtype:<7}"
                f"{stats.minimum:>5}{stats.maximum:>5}{stats.mean:>9.2f}"
            )
        if self.class_names:
            summary = self.to_json()
            lines.append(f"{len(self.class_names)} classes, balance {summary['balance']} (smallest / largest class)")
            width = max(len(name) for name in self.class_names)
            header = "".join(f"{name:>10}" for name in self.splits)
            lines.append(f"  {'class':<{width}}{header}")
            for index, class_name in enumerate(self.class_names):
                counts = "".join(f"{stats.class_counts[index]:>10,}" for stats in self.splits.values())
                lines.append(f"  {class_name:<{width}}{counts}")
        return "\n".join(lines)


def inspect(opened: Opened, batch_size: int = 1024, seed: int = 0) -> Inspection:
    """One pass over the chosen splits; holds one batch and the 25 sampled images at a time."""
    reader = opened.reader
    rng = np.random.default_rng(seed)
    samples: list[tuple[np.ndarray, str]] = []
    seen = 0
    splits = {}
    for split in opened.splits:
        stats = SplitStats(class_counts=[0] * len(reader.class_names) if reader.class_names else [])
        for batch in reader.batches(split, batch_size):
            images = batch.images
            stats.images += len(images)
            stats.shape, stats.dtype = tuple(images.shape[1:]), str(images.dtype)
            stats.minimum = min(stats.minimum, int(images.min()))
            stats.maximum = max(stats.maximum, int(images.max()))
            stats.pixel_sum += float(images.sum(dtype=np.float64))
            if batch.labels is not None and stats.class_counts:
                counts = np.bincount(batch.labels, minlength=len(stats.class_counts))
                stats.class_counts = [a + int(b) for a, b in zip(stats.class_counts, counts, strict=False)]
            for i, image in enumerate(images):
                title = reader.class_names[batch.labels[i]] if batch.labels is not None else batch.ids[i]
                seen += 1
                if len(samples) < GRID * GRID:
                    samples.append((image, title))
                elif (slot := int(rng.integers(seen))) < GRID * GRID:
                    samples[slot] = (image, title)
        splits[split] = stats
    return Inspection(reader.description, reader.class_names, splits, samples)


def plot(inspection: Inspection, path: Path) -> None:
    """Saves the 5x5 grid of sampled images with their class names (PNG, or any format matplotlib knows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(GRID, GRID, figsize=(8, 8.6))
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index >= len(inspection.samples):
            continue
        image, title = inspection.samples[index]
        shown = image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image
        axis.imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0, vmax=255)
        axis.set_title(str(title)[:20], fontsize=8)
    figure.suptitle(inspection.description, fontsize=9)
    figure.tight_layout()
    write_file_atomic(path, lambda stream: figure.savefig(stream, format="png", dpi=100))
    plt.close(figure)
