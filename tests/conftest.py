"""Shared fixtures: throw-away workspaces, and one real build of `digits` reused by the tests that read it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.mariadb import mariadb, mariadb_url  # noqa: F401 - fixtures: a real MariaDB server

REPO = Path(__file__).resolve().parent.parent


def fuzz_settings(default_examples: int) -> Any:
    """Hypothesis settings of a fuzz test: `default_examples` examples drawn the same way on every run, so CI
    reruns exactly what passed here (as the serving fuzz tests do); or `$BUILDSYS_FUZZ_EXAMPLES` examples drawn
    afresh, which `bench/fuzz_data.py` sets for long runs."""
    from hypothesis import HealthCheck, settings

    long_run = "BUILDSYS_FUZZ_EXAMPLES" in os.environ
    return settings(
        max_examples=int(os.environ["BUILDSYS_FUZZ_EXAMPLES"]) if long_run else default_examples,
        derandomize=not long_run,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


def write_definition(root: Path, filename: str, source: str) -> Path:
    """Writes a definition file into `root/model_defs/` and returns its path."""
    path = root / "model_defs" / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source).lstrip(), encoding="utf-8")
    return path


def run_buildsys(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Runs `python -m buildsys ARGS` in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "buildsys", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """An empty workspace (a folder with model_defs/)."""
    (tmp_path / "model_defs").mkdir()
    return tmp_path


@pytest.fixture(scope="session")
def digits_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace holding the shipped `digits` definition, built once for the whole session.

    The build's stdout and stderr (off a terminal) are kept in `build.stdout` and `build.stderr` beside
    model_defs/, for the tests of what a build prints.
    """
    root = tmp_path_factory.mktemp("digits-workspace")
    (root / "model_defs").mkdir()
    shutil.copy(REPO / "model_defs" / "digits.py", root / "model_defs" / "digits.py")
    result = run_buildsys("build", "//model_defs:digits", cwd=root)
    assert result.returncode == 0, result.stderr
    (root / "build.stdout").write_text(result.stdout, encoding="utf-8")
    (root / "build.stderr").write_text(result.stderr, encoding="utf-8")
    return root
