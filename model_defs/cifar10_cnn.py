"""CIFAR-10, the classic Keras CNN with dropout, batch normalisation and max-norm dense layers.

2,264,458 parameters; 25 epochs at batch 64 with adam reach about 0.83 test accuracy.
"""

from buildsys.dsl import *

model(
    name="cifar10_cnn",
    data=datasets.keras("cifar10"),
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
        optimizer="adam",
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        epochs=25,
        batch_size=64,
    ),
)
