"""Transfer declarations: pretrained(...), target(...), heads, fine_tune(...) and their checks in model(...)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from buildsys.errors import DefinitionError
from buildsys.workspace import load_file
from tests.conftest import write_definition


def declare(root: Path, body: str, inputs: str = "image_input(shape=(8, 8, 1), scale=1)") -> list:
    source = f"""
from buildsys.dsl import *

model(
    name="t",
    data=datasets.sklearn_digits(),
    inputs={inputs},
    {body}
    train=train(epochs=1),
)
"""
    return load_file(write_definition(root, "t.py", source))


def test_pretrained_base_with_logistic_regression_head(workspace: Path) -> None:
    (spec,) = declare(
        workspace,
        'base=pretrained("InceptionV3", weights="imagenet", input_size=(75, 75)),\n'
        "    head=logistic_regression(reg_param=0.03, elastic_net_param=0.5),",
    )
    transfer = spec.to_json()["transfer"]
    assert transfer["base"] == {
        "kind": "pretrained",
        "application": "InceptionV3",
        "weights": "imagenet",
        "input_size": [75, 75],
        "pooling": "avg",
    }
    assert transfer["fine_tune"] is None and spec.layers == ()
    head = spec.transfer.head
    assert head.l1 == pytest.approx(0.015) and head.l2 == pytest.approx(0.0075)  # Spark's elastic-net objective


def test_layer_defined_targets_keep_their_json(workspace: Path) -> None:
    (spec,) = declare(workspace, 'layers=[Flatten(), Dense(10, activation="softmax")],')
    assert "transfer" not in spec.to_json()


def test_relative_weights_path_starts_at_the_definition(workspace: Path) -> None:
    (spec,) = declare(
        workspace, 'base=pretrained("VGG16", weights="w/vgg.h5", input_size=(32, 32)),\n    head=mlp(16),'
    )
    assert spec.transfer.base.weights_path() == workspace / "model_defs" / "w" / "vgg.h5"
    assert spec.to_json()["transfer"]["base"]["weights"] == "w/vgg.h5"


@pytest.mark.parametrize(
    ("body", "inputs", "message"),
    [
        ('base=pretrained("AlexNet"), head=mlp(),', None, r"pretrained\(application=...\) expects one of InceptionV3"),
        ('base=pretrained("InceptionV3"), head=mlp(),', None, r"InceptionV3 needs images of at least 75x75"),
        ('base=pretrained("VGG16", input_size=(16, 16)), head=mlp(),', None, r"each >= 32"),
        (
            'base=pretrained("VGG16", input_size=(32, 32)), head=mlp(),',
            "image_input(shape=(8, 8, 1))",
            r"takes pixels in 0-255 .* declare image_input\(..., scale=1, offset=0\)",
        ),
        ('base=target("x", layer="f"), head=mlp(units=0),', None, r"mlp\(units=...\) expects a positive int"),
        (
            'base=target("x", layer="f"), head=logistic_regression(elastic_net_param=2),',
            None,
            r"elastic_net_param=...\) expects a number in \[0, 1\]",
        ),
        ('base=target("x", layer="f"), head=Dense(10),', None, r"model\(head=...\) expects logistic_regression"),
        ('base=target("x", layer="f"), head=mlp(), layers=[Flatten()],', None, r"instead of layers="),
        ('head=mlp(), layers=[Flatten(), Dense(10, activation="softmax")],', None, r"need a base"),
        ('base=target("x", layer="f"), head=mlp(), fine_tune=fine_tune(layers=0),', None, r"fine_tune\(layers"),
        # names the compiled graph gives its own layers (Keras would refuse the model after featurising)
        (
            'base=target("x", layer="f"), head=mlp(units=(8,), dropout=0.2),',
            'image_input("dropout_1", shape=(8, 8, 1), scale=1)',
            r"image_input\(name='dropout_1'\) is the name of a layer of the transfer target's graph \(base, features, "
            r"standardize, hidden_1, dropout_1, probabilities\)",
        ),
        (
            'base=pretrained("VGG16", input_size=(32, 32)), head=mlp(),',
            'image_input("pixels", shape=(8, 8, 1), scale=1)',
            r"image_input\(name='pixels'\) is the name of a layer",
        ),
        # and the names the network brings (Keras refused these only once the base was built)
        (
            'base=pretrained("VGG16", input_size=(32, 32)), head=mlp(),',
            'image_input("vgg16", shape=(8, 8, 1), scale=1)',
            r"image_input\(name='vgg16'\) is the name of a layer .*vgg16_preprocess_input, vgg16\)",
        ),
        (
            'base=pretrained("ResNet50", input_size=(32, 32)), head=mlp(),',
            'image_input("resnet50_preprocess_input", shape=(8, 8, 1), scale=1)',
            r"image_input\(name='resnet50_preprocess_input'\) is the name of a layer",
        ),
    ],
)
def test_bad_transfer_declarations_name_the_line(workspace: Path, body: str, inputs: str | None, message: str) -> None:
    with pytest.raises(DefinitionError, match=message) as raised:
        declare(workspace, body, inputs or "image_input(shape=(8, 8, 1), scale=1)")
    assert "t.py:" in str(raised.value)


def test_shipped_transfer_examples(tmp_path: Path) -> None:
    """bangla_digits_inception declares the reference set-up; without its images it stops on one line."""
    from buildsys.graph import TargetGraph
    from buildsys.workspace import Workspace
    from tests.conftest import REPO, run_buildsys

    graph = TargetGraph(Workspace(REPO))
    assert graph.deps("//model_defs:digits_transfer") == ["//model_defs:digits_cnn"]
    bangla = graph.target("//model_defs:bangla_digits_inception").spec
    assert bangla.transfer.base.to_json()["application"] == "InceptionV3"
    assert (bangla.transfer.head.reg_param, bangla.transfer.head.elastic_net_param) == (0.03, 0.5)

    (tmp_path / "model_defs").mkdir()
    shutil.copy(REPO / "model_defs" / "bangla_digits_inception.py", tmp_path / "model_defs")
    missing = tmp_path / "no-such-folder"
    result = run_buildsys(
        "build", "bangla_digits_inception", cwd=tmp_path, env={**os.environ, "BANGLA_DIGITS_DIR": str(missing)}
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {missing} is not a folder (expected one sub-folder of images per class)"
    )
