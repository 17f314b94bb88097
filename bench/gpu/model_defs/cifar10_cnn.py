"""The CIFAR-10 CNN of model_defs/cifar10_cnn.py (the same layers, 2,264,458 parameters), trained briefly on
generated images (bench/gpu/synthetic.py) for the GPU bench: what is measured there is the network's cost."""

from buildsys.dsl import *

model(
    name="cifar10_cnn",
    data=datasets.npz("data/cifar.npz"),
    inputs=image_input("image", shape=(32, 32, 3), dtype="uint8", scale=1 / 255),
    layers=[
        Conv2D(32, 3, padding="same"),
        Activation("relu"),
        Dropout(0.2),
        BatchNormalization(),
        Conv2D(64, 3, padding="same"),
        Activation("relu"),
        MaxPooling2D(2),
        Dropout(0.2),
        BatchNormalization(),
        Conv2D(64, 3, padding="same"),
        Activation("relu"),
        MaxPooling2D(2),
        Dropout(0.2),
        BatchNormalization(),
        Conv2D(128, 3, padding="same"),
        Activation("relu"),
        Dropout(0.2),
        BatchNormalization(),
        Flatten(),
        Dropout(0.2),
        Dense(256, kernel_constraint=max_norm(3)),
        Activation("relu"),
        Dropout(0.2),
        BatchNormalization(),
        Dense(128, kernel_constraint=max_norm(3)),
        Activation("relu"),
        Dropout(0.2),
        BatchNormalization(),
        Dense(10, activation="softmax"),
    ],
    train=train(
        optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"], epochs=1, batch_size=64
    ),
)
