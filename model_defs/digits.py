"""scikit-learn's bundled handwritten digits: the offline main job (builds in well under a minute on 2 cores)."""

from buildsys.dsl import *

model(
    name="digits",
    description="8x8 handwritten digits (1,797 real images shipped with scikit-learn), a small dense network.",
    data=datasets.sklearn_digits(test_fraction=0.2, split_seed=0),
    inputs=image_input("image", shape=(8, 8), dtype="uint8", scale=1 / 255),
    layers=[
        Flatten(),
        Dense(hp.Int("units", 16, 256, step=16, default=64), activation="relu"),
        Dense(10, activation="softmax"),
    ],
    train=train(
        optimizer="adam",
        learning_rate=hp.Float("learning_rate", 1e-4, 1e-1, sampling="log", default=3e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        epochs=40,
        batch_size=32,
    ),
)
