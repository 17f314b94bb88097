"""The workspace: found upward but refused when unsafe unless named, and definitions run only for commands that
need targets."""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path

import numpy as np
import pytest

from buildsys.cli import main
from tests.conftest import write_definition
from tests.data_helpers import digits

DIGITS = """
    from buildsys.dsl import *

    model(name="d", data=datasets.sklearn_digits(), inputs=image_input(shape=(8, 8)),
          layers=[Flatten(), Dense(10, activation="softmax")], train=train(epochs=1))
"""


@pytest.fixture
def shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A workspace whose model_defs/ everyone may write to, entered from a sub-folder (found by searching up)."""
    root = tmp_path / "shared"
    write_definition(root, "d.py", DIGITS)
    (root / "model_defs").chmod(0o777)
    (root / "sub").mkdir()
    monkeypatch.chdir(root / "sub")
    monkeypatch.delenv("BUILDSYS_WORKSPACE", raising=False)
    return root


def test_a_world_writable_workspace_found_upward_is_refused_in_one_line(shared: Path, capsys) -> None:
    assert main(["list"]) == 2
    error = capsys.readouterr().err
    assert error == (
        f"error: unsafe workspace: {shared / 'model_defs'} is writable by every user, and its definitions would run "
        f"as you; if you trust it, name it: --workspace {shared} (or $BUILDSYS_WORKSPACE={shared})\n"
    )


def test_a_named_workspace_is_trusted(shared: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["list", "--workspace", str(shared), "--json"]) == 0
    assert [row["label"] for row in json.loads(capsys.readouterr().out)] == ["//model_defs:d"]
    assert main(["--workspace", str(shared), "list", "--json"]) == 0  # the flag before the command
    assert json.loads(capsys.readouterr().out)[0]["state"] == "not built"
    monkeypatch.setenv("BUILDSYS_WORKSPACE", str(shared))
    assert main(["list"]) == 0


def test_a_workspace_owned_by_another_user_is_refused(shared: Path, capsys) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a folder to another user needs root")
    (shared / "model_defs").chmod(0o755)
    nobody = pwd.getpwnam("nobody").pw_uid
    os.chown(shared / "model_defs", nobody, -1)
    assert main(["list"]) == 2
    assert f"is owned by another user (uid {nobody})" in capsys.readouterr().err
    assert main(["list", "--workspace", str(shared)]) == 0


@pytest.mark.parametrize("unsafe", ["d.py", "_helpers.py", "vision", "vision/cnn.py"])
def test_one_world_writable_folder_or_file_under_a_safe_model_defs_is_refused(
    shared: Path, unsafe: str, capsys
) -> None:
    write_definition(shared, "vision/cnn.py", "")
    write_definition(shared, "_helpers.py", "")
    (shared / "model_defs").chmod(0o755)
    assert main(["list", "--json"]) == 0
    capsys.readouterr()
    path = shared / "model_defs" / unsafe
    path.chmod(0o777 if path.is_dir() else 0o666)
    assert main(["list"]) == 2
    assert capsys.readouterr().err == (
        f"error: unsafe workspace: {path} is writable by every user, and its definitions would run as you; if you "
        f"trust it, name it: --workspace {shared} (or $BUILDSYS_WORKSPACE={shared})\n"
    )
    assert main(["list", "--workspace", str(shared)]) == 0


def test_a_symbolic_link_is_judged_by_what_it_points_to(shared: Path, tmp_path: Path, capsys) -> None:
    (shared / "model_defs").chmod(0o755)
    outside = tmp_path / "elsewhere.py"
    outside.write_text("")
    outside.chmod(0o666)
    (shared / "model_defs" / "linked.py").symlink_to(outside)
    assert main(["list"]) == 2
    assert f"unsafe workspace: {shared / 'model_defs' / 'linked.py'} is writable" in capsys.readouterr().err
    outside.chmod(0o644)
    assert main(["list"]) == 0


def test_a_definition_file_owned_by_another_user_is_refused(shared: Path, capsys) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    (shared / "model_defs").chmod(0o755)
    nobody = pwd.getpwnam("nobody").pw_uid
    os.chown(shared / "model_defs" / "d.py", nobody, -1)
    assert main(["list"]) == 2
    assert f"model_defs/d.py is owned by another user (uid {nobody})" in capsys.readouterr().err


def test_a_named_folder_must_hold_definitions(tmp_path: Path, capsys) -> None:
    assert main(["list", "--workspace", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"error: {tmp_path} (named by --workspace or $BUILDSYS_WORKSPACE) holds no model_defs/ folder\n"
    )


def test_data_commands_run_no_definitions(workspace: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    images, labels = digits(50)
    np.savez(workspace / "d.npz", x_train=images[:40], y_train=labels[:40], x_test=images[40:], y_test=labels[40:])
    write_definition(workspace, "broken.py", "raise RuntimeError('this definition must not run')\n")
    monkeypatch.chdir(workspace)
    assert main(["data", "inspect", "d.npz", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["splits"]["train"]["images"] == 40
    assert main(["data", "import", "d.npz", "--to", f"sqlite:///{workspace / 'd.db'}"]) == 0
    assert main(["clean"]) == 0
    capsys.readouterr()
    assert main(["data", "inspect", "some_label"]) == 2  # a label needs the definitions, which then run
    assert "broken.py:1: RuntimeError: this definition must not run." in capsys.readouterr().err


def test_data_commands_in_an_unsafe_workspace_read_paths_but_not_labels(shared: Path, capsys) -> None:
    images, labels = digits(50)
    np.savez(shared / "d.npz", x_train=images[:40], y_train=labels[:40], x_test=images[40:], y_test=labels[40:])
    assert main(["data", "inspect", str(shared / "d.npz")]) == 0
    capsys.readouterr()
    assert main(["data", "inspect", "d"]) == 2
    assert "unsafe workspace" in capsys.readouterr().err


def test_a_definition_that_cannot_be_read_fails_in_one_line_naming_it(workspace: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(workspace)
    (workspace / "model_defs" / "latin1.py").write_bytes(b"# caf\xe9\n")
    assert main(["list"]) == 2
    assert capsys.readouterr().err == "error: model_defs/latin1.py: the definition is not UTF-8 text (byte 5).\n"
    (workspace / "model_defs" / "latin1.py").unlink()
    (workspace / "model_defs" / "gone.py").symlink_to(workspace / "nowhere.py")
    assert main(["list"]) == 2
    assert capsys.readouterr().err == (
        "error: model_defs/gone.py: cannot read the definition: No such file or directory.\n"
    )
