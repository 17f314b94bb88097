"""Planning and building targets together with their dependencies, each after the targets it is built on.

The command line hands the targets a user named; this module walks `buildsys.graph` so that a missing or stale
dependency is built first and its content hash flows into its dependents' keys. Options a user gave for the
named targets (`--force`, `--seed`, `--hparams`) do not apply to their dependencies, which build as declared.
Nothing here imports TensorFlow: a no-op build of a dependent plans every target of its chain from files alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from buildsys.build import BuildOptions, BuildResult, Plan, build, plan
from buildsys.graph import Dependency, TargetGraph
from buildsys.store import OutputTree
from buildsys.workspace import Target, Workspace

UNPLANNED = "unplanned"  # stands for a dependency whose key cannot be computed yet (its data is not here)


def dependency_options(options: BuildOptions) -> BuildOptions:
    """The options a dependency builds with: the user's machine settings, none of the per-target overrides."""
    return dataclasses.replace(options, force=False, seed=None, hparams={})


def build_all(
    workspace: Workspace,
    tree: OutputTree,
    targets: Sequence[Target],
    options: BuildOptions,
    options_for: Callable[[Target], BuildOptions] | None = None,
) -> list[BuildResult]:
    """Builds `targets` and, first, whatever they depend on; returns every result in build order.

    `options_for` gives a named target its own options (e.g. its `--hparams`); dependencies build with
    `dependency_options(options)`.

    Raises:
        DefinitionError: for a broken dependency (unknown label or layer, a cycle) before anything is built.
    """
    graph = TargetGraph(workspace)
    requested = {target.label for target in targets}
    built: dict[str, Dependency] = {}
    results = []
    for target in graph.build_order(targets):
        dependencies = tuple(built[label] for label in graph.deps(target.label))
        if target.label not in requested:
            chosen = dependency_options(options)
        else:
            chosen = options_for(target) if options_for else options
        result = build(target, tree, chosen, dependencies)
        built[target.label] = Dependency(target, result.content_hash, dependencies)
        results.append(result)
    return results


def plan_all(
    workspace: Workspace, tree: OutputTree, targets: Sequence[Target], options: BuildOptions
) -> dict[str, Plan]:
    """The plan of each of `targets` and of their dependencies, by label (no TensorFlow, nothing built)."""
    graph = TargetGraph(workspace)
    planned: dict[str, Dependency] = {}
    plans: dict[str, Plan] = {}
    for target in graph.build_order(targets):
        dependencies = tuple(planned[label] for label in graph.deps(target.label))
        current = plan(target, tree, options, dependencies)
        plans[target.label] = current
        planned[target.label] = Dependency(target, current.key.digest if current.key else UNPLANNED, dependencies)
    return plans


def build_dependencies(
    workspace: Workspace, tree: OutputTree, target: Target, options: BuildOptions
) -> tuple[Dependency, ...]:
    """Builds what `target` is built on (not `target` itself) and returns its direct dependencies."""
    graph = TargetGraph(workspace)
    built: dict[str, Dependency] = {}
    for dependency in graph.build_order([graph.target(label) for label in graph.deps(target.label)]):
        inner = tuple(built[label] for label in graph.deps(dependency.label))
        result = build(dependency, tree, dependency_options(options), inner)
        built[dependency.label] = Dependency(dependency, result.content_hash, inner)
    return tuple(built[label] for label in graph.deps(target.label))
