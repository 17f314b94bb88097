"""`cache stats` and `cache gc`: sizes by kind, and removal of only what is safe (never a model's newest version)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from buildsys.errors import BuildsysError
from buildsys.store import OutputTree
from buildsys.tree_usage import gc, parse_size, usage
from modelrepo import Manifest, Tensor
from tests.conftest import run_buildsys


def _publish(tree: OutputTree, name: str, payload: int, origin: str = "built") -> int:
    staging = tree.staging_dir(name)
    (staging / "model.onnx").write_bytes(b"x" * payload)
    manifest = Manifest(
        name=name,
        content_hash=f"{payload:064x}",
        inputs=(Tensor("image", "UINT8", (-1, 8, 8)),),
        outputs=(Tensor("probabilities", "FP32", (-1, 2)),),
        class_names=("a", "b"),
        extra={"origin": {"kind": origin}},
    )
    return tree.publish(name, staging, manifest, 8)


@pytest.fixture
def tree(tmp_path: Path) -> OutputTree:
    tree = OutputTree(tmp_path / "build-out")
    for payload in (1000, 2000, 3000):
        _publish(tree, "digits", payload)
    _publish(tree, "mnist", 5000, origin="fetched")
    (tree.root / "work" / "digits" / "abc").mkdir(parents=True)
    (tree.root / "work" / "digits" / "abc" / "checkpoint").write_bytes(b"c" * 700)
    (tree.root / "features" / "digits").mkdir(parents=True)
    (tree.root / "features" / "digits" / "base-data.npz").write_bytes(b"f" * 4000)
    (tree.root / "staging" / "digits" / "999999999-dead").mkdir(parents=True)  # no such process
    (tree.root / "staging" / "digits" / "999999999-dead" / "model.onnx").write_bytes(b"s" * 300)
    (tree.root / "staging" / "digits" / f"{os.getpid()}-alive").mkdir()  # a build running now
    return tree


def test_stats_counts_each_kind(tree: OutputTree) -> None:
    found = usage(tree).to_json()
    assert [v["version"] for v in found["models"]["digits"]["versions"]] == [1, 2, 3]
    assert found["models"]["mnist"]["versions"][0]["origin"] == "fetched"
    assert found["work"]["entries"] == 1 and found["work"]["bytes"] == 700
    assert found["features"] == {"entries": 1, "bytes": 4000}
    assert found["staging_leftovers"] == {"entries": 1, "bytes": 300}
    assert "1 fetched from a remote cache" in usage(tree).text()


def test_gc_without_limits_removes_only_dead_staging(tree: OutputTree) -> None:
    removed = gc(tree)
    assert [r.reason for r in removed] == ["staging folder of a dead build"]
    assert (tree.root / "staging" / "digits" / f"{os.getpid()}-alive").is_dir()
    assert tree.versions("digits") == [1, 2, 3] and (tree.root / "work" / "digits" / "abc").is_dir()


def test_gc_keep_and_max_size_never_remove_a_newest_version(tree: OutputTree) -> None:
    assert [r.path.name for r in gc(tree, keep=2, dry_run=True)][1:] == ["1"]
    assert tree.versions("digits") == [1, 2, 3]  # a dry run removes nothing
    gc(tree, keep=2)
    assert tree.versions("digits") == [2, 3] and tree.versions("mnist") == [1]
    removed = gc(tree, max_size=1)  # as small as can be: everything removable goes, newest versions stay
    assert tree.versions("digits") == [3] and tree.versions("mnist") == [1]
    assert not (tree.root / "features" / "digits" / "base-data.npz").exists()
    assert (tree.root / "work" / "digits" / "abc").is_dir()  # resume state is never garbage
    assert {r.reason for r in removed} == {"digits version 2 (not the newest)", "features cache entry"}
    assert _publish(tree, "digits", 4000) == 4  # numbering goes on past removed versions
    with pytest.raises(BuildsysError, match="not an older published version"):
        tree.remove_version("digits", 4)


def test_sizes_and_limits_are_checked_in_one_line() -> None:
    assert parse_size("1.5GiB") == 3 << 29 and parse_size("500M") == 500 << 20 and parse_size("42") == 42
    with pytest.raises(BuildsysError, match="--max-size expects a size"):
        parse_size("lots")
    with pytest.raises(BuildsysError, match="--keep must be at least 1"):
        gc(OutputTree(Path("/nonexistent")), keep=0)


def test_cache_commands(tree: OutputTree) -> None:
    workspace = tree.root.parent
    (workspace / "model_defs").mkdir()
    stats = run_buildsys("cache", "stats", "--json", cwd=workspace)
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["models"]["digits"]["bytes"] > 6000
    collected = run_buildsys("cache", "gc", "--keep", "1", cwd=workspace)
    assert collected.returncode == 0, collected.stderr
    assert "digits version 2 (not the newest)" in collected.stdout and tree.versions("digits") == [3]
    bad = run_buildsys("cache", "gc", "--max-size", "huge", cwd=workspace)
    assert bad.returncode == 2 and "argument --max-size: expects a size such as 500M" in bad.stderr
