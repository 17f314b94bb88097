"""Bad definitions fail before any work with one line naming the file and line, and write nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildsys.cli import main
from buildsys.errors import DefinitionError, LabelError
from buildsys.workspace import Workspace
from tests.conftest import write_definition

GOOD_LAYERS = """
    from buildsys.dsl import *

    model(
        name="{name}",
        data=datasets.sklearn_digits(),
        inputs=image_input("image", shape=(8, 8)),
        layers=[
            Flatten(),
            {hidden}
            Dense(10, activation="softmax"),
        ],
        train=train(epochs=1),
    )
"""


def definition(workspace: Path, hidden: str = "Dense(32, activation='relu'),", name: str = "tiny") -> Path:
    return write_definition(workspace, f"{name}.py", GOOD_LAYERS.format(name=name, hidden=hidden))


def load_error(workspace: Path) -> str:
    with pytest.raises(DefinitionError) as caught:
        Workspace(workspace)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_good_definition_loads_with_its_label(workspace: Path) -> None:
    definition(workspace)
    loaded = Workspace(workspace)
    assert list(loaded.targets) == ["//model_defs:tiny"]
    assert [t.label for t in loaded.resolve(["tiny"])] == ["//model_defs:tiny"]
    assert [t.label for t in loaded.resolve([":tiny", "//model_defs/..."])] == ["//model_defs:tiny"]


def test_unknown_layer_names_file_and_line(workspace: Path) -> None:
    definition(workspace, hidden="Dense2(32),")
    message = load_error(workspace)
    assert "tiny.py:9: NameError: name 'Dense2' is not defined" in message
    assert "Dense2" in message and "a definition may use" in message


def test_wrong_argument_is_reported_with_expected_ones(workspace: Path) -> None:
    definition(workspace, hidden="Dense(unitz=32),")
    message = load_error(workspace)
    assert "tiny.py:9: Dense() got an unexpected argument 'unitz'" in message
    assert "units" in message


def test_wrong_argument_type_shows_what_was_received(workspace: Path) -> None:
    definition(workspace, hidden='Dense("128", activation="relu"),')
    message = load_error(workspace)
    assert 'tiny.py:9: Dense(units=...) expects a positive int. Received: "128" (str).' in message


def test_shape_that_does_not_fit(workspace: Path) -> None:
    definition(workspace, hidden="Reshape((7, 7)),")
    message = load_error(workspace)
    assert "tiny.py:9: Reshape: cannot reshape (64,)" in message


def test_conv_on_an_input_without_channels_explains_the_fix(workspace: Path) -> None:
    write_definition(
        workspace,
        "conv.py",
        """
        from buildsys.dsl import *

        model(
            name="conv",
            data=datasets.sklearn_digits(),
            inputs=image_input(shape=(8, 8)),
            layers=[Conv2D(8, 3), Flatten(), Dense(10, activation="softmax")],
            train=train(),
        )
        """,
    )
    message = load_error(workspace)
    assert "conv.py:7: Conv2D expects an input shaped (height, width, channels)" in message
    assert "shape=(8, 8, 1)" in message


def test_class_name_count_must_match_output_units(workspace: Path) -> None:
    write_definition(
        workspace,
        "few.py",
        """
        from buildsys.dsl import *

        model(
            name="few",
            data=datasets.keras("mnist", class_names=["zero", "one", "two"]),
            inputs=image_input(shape=(28, 28)),
            layers=[Flatten(),
                    Dense(10, activation="softmax")],
            train=train(),
        )
        """,
    )
    message = load_error(workspace)
    assert "few.py:8: the last layer outputs shape (10,) but the data has 3 class names" in message


def test_duplicate_target_names_point_at_both(workspace: Path) -> None:
    definition(workspace, name="tiny")
    write_definition(workspace, "again.py", GOOD_LAYERS.format(name="tiny", hidden=""))
    message = load_error(workspace)
    assert "duplicate target name 'tiny'" in message
    assert "again.py:3" in message and "tiny.py:3" in message


def test_hyperparameter_range_is_checked(workspace: Path) -> None:
    definition(workspace, hidden="Dense(hp.Int('units', 0, 64, default=8)),")
    message = load_error(workspace)
    assert "Dense(units=...) expects a positive int. Received: 0 (int) (from hyperparameter 'units')" in message


def test_syntax_error_names_the_line(workspace: Path) -> None:
    write_definition(workspace, "broken.py", "model(\n")
    assert "broken.py:1: syntax error" in load_error(workspace)


def test_unknown_label_lists_known_targets(workspace: Path) -> None:
    definition(workspace)
    with pytest.raises(LabelError, match=r"unknown target '//model_defs:nope'; known targets: //model_defs:tiny"):
        Workspace(workspace).resolve(["//model_defs:nope"])


@pytest.mark.parametrize("label", ["//model_defs:nope", "tiny"])
def test_cli_reports_one_line_exit_2_and_writes_nothing(
    workspace: Path, label: str, capsys: pytest.CaptureFixture[str]
) -> None:
    definition(workspace, hidden="Dense(unitz=3)," if label == "tiny" else "")
    code = main(["build", label, "--workspace", str(workspace)])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
    assert not (workspace / "build-out").exists()


@pytest.mark.parametrize(
    ("data", "train_args", "message"),
    [
        ("datasets.sklearn_digits(split_seed=-1)", "epochs=1", "sklearn_digits(split_seed=...) expects an int in"),
        ("datasets.sklearn_digits()", "epochs=1, seed=2**32", "train(seed=...) expects an int in [0, 2**32 - 1]"),
    ],
)
def test_seeds_outside_what_the_generators_take_fail_at_their_line(
    workspace: Path, data: str, train_args: str, message: str
) -> None:
    text = GOOD_LAYERS.format(name="tiny", hidden="").replace("datasets.sklearn_digits()", data)
    write_definition(workspace, "tiny.py", text.replace("train=train(epochs=1)", f"train=train({train_args})"))
    assert message in load_error(workspace)


def test_a_seed_option_outside_the_generators_range_is_refused_up_front(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    definition(workspace)
    with pytest.raises(SystemExit) as exited:
        main(["build", "tiny", "--workspace", str(workspace), "--seed", str(2**32)])
    assert exited.value.code == 2
    assert "--seed: expects an int in [0, 2**32 - 1]" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("hidden", "input_name", "message"),
    [
        ("Dense(4), Dense(4, name='dense'),", "image",
         "layer 3 (Dense) would be named 'dense', which layer 2 (Dense) already is; names in a model must be unique"),
        ("Dense(4, name='image'),", "image", "layer 2 (Dense) would be named 'image', which the input already is"),
        ("", "probabilities", "layer 2 (Dense) would be named 'probabilities', which the input already is"),
        ("", "preprocess", "image_input(name='preprocess') is the name of the input's preprocessing layer"),
        ("", "class", "image_input(name=...) expects an identifier that is not a Python keyword"),
    ],
)  # fmt: skip
def test_names_keras_would_refuse_fail_at_their_line(
    workspace: Path, hidden: str, input_name: str, message: str
) -> None:
    """Two layers of one name (given, or Keras' default), or an input named like a layer, or a Python keyword as
    the input's name (the serving signature's argument): Keras or the export would refuse them mid-build."""
    text = GOOD_LAYERS.format(name="tiny", hidden=hidden).replace('image_input("image"', f'image_input("{input_name}"')
    write_definition(workspace, "tiny.py", text)
    assert message in load_error(workspace)
