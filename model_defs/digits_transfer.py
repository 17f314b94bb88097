"""Transfer learning offline: `digits_cnn` cut before its classifier, with a new logistic-regression head.

The head is fitted on a different split of the digits (half for training, half for testing, `split_seed=1`), on
features the frozen base computes once and caches under build-out/features/. Some of this split's test images were
among the base's training images, so read its accuracy as a check that the machinery works (the base's features
carry over, the head trains on them, the exported graph runs end to end), not as a benchmark.
`build //model_defs:digits_transfer` on a clean tree builds `digits_cnn` first.
"""

from buildsys.dsl import *

model(
    name="digits_transfer",
    description="digits_cnn's 64 features with a new elastic-net logistic-regression head, on another split.",
    data=datasets.sklearn_digits(test_fraction=0.5, split_seed=1),
    inputs=image_input("image", shape=(8, 8, 1), dtype="uint8", scale=1 / 255),
    base=target("//model_defs:digits_cnn", layer="features"),
    head=logistic_regression(reg_param=0.001, elastic_net_param=0.5),
    train=train(optimizer="adam", learning_rate=1e-2, epochs=20, batch_size=64),
)
