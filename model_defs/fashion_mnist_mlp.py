"""Fashion-MNIST, the classic Keras tutorial's dense network (published runs reach about 0.87–0.88 test accuracy)."""

from buildsys.dsl import *

model(
    name="fashion_mnist_mlp",
    data=datasets.keras("fashion_mnist"),  # the published class names: T-shirt/top, Trouser, ... Ankle boot
    inputs=image_input("image", shape=(28, 28), dtype="uint8", scale=1 / 255),
    layers=[
        Flatten(),
        Dense(hp.Int("units", 32, 512, step=32, default=128), activation="relu"),
        Dense(10, activation="softmax"),
    ],
    train=train(
        optimizer="adam",
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        epochs=10,
        batch_size=32,
    ),
)
