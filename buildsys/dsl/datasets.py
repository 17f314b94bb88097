"""Data source declarations: which images and labels a target trains and tests on.

Only the declaration lives here (a `DataSource` value, hashed into the cache key); loading is in
`buildsys.sources`, which may import heavy libraries. Class names default to each dataset's published ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from buildsys.errors import DefinitionError, Location, caller_location, describe

KERAS_DATASETS: dict[str, dict[str, Any]] = {
    "mnist": {"shape": (28, 28), "classes": [str(digit) for digit in range(10)]},
    "fashion_mnist": {
        "shape": (28, 28),
        "classes": [
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ],
    },
    "cifar10": {
        "shape": (32, 32, 3),
        "classes": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
    },
}


@dataclass(frozen=True)
class DataSource:
    """A declared dataset: its kind, the settings that select its content, and the class names."""

    kind: str
    params: tuple[tuple[str, Any], ...]
    class_names: tuple[str, ...]
    image_shape: tuple[int, ...]
    location: Location | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, **dict(self.params), "class_names": list(self.class_names)}


def _class_names(given: Any, default: list[str], location: Location | None) -> tuple[str, ...]:
    names = default if given is None else given
    if not isinstance(names, list | tuple) or not names or not all(isinstance(n, str) and n for n in names):
        raise DefinitionError(
            f"class_names must be a non-empty list of strings. Received: {describe(names)}.", location
        )
    if len(set(names)) != len(names):
        duplicates = sorted({name for name in names if list(names).count(name) > 1})
        raise DefinitionError(f"class_names has duplicates: {', '.join(duplicates)}.", location)
    return tuple(names)


def keras(name: str, class_names: list[str] | None = None) -> DataSource:
    """One of Keras' built-in datasets (downloaded once into Keras' cache, or read from `--data-dir`)."""
    location = caller_location()
    if name not in KERAS_DATASETS:
        raise DefinitionError(
            f"datasets.keras() knows {', '.join(KERAS_DATASETS)}. Received: {describe(name)}.", location
        )
    known = KERAS_DATASETS[name]
    names = _class_names(class_names, known["classes"], location)
    return DataSource("keras", (("name", name),), names, known["shape"], location)


def sklearn_digits(test_fraction: float = 0.2, split_seed: int = 0) -> DataSource:
    """scikit-learn's 1,797 bundled 8x8 handwritten digits as uint8 pixels (0–16 scaled to 0–255).

    The held-out split is stratified and fixed by `split_seed`, independent of the training seed, so the test
    accuracy of two builds is measured on the same images.
    """
    location = caller_location()
    if not isinstance(test_fraction, float) or not 0 < test_fraction < 1:
        raise DefinitionError(
            f"test_fraction must be a float in (0, 1). Received: {describe(test_fraction)}.", location
        )
    params = (("test_fraction", test_fraction), ("split_seed", split_seed))
    names = tuple(str(digit) for digit in range(10))
    return DataSource("sklearn_digits", params, names, (8, 8), location)
