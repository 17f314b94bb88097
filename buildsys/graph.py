"""The target graph: which targets a target depends on, the order to build them in, and what depends on what.

A target depends on another when its base is `target("//model_defs:NAME", layer=...)`. The graph is built from
the loaded definitions only — no TensorFlow, no output tree — so that a no-op build of a dependent, `list` and
`query` stay as cheap as loading the workspace. A label that names no target, a layer the base does not have, an
image input that differs from the base's, or a cycle is a definition error (exit 2) raised before any work.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from buildsys.dsl.bases import FEATURES_LAYER, TargetBase
from buildsys.errors import DefinitionError, DependencyCycleError, LabelError
from buildsys.workspace import Target, Workspace


@dataclass(frozen=True)
class Dependency:
    """A dependency as a dependent's build sees it: the target, the content hash it was built (or is up to date)
    with — the value that enters the dependent's cache key — its own dependencies, which rebuilding its model
    from the definitions needs, and the published version the dependent builds on with the digest of that
    version's weights (what its cached features are keyed by); None while it is not published."""

    target: Target
    content_hash: str
    dependencies: tuple[Dependency, ...] = ()
    version: int | None = None
    weights_digest: str | None = None


def cut_layers(target: Target) -> tuple[str, ...]:
    """The layer names a dependent may cut `target` at."""
    transfer = target.spec.transfer
    if transfer is not None:
        return (FEATURES_LAYER, *transfer.head.hidden_layer_names())
    return tuple(name for layer in target.spec.layers if (name := layer.arguments.get("name")) is not None)


class TargetGraph:
    """The dependency edges between a workspace's targets, checked when the graph is made.

    Raises:
        DefinitionError: for a `target(...)` base naming no target or no layer of it, or an image input that
            differs from the base's.
        DependencyCycleError: for a cycle, naming the labels around it.
    """

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self._deps: dict[str, tuple[str, ...]] = {}
        for label, target in sorted(workspace.targets.items()):
            base = target.spec.transfer.base if target.spec.transfer else None
            self._deps[label] = (self._resolve(target, base).label,) if isinstance(base, TargetBase) else ()
        self._rdeps: dict[str, list[str]] = {label: [] for label in self._deps}
        for label, deps in self._deps.items():
            for dep in deps:
                self._rdeps[dep].append(label)
        self._check_cycles()
        for label, deps in self._deps.items():
            for dep in deps:
                self._check_edge(workspace.targets[label], workspace.targets[dep])

    def _resolve(self, target: Target, base: TargetBase) -> Target:
        try:
            matches = self.workspace.resolve([base.label])
        except LabelError:
            known = ", ".join(sorted(self.workspace.targets))
            raise DefinitionError(
                f"{target.label}: target({base.label!r}) names no target; known targets: {known}.", base.location
            ) from None
        if len(matches) != 1:
            found = ", ".join(match.label for match in matches)
            raise DefinitionError(
                f"{target.label}: target({base.label!r}) must name one target. Received a pattern matching {found}.",
                base.location,
            )
        return matches[0]

    def _check_edge(self, target: Target, dependency: Target) -> None:
        base = target.spec.transfer.base
        layers = cut_layers(dependency)
        if base.layer not in layers:
            offered = ", ".join(repr(name) for name in layers) or "none (give a layer name=... in its definition)"
            raise DefinitionError(
                f"{target.label}: {dependency.label} has no layer named {base.layer!r}; it can be cut at: {offered}.",
                base.location,
            )
        mine, theirs = target.spec.inputs, dependency.spec.inputs
        if (mine.shape, mine.dtype, mine.scale, mine.offset) != (
            theirs.shape,
            theirs.dtype,
            theirs.scale,
            theirs.offset,
        ):
            raise DefinitionError(
                f"{target.label}: the image input must match its base {dependency.label}, whose preprocessing it "
                f"reuses: image_input(shape={theirs.shape}, dtype={theirs.dtype!r}, scale={theirs.scale:g}, "
                f"offset={theirs.offset:g}). Received: image_input(shape={mine.shape}, dtype={mine.dtype!r}, "
                f"scale={mine.scale:g}, offset={mine.offset:g}).",
                mine.location or target.spec.location,
            )

    def _check_cycles(self) -> None:
        """Depth-first search; a label met again while still on the path closes a cycle."""
        done: set[str] = set()

        def visit(label: str, path: list[str]) -> None:
            if label in path:
                cycle = [*path[path.index(label) :], label]
                first = self.workspace.targets[cycle[0]].spec
                raise DependencyCycleError(
                    f"dependency cycle: {' -> '.join(cycle)}", first.transfer.base.location if first.transfer else None
                )
            if label in done:
                return
            for dep in self._deps[label]:
                visit(dep, [*path, label])
            done.add(label)

        for label in self._deps:
            visit(label, [])

    def target(self, label: str) -> Target:
        return self.workspace.targets[label]

    def deps(self, label: str, transitive: bool = False) -> list[str]:
        """What `label` depends on, directly or (transitive) all the way down, nearest first."""
        return self._walk(label, self._deps, transitive)

    def rdeps(self, label: str, transitive: bool = False) -> list[str]:
        """What depends on `label`, directly or (transitive) all the way up, nearest first."""
        return self._walk(label, {key: tuple(value) for key, value in self._rdeps.items()}, transitive)

    @staticmethod
    def _walk(label: str, edges: dict[str, tuple[str, ...]], transitive: bool) -> list[str]:
        found: list[str] = []
        frontier = list(edges[label])
        while frontier:
            current = frontier.pop(0)
            if current in found:
                continue
            found.append(current)
            if transitive:
                frontier.extend(edges[current])
        return found

    def build_order(self, targets: Iterable[Target]) -> list[Target]:
        """`targets` and everything they depend on, each after its dependencies (and each once)."""
        ordered: list[str] = []

        def visit(label: str) -> None:
            if label in ordered:
                return
            for dep in self._deps[label]:
                visit(dep)
            ordered.append(label)

        for target in targets:
            visit(target.label)
        return [self.workspace.targets[label] for label in ordered]

    def to_dot(self, labels: Iterable[str], reverse: bool = False) -> str:
        """A Graphviz digraph of `labels` and their (reverse) dependencies; edges point from dependent to base."""
        nodes: list[str] = []
        edges: list[tuple[str, str]] = []
        for label in labels:
            related = self.rdeps(label, transitive=True) if reverse else self.deps(label, transitive=True)
            for node in (label, *related):
                if node not in nodes:
                    nodes.append(node)
        for node in nodes:
            for dep in self._deps[node]:
                if dep in nodes:
                    edges.append((node, dep))
        lines = ["digraph buildsys {"]
        lines += [f'  "{node}";' for node in nodes]
        lines += [f'  "{source}" -> "{dep}";' for source, dep in edges]
        lines.append("}")
        return "\n".join(lines) + "\n"
