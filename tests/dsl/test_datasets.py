"""Data source declarations: the definition language declares, and reads data only through the workspace's probe."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from buildsys.dsl import datasets
from buildsys.dsl.datasets import Probed, declaring
from buildsys.errors import DataError, DefinitionError


def test_the_definition_language_imports_no_source_code() -> None:
    probe = "import sys, buildsys.dsl; print(sorted(m for m in sys.modules if m.startswith('buildsys.sources')))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_a_source_that_reads_files_needs_a_workspace() -> None:
    with pytest.raises(DefinitionError, match=r"datasets.npz\(\) reads its data's files or database when declared"):
        datasets.npz("data/digits.npz")


def test_the_workspace_probe_answers_and_its_errors_name_the_line(tmp_path: Path) -> None:
    asked = []

    def probe(kind: str, params: dict, root: Path) -> Probed:
        asked.append((kind, params["path"], root))
        if params["path"] == "missing":
            raise DataError("missing does not exist")
        return Probed((8, 8), ["a", "b"])

    with declaring(tmp_path, probe):
        source = datasets.npz("data/digits.npz")
        with pytest.raises(DefinitionError, match=r"test_datasets.py:\d+: npz\('missing'\): missing does not exist\."):
            datasets.npz("missing")
    assert (source.image_shape, source.class_names, source.base_dir) == ((8, 8), ("a", "b"), tmp_path)
    assert asked[0] == ("npz", "data/digits.npz", tmp_path)
