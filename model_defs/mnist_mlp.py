"""MNIST, the TensorFlow beginner tutorial's network with dropout (about 0.98 test accuracy)."""

from buildsys.dsl import *

model(
    name="mnist_mlp",
    data=datasets.keras("mnist"),
    inputs=image_input("image", shape=(28, 28), dtype="uint8", scale=1 / 255),
    layers=[
        Flatten(),
        Dense(hp.Int("units", 32, 512, step=32, default=128), activation="relu"),
        Dropout(hp.Float("dropout", 0.0, 0.5, step=0.1, default=0.2)),
        Dense(10, activation="softmax"),
    ],
    train=train(
        optimizer="adam",
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        epochs=5,
        batch_size=32,
    ),
)
