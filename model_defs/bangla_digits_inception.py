"""Bangla handwritten digits with an ImageNet InceptionV3 base and an elastic-net logistic-regression head.

The reference set-up for transfer learning from a large pretrained network: InceptionV3 without its top turns each
image into 2,048 features (computed once and cached under build-out/features/), and a multinomial logistic
regression with Spark ML's elastic-net settings (regParam 0.03, elasticNetParam 0.5) is fitted on them. With about
50 images per class this reaches about 0.81 test accuracy on 110 test images.

Data: one folder per digit, named 0 to 9, holding that digit's images (PNG or JPEG), e.g. from the NumtaDB Bengali
handwritten digits collection (https://www.kaggle.com/datasets/BengaliAI/numta) — copy about 50 images per class.
Put the folders under `data/bangla_digits/` in the workspace, or point `$BANGLA_DIGITS_DIR` at them.
Weights: the first build downloads `inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5` into Keras' cache
(`~/.keras/models/`); offline, put that file there. Without the images or the weights the build stops with one line
saying which is missing and where it goes.
"""

import os

from buildsys.dsl import *

model(
    name="bangla_digits_inception",
    description="Bangla digits: InceptionV3 (ImageNet) features and an elastic-net logistic regression.",
    data=datasets.image_folder(
        os.environ.get("BANGLA_DIGITS_DIR", "data/bangla_digits"),
        image_size=(299, 299),
        color_mode="rgb",
        split=0.2,
        split_seed=0,
        class_names=[str(digit) for digit in range(10)],
    ),
    inputs=image_input("image", shape=(299, 299, 3), dtype="uint8", scale=1),
    base=pretrained("InceptionV3", weights="imagenet", input_size=(299, 299)),
    head=logistic_regression(reg_param=0.03, elastic_net_param=0.5),
    train=train(optimizer="adam", learning_rate=1e-2, epochs=100, batch_size=32, validation_split=0.0),
)
