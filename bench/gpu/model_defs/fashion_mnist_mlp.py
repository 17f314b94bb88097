"""The Fashion-MNIST MLP of model_defs/fashion_mnist_mlp.py (the same layers), trained briefly on generated images
(bench/gpu/synthetic.py) for the GPU bench: what is measured there is the network's cost, not its accuracy."""

from buildsys.dsl import *

model(
    name="fashion_mnist_mlp",
    data=datasets.npz("data/fashion.npz"),
    inputs=image_input("image", shape=(28, 28), dtype="uint8", scale=1 / 255),
    layers=[
        Flatten(),
        Dense(128, activation="relu"),
        Dense(10, activation="softmax"),
    ],
    train=train(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"], epochs=2),
)
