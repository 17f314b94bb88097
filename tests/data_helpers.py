"""Test data generated on the spot: the real 8x8 digits, written as image folders, npz files and SQL tables."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from buildsys.sources.images import encode_png

CLASS_NAMES = [f"digit {d}" for d in range(10)]

# Run as `python -c ONE_EPOCH_MEMORY WORKSPACE`: trains one epoch of the target `warm` (so that TensorFlow's own
# start-up memory is not counted), then one of `big`, and prints how much the peak memory grew during the second.
ONE_EPOCH_MEMORY = """
import json, resource, sys
from pathlib import Path
from buildsys import sources
from buildsys.actions.data import check_and_split, training_data
from buildsys.actions.train import build_in_scope
from buildsys.workspace import Workspace

def one_epoch(target):
    spec = target.spec
    splits = check_and_split(sources.load(spec.data, None), spec, spec.train.seed)
    model, _ = build_in_scope(spec, spec.default_hparams(), spec.train.seed, "default")
    train, validation = training_data(splits, spec.train.batch_size, spec.train.shuffle_buffer, spec.train.seed)
    model.fit(train, validation_data=validation, epochs=1, verbose=0, shuffle=False)
    return splits.train_size + splits.val_size

workspace = Workspace(Path(sys.argv[1]))
one_epoch(workspace.targets["//model_defs:warm"])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rows = one_epoch(workspace.targets["//model_defs:big"])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"growth_bytes": (after - before) * 1024, "rows": rows}))
"""


def digits(count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as uint8 0..255 images and int64 labels (the first `count`)."""
    from sklearn.datasets import load_digits

    from buildsys.sources.sklearn_digits import to_uint8

    data = load_digits()
    return to_uint8(data.images)[:count], data.target.astype(np.int64)[:count]


def write_table(
    url: str,
    images: np.ndarray,
    labels: np.ndarray,
    encode: Callable[[np.ndarray], bytes] = lambda image: image.tobytes(),
    test_every: int = 5,
) -> None:
    """Table `images(id, pixels, label, part)` with every `test_every`-th row in the test part, and
    `cats(idx, name)` holding CLASS_NAMES."""
    import sqlalchemy as sa

    metadata = sa.MetaData()
    table = sa.Table(
        "images", metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("pixels", sa.LargeBinary),
        sa.Column("label", sa.Integer),
        sa.Column("part", sa.String(8)),
    )  # fmt: skip
    cats = sa.Table(
        "cats",
        metadata,
        sa.Column("idx", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(32)),
    )
    engine = sa.create_engine(url)
    metadata.create_all(engine)
    rows = [
        {"id": i, "pixels": encode(image), "label": int(label), "part": "test" if i % test_every == 0 else "train"}
        for i, (image, label) in enumerate(zip(images, labels, strict=True))
    ]
    with engine.begin() as connection:
        connection.execute(table.insert(), rows)
        connection.execute(cats.insert(), [{"idx": i, "name": name} for i, name in enumerate(CLASS_NAMES)])
    engine.dispose()


def sql_definition(url: str, name: str = "sqldigits", epochs: int = 3, extra: str = "") -> str:
    """A definition training a small dense network on the `images` table written by `write_table`."""
    return f"""
        from buildsys.dsl import *

        model(
            name="{name}",
            data=datasets.sql(
                "{url}",
                "SELECT id, pixels, label FROM images WHERE part = 'train' ORDER BY id",
                "SELECT id, pixels, label FROM images WHERE part = 'test' ORDER BY id",
                "pixels",
                "label",
                class_names_query="SELECT name FROM cats ORDER BY idx",
                image_shape=(8, 8),
                id_column="id",
                {extra}
            ),
            inputs=image_input("image", shape=(8, 8)),
            layers=[Flatten(), Dense(32, activation="relu"), Dense(10, activation="softmax")],
            train=train(epochs={epochs}, batch_size=32, learning_rate=0.01),
        )
    """


def write_folder(
    root: Path,
    images: np.ndarray,
    labels: np.ndarray,
    suffixes: tuple[str, ...] = (".png",),
    class_names: list[str] = CLASS_NAMES,
) -> Path:
    """One sub-folder per class name holding each image as a file, cycling through `suffixes`."""
    from PIL import Image

    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / class_names[label]
        folder.mkdir(parents=True, exist_ok=True)
        suffix = suffixes[index % len(suffixes)]
        path = folder / f"{index:05d}{suffix}"
        if suffix == ".png":
            path.write_bytes(encode_png(image))
        else:
            Image.fromarray(image).save(path)
    return root


def upload(folder: Path, prefix: str, scheme: str = "s3") -> str:
    """Every file under `folder` as an object under `prefix` of the tests' bucket (tests/remote: moto's S3 server or
    the GCS emulator, whichever fixture runs); the folder's URL."""
    import fsspec

    from tests.remote.s3 import BUCKET  # the GCS emulator's bucket has the same name

    store = fsspec.filesystem(scheme)
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            store.pipe_file(f"{BUCKET}/{prefix}/{path.relative_to(folder).as_posix()}", path.read_bytes())
    return f"{scheme}://{BUCKET}/{prefix}"


def url_texts() -> Any:
    """Hypothesis text built from the pieces URLs are made of (schemes, brackets, credentials, ports, `${VAR}`,
    percent escapes, control characters) and a little noise: what a user may type after --remote-cache or in a
    definition's URL."""
    from hypothesis import strategies as st

    pieces = st.sampled_from(
        ["http://", "https://", "file://", "s3://", "gs://", "gcs://", "sqlite:///", "mysql+pymysql://",
         "postgresql://", "hdfs://", "[", "]", "@", ":", "/", "?", "#", "%", "%zz", "${X}", "${DB_PORT}", "..",
         "host", ":99999", ":-1", ":abc", "\x00", " ", "\n", "é", "user:pa@ss", "[::1]", "[::1", "bucket", "a=b&c",
         "\\"]
    )  # fmt: skip
    return st.lists(pieces | st.text(max_size=5), max_size=8).map("".join)
