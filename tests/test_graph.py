"""The target graph: dependency edges from target(...) bases, their checks, build order, keys and `query`."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildsys.build import BuildOptions, plan
from buildsys.errors import BuildsysError, DefinitionError, DependencyCycleError
from buildsys.graph import Dependency, TargetGraph
from buildsys.store import OutputTree
from buildsys.workspace import Workspace
from tests.conftest import run_buildsys, write_definition

CHAIN = """
from buildsys.dsl import *

model(
    name="base_cnn",
    data=datasets.sklearn_digits(),
    inputs=image_input(shape=(8, 8, 1)),
    layers=[Conv2D(4, 3, activation="relu"), Flatten(), Dense(8, activation="relu", name="features"),
            Dense(10, activation="softmax")],
    train=train(epochs=1),
)
model(
    name="middle",
    data=datasets.sklearn_digits(split_seed=1),
    inputs=image_input(shape=(8, 8, 1)),
    base=target("//model_defs:base_cnn", layer="features"),
    head=mlp(units=[6, 4]),
    train=train(epochs=1),
)
model(
    name="top",
    data=datasets.sklearn_digits(split_seed=2),
    inputs=image_input(shape=(8, 8, 1)),
    base=target("middle", layer="hidden_2"),
    head=logistic_regression(reg_param=0.01, elastic_net_param=0.5),
    train=train(epochs=1),
)
"""


def transfer_definition(name: str, base: str, layer: str = "features", shape: str = "(8, 8, 1)") -> str:
    return f"""
from buildsys.dsl import *

model(
    name="{name}",
    data=datasets.sklearn_digits(),
    inputs=image_input(shape={shape}),
    base=target("{base}", layer="{layer}"),
    head=logistic_regression(),
    train=train(epochs=1),
)
"""


def test_deps_rdeps_and_build_order(workspace: Path) -> None:
    write_definition(workspace, "chain.py", CHAIN)
    graph = TargetGraph(Workspace(workspace))
    base, middle, top = "//model_defs:base_cnn", "//model_defs:middle", "//model_defs:top"
    assert graph.deps(top) == [middle]
    assert graph.deps(top, transitive=True) == [middle, base]
    assert graph.rdeps(base, transitive=True) == [middle, top]
    assert graph.rdeps(top) == []
    order = [target.label for target in graph.build_order([graph.target(top), graph.target(base)])]
    assert order == [base, middle, top]
    dot = graph.to_dot([top])
    assert dot.startswith("digraph buildsys {")
    assert f'"{top}" -> "{middle}";' in dot and f'"{middle}" -> "{base}";' in dot


def test_cycle_is_reported_with_its_path_before_any_work(workspace: Path) -> None:
    write_definition(workspace, "a.py", transfer_definition("a", "b"))
    write_definition(workspace, "b.py", transfer_definition("b", "a"))
    cycle = r"dependency cycle: //model_defs:a -> //model_defs:b -> //model_defs:a"
    with pytest.raises(DependencyCycleError, match=cycle):
        TargetGraph(Workspace(workspace))
    result = run_buildsys("build", "a", cwd=workspace)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "a.py:" in result.stderr and "dependency cycle" in result.stderr
    assert not (workspace / "build-out").exists()


def test_self_dependency_is_a_cycle(workspace: Path) -> None:
    write_definition(workspace, "a.py", transfer_definition("a", "a"))
    with pytest.raises(DependencyCycleError, match=r"//model_defs:a -> //model_defs:a"):
        TargetGraph(Workspace(workspace))


@pytest.mark.parametrize(
    ("base", "layer", "shape", "message"),
    [
        ("nope", "features", "(8, 8, 1)", r"target\('nope'\) names no target; known targets: "),
        ("base_cnn", "missing", "(8, 8, 1)", r"has no layer named 'missing'; it can be cut at: 'features'"),
        ("base_cnn", "features", "(8, 8)", r"the image input must match its base //model_defs:base_cnn"),
    ],
)
def test_broken_target_bases_are_definition_errors(
    workspace: Path, base: str, layer: str, shape: str, message: str
) -> None:
    write_definition(workspace, "chain.py", CHAIN)
    write_definition(workspace, "broken.py", transfer_definition("broken", base, layer, shape))
    with pytest.raises(DefinitionError, match=message) as raised:
        TargetGraph(Workspace(workspace))
    assert "broken.py:" in str(raised.value)


def test_dependency_hash_is_part_of_the_key(workspace: Path) -> None:
    write_definition(workspace, "chain.py", CHAIN)
    loaded = Workspace(workspace)
    tree = OutputTree(workspace / "build-out")
    base, middle = loaded.targets["//model_defs:base_cnn"], loaded.targets["//model_defs:middle"]
    first = plan(middle, tree, BuildOptions(), [Dependency(base, "a" * 64)])
    again = plan(middle, tree, BuildOptions(), [Dependency(base, "a" * 64)])
    rebuilt = plan(middle, tree, BuildOptions(), [Dependency(base, "b" * 64)])
    assert first.key.digest == again.key.digest != rebuilt.key.digest
    assert first.upstream == {"//model_defs:base_cnn": "a" * 64}
    with pytest.raises(BuildsysError, match="which was not planned first"):
        plan(middle, tree, BuildOptions())


def test_options_a_transfer_target_cannot_honour_are_dropped_with_one_warning(workspace: Path, capsys) -> None:
    write_definition(workspace, "chain.py", CHAIN)
    loaded = Workspace(workspace)
    tree = OutputTree(workspace / "build-out")
    base, middle = loaded.targets["//model_defs:base_cnn"], loaded.targets["//model_defs:middle"]
    dependency = [Dependency(base, "a" * 64)]
    plain = plan(middle, tree, BuildOptions(), dependency)
    everything = BuildOptions(strategy="mirrored", mixed_precision=True, jit=True, tensorboard=True)
    asked = plan(middle, tree, everything, dependency)
    assert asked.key.digest == plain.key.digest  # neither the key nor the manifest claims what did not happen
    assert asked.options == BuildOptions()  # what was dropped is back at its default
    assert capsys.readouterr().err == (
        "warning: //model_defs:middle: --strategy mirrored, --mixed-precision, --jit, --tensorboard do not apply to "
        "a transfer target (its head is fitted on cached features, and fine-tuning runs under the default "
        "strategy); it builds without\n"
    )
    deterministic = plan(middle, tree, BuildOptions(deterministic=True), dependency)
    assert deterministic.options.deterministic and deterministic.key.digest != plain.key.digest
    assert plan(base, tree, everything).options == everything  # a target of its own keeps them


def test_query_prints_the_graph(workspace: Path) -> None:
    write_definition(workspace, "chain.py", CHAIN)
    deps = run_buildsys("query", "deps", "top", cwd=workspace)
    assert deps.returncode == 0, deps.stderr
    assert deps.stdout.split() == ["//model_defs:top", "//model_defs:middle", "//model_defs:base_cnn"]
    direct = run_buildsys("query", "rdeps", "base_cnn", "--direct", cwd=workspace)
    assert direct.stdout.split() == ["//model_defs:base_cnn", "//model_defs:middle"]
    dot = run_buildsys("query", "rdeps", "base_cnn", "--dot", cwd=workspace)
    assert dot.stdout.startswith("digraph buildsys {") and '"//model_defs:top" -> "//model_defs:middle";' in dot.stdout
