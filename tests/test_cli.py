"""The command line's contract for bad input: one line on stderr, exit code 2, and hints that say what would fit."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from buildsys import __version__
from buildsys.cli import main
from tests.conftest import REPO


def run(argv: list[str]) -> int:
    """`main(argv)`'s exit code, argparse's own exits included."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)


@pytest.fixture
def digits_definition(workspace: Path) -> Path:
    """A workspace holding the shipped digits definition, not built (nothing here trains)."""
    shutil.copy(REPO / "model_defs" / "digits.py", workspace / "model_defs" / "digits.py")
    return workspace


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["build"], "the following arguments are required: LABEL"),
        (["build", "digits", "--bogus"], "unrecognized arguments: --bogus"),
        (["build", "digits", "--strategy", "quantum"], "argument --strategy: invalid choice: 'quantum'"),
        (["build", "digits", "--hparams", "units"], "--hparams expects NAME=VALUE[,NAME=VALUE...]; received 'units'"),
        (["build", "digits", "--cluster", "a:1,b:2"], "--cluster and --task go together"),
        (["build", "digits", "--data-dir", "/nope"], "argument --data-dir: '/nope' does not exist"),
        (["tune", "digits", "--tuner", "hyperband", "--max-trials", "3"], "--max-trials does not apply to hyperband"),
        (["data", "inspect", "/nope"], "'/nope' matches no file, folder, database URL or label"),
        (["data", "inspect", "hdfs://nn/t.parquet"], "no database driver has the scheme 'hdfs'; a filesystem URL"),
        (["data", "inspect", "digits", "--image-size", "8by8"], "--image-size expects HEIGHTxWIDTH"),
        (["show", "digitz"], "did you mean //model_defs:digits?"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    digits_definition: Path, arguments: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run([*arguments, "--workspace", str(digits_definition)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert expected in err
    assert not (digits_definition / "build-out").exists()


def test_data_dir_that_is_a_file_is_refused_up_front(
    digits_definition: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    a_file = digits_definition / "model_defs" / "digits.py"
    assert run(["build", "digits", "--data-dir", str(a_file), "--workspace", str(digits_definition)]) == 2
    assert f"argument --data-dir: '{a_file}' is a file, not a folder (see: buildsys build --help)" in (
        capsys.readouterr().err
    )
    monkeypatch.setenv("BUILDSYS_DATA_DIR", str(digits_definition / "missing"))
    assert run(["list", "--workspace", str(digits_definition)]) == 2
    assert "$BUILDSYS_DATA_DIR: " in capsys.readouterr().err


def test_near_labels_are_suggested(digits_definition: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for typo in ("digitz", ":digit", "//model_defs:digts"):
        assert run(["build", typo, "--workspace", str(digits_definition)]) == 2
        assert "did you mean //model_defs:digits? known targets: //model_defs:digits" in capsys.readouterr().err
    assert run(["build", "cifar", "--workspace", str(digits_definition)]) == 2
    assert "did you mean" not in capsys.readouterr().err


def test_hyperparameter_errors_state_the_allowed_values(
    digits_definition: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["build", "digits", "--hparams", "units=17", "--workspace", str(digits_definition)]) == 2
    err = capsys.readouterr().err
    assert "digits.py:12: hyperparameter 'units' does not allow the value 17 (int); " in err
    assert "it allows integers from 16 to 256 in steps of 16." in err
    assert run(["build", "digits", "--hparams", "learning_rate=2", "--workspace", str(digits_definition)]) == 2
    assert "it allows numbers from 0.0001 to 0.1." in capsys.readouterr().err


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--version"]) == 0
    assert capsys.readouterr().out == f"buildsys {__version__}\n"
    assert run(["--help"]) == 0
    shown = capsys.readouterr().out
    assert "Builds Keras image classifiers" in shown and "examples:\n  buildsys build //model_defs:digits" in shown
    assert "The command line: one function per command" not in shown  # cli.py's docstring is for developers


def test_build_out_names_the_output_tree_and_output_is_a_deprecated_alias(
    digits_definition: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = tmp_path / "elsewhere"
    assert run(["clean", "--build-out", str(tree), "--workspace", str(digits_definition)]) == 0
    assert run(["list", "--output", str(tree), "--workspace", str(digits_definition)]) == 0
    captured = capsys.readouterr()
    assert "warning: --output is deprecated for the output tree; use --build-out" in captured.err
    assert "not built" in captured.out
