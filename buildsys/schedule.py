"""The scheduler: walks the target graph once, plans each target after what it depends on, and runs the plans.

`walk` is the one walk of the graph: each target in build order, handed the resolved `Dependency` of each target
it is built on. `build_all` plans and runs one `BuildJob` per target on it; with `keep_going` (Bazel's `-k`) it
goes on past a failed target, building everything that does not depend on one, and either way its results say
what happened to each target (`summary_table`). A dependent is planned only after its dependencies are built or
up to date, so its plan holds their published versions; `plan_all` plans from files alone (nothing built).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

from buildsys.build import BuildJob, BuildOptions, BuildResult, Plan, RemoteCache, plan
from buildsys.errors import BuildsysError, one_line
from buildsys.graph import Dependency, TargetGraph
from buildsys.store import OutputTree
from buildsys.workspace import Target, Workspace

UNPLANNED = "unplanned"  # stands for a dependency whose key cannot be computed yet (its data is not here)


def dependency_options(options: BuildOptions) -> BuildOptions:
    """The options a dependency builds with: the user's machine settings, none of the per-target overrides."""
    return dataclasses.replace(options, force=False, seed=None, hparams={})


def walk(
    workspace: Workspace, targets: Sequence[Target], step: Callable[[Target, tuple[Dependency, ...]], Dependency]
) -> dict[str, Dependency]:
    """Calls `step(target, dependencies)` for `targets` and everything they depend on, each after its
    dependencies and once; returns what each step returned, by label, in that order.

    Raises:
        DefinitionError: for a broken dependency (unknown label or layer, a cycle) before any step runs.
    """
    graph = TargetGraph(workspace)
    done: dict[str, Dependency] = {}
    for target in graph.build_order(targets):
        done[target.label] = step(target, tuple(done[label] for label in graph.deps(target.label)))
    return done


def resolved(target: Target, tree: OutputTree, content_hash: str, version: int | None, inner: tuple) -> Dependency:
    """`target` as its dependents see it: the content hash they are keyed on, and the published version they
    build on with its weights digest (what their cached features are keyed by)."""
    weights = tree.weights_digest(target.name, version) if version else None
    return Dependency(target, content_hash, inner, version, weights)


def build_all(
    workspace: Workspace,
    tree: OutputTree,
    targets: Sequence[Target],
    options: BuildOptions,
    options_for: Callable[[Target], BuildOptions] | None = None,
    keep_going: bool = False,
    remote: RemoteCache | None = None,
) -> list[BuildResult]:
    """Builds `targets` and, first, whatever they depend on; returns every result in build order.

    `options_for` gives a named target its own options (e.g. its `--hparams`); dependencies build with
    `dependency_options(options)`. A target that fails ends the build — its error is raised as
    `BuildFailed`, carrying every result so far — unless `keep_going`, which records it as failed, skips what
    depends on it, and builds the rest.

    Raises:
        DefinitionError: for a broken dependency (unknown label or layer, a cycle) before anything is built.
        BuildFailed: a target failed (without `keep_going`: the first; with it: after all were tried).
    """
    requested = {target.label for target in targets}
    results: list[BuildResult] = []
    broken: dict[str, BaseException] = {}

    def step(target: Target, dependencies: tuple[Dependency, ...]) -> Dependency:
        blocked = [dependency.target.label for dependency in dependencies if dependency.target.label in broken]
        if blocked:
            broken[target.label] = broken[blocked[0]]
            results.append(BuildResult(target.label, "skipped", 0, "", reason=f"depends on {blocked[0]}"))
            return Dependency(target, "", dependencies)
        if target.label not in requested:
            chosen = dependency_options(options)
        else:
            chosen = options_for(target) if options_for else options
        started = time.perf_counter()
        try:
            result = BuildJob(plan(target, tree, chosen, dependencies), tree, remote).run()
        except Exception as error:  # with keep_going any error fails only its target; else a bug keeps its traceback
            if not keep_going and not isinstance(error, BuildsysError):
                raise
            seconds = round(time.perf_counter() - started, 3)
            results.append(BuildResult(target.label, "failed", 0, "", reason=one_line(error), seconds=seconds))
            if not keep_going:
                raise BuildFailed(error, results) from error
            broken[target.label] = error
            return Dependency(target, "", dependencies)
        result.seconds = round(time.perf_counter() - started, 3)
        results.append(result)
        return resolved(target, tree, result.content_hash, result.version or None, dependencies)

    walk(workspace, targets, step)
    failures = [result for result in results if result.status == "failed"]
    if failures:
        raise BuildFailed(broken[failures[0].label], results)
    return results


class BuildFailed(BuildsysError):
    """A target of a multi-target build failed: the first failure's message and exit code, with every result."""

    def __init__(self, error: BaseException, results: list[BuildResult]) -> None:
        super().__init__(str(error))
        self.error = error
        self.results = results
        self.exit_code = getattr(error, "exit_code", 1)


def summary_table(results: Sequence[BuildResult]) -> str:
    """One row per target: label, result (built vN / up to date (vN) / failed: reason / skipped: depends on X),
    and the seconds it took; Bazel's end-of-build summary."""
    rows = []
    for result in results:
        if result.status in ("built", "fetched"):
            outcome = f"{result.status} v{result.version}"
        elif result.status == "up to date":
            outcome = f"up to date (v{result.version})"
        elif result.status in ("failed", "skipped"):
            outcome = f"{result.status}: {result.reason}"
        else:
            outcome = result.status
        rows.append((result.label, outcome, f"{result.seconds:.1f}s"))
    width = max(len(label) for label, _, _ in rows)
    lines = [f"{'target':<{width}}  {'time':>7}  result"]
    lines += [f"{label:<{width}}  {seconds:>7}  {outcome}" for label, outcome, seconds in rows]
    return "\n".join(lines)


def plan_all(
    workspace: Workspace, tree: OutputTree, targets: Sequence[Target], options: BuildOptions
) -> dict[str, Plan]:
    """The plan of each of `targets` and of their dependencies, by label (no TensorFlow, nothing built)."""
    plans: dict[str, Plan] = {}

    def step(target: Target, dependencies: tuple[Dependency, ...]) -> Dependency:
        current = plans[target.label] = plan(target, tree, options, dependencies)
        digest = current.key.digest if current.key else UNPLANNED
        if current.published_version is not None:  # its own key: it may have been built under another gate
            digest = tree.manifest(target.name, current.published_version).content_hash
        return resolved(target, tree, digest, current.published_version, dependencies)

    walk(workspace, targets, step)
    return plans


def build_dependencies(
    workspace: Workspace, tree: OutputTree, target: Target, options: BuildOptions
) -> tuple[Dependency, ...]:
    """Builds what `target` is built on (not `target` itself) and returns its direct dependencies."""

    def step(current: Target, dependencies: tuple[Dependency, ...]) -> Dependency:
        if current.label == target.label:
            return Dependency(current, "", dependencies)
        result = BuildJob(plan(current, tree, dependency_options(options), dependencies), tree).run()
        return resolved(current, tree, result.content_hash, result.version, dependencies)

    return walk(workspace, [target], step)[target.label].dependencies
