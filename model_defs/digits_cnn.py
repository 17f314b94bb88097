"""A small convolutional network on scikit-learn's digits; its `features` layer is the base of `digits_transfer`."""

from buildsys.dsl import *

model(
    name="digits_cnn",
    description="8x8 handwritten digits through two small convolutions; the 64-unit `features` layer is reusable.",
    data=datasets.sklearn_digits(test_fraction=0.2, split_seed=0),
    inputs=image_input("image", shape=(8, 8, 1), dtype="uint8", scale=1 / 255),
    layers=[
        Conv2D(16, 3, padding="same", activation="relu"),
        Conv2D(32, 3, activation="relu"),
        MaxPooling2D(2),
        Flatten(),
        Dense(64, activation="relu", name="features"),
        Dense(10, activation="softmax"),
    ],
    train=train(optimizer="adam", learning_rate=3e-3, epochs=20, batch_size=32),
)
