"""The workspace: where definitions live, how they are loaded, and how labels name targets.

A workspace is a folder with a `model_defs/` tree. Every `*.py` file under it is executed with the definition
language in scope; each `model(...)` call it makes declares one target, labelled `//<folder>:<name>`
(`//model_defs:digits`). Labels accept the short form `digits` and the pattern `//model_defs/...`. Loading a
definition never imports TensorFlow, so it is cheap enough for every command, including no-op builds.
"""

from __future__ import annotations

import difflib
import os
import traceback
from dataclasses import dataclass
from pathlib import Path

from buildsys.dsl.specs import ModelSpec, collect_targets, stop_collecting
from buildsys.errors import DefinitionError, LabelError, Location

DEFINITIONS_DIR = "model_defs"


@dataclass(frozen=True)
class Target:
    """A declared target with its label."""

    label: str
    spec: ModelSpec

    @property
    def name(self) -> str:
        return self.spec.name


def find_root(start: Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: the current directory) that holds `model_defs/`.

    Raises:
        LabelError: when there is none, saying where it looked.
    """
    start = (start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / DEFINITIONS_DIR).is_dir():
            return folder
    raise LabelError(f"no {DEFINITIONS_DIR}/ folder in {start} or any folder above it; run buildsys in a workspace")


def _definition_error(error: BaseException, path: Path) -> DefinitionError:
    """Turns an exception raised while executing a definition file into one line naming its file and line."""
    if isinstance(error, DefinitionError):
        return error
    if isinstance(error, SyntaxError):
        return DefinitionError(f"syntax error: {error.msg}.", Location(str(path), error.lineno or 0))
    line = 0
    for frame in traceback.extract_tb(error.__traceback__):
        if Path(frame.filename).resolve() == path.resolve():
            line = frame.lineno or 0
    message = str(error)
    if isinstance(error, NameError):
        from buildsys import dsl

        message = f"{error}; a definition may use: {', '.join(dsl.__all__)}"
    elif isinstance(error, TypeError):
        message = f"{error}"
    return DefinitionError(f"{type(error).__name__}: {message}.", Location(str(path), line))


def load_file(path: Path) -> list[ModelSpec]:
    """Executes one definition file and returns the targets it declares."""
    import buildsys.dsl as dsl

    source = path.read_text(encoding="utf-8")
    namespace = {"__name__": f"model_defs.{path.stem}", "__file__": str(path)}
    namespace.update({name: getattr(dsl, name) for name in dsl.__all__})
    targets, token = collect_targets()
    try:
        exec(compile(source, str(path), "exec"), namespace)  # noqa: S102 - definitions are the user's own code
    except Exception as error:  # every failure in a definition becomes one readable line
        raise _definition_error(error, path) from None
    finally:
        stop_collecting(token)
    return targets


class Workspace:
    """All targets of a workspace, loaded once per command."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.targets: dict[str, Target] = {}
        self._load()

    def _load(self) -> None:
        definitions = self.root / DEFINITIONS_DIR
        by_name: dict[str, Target] = {}
        for path in sorted(definitions.rglob("*.py")):
            if path.name.startswith("_"):
                continue
            package = path.parent.relative_to(self.root).as_posix()
            for spec in load_file(path):
                if spec.name in by_name:
                    first = by_name[spec.name].spec.location
                    raise DefinitionError(
                        f"duplicate target name {spec.name!r} (first declared at {first}).", spec.location
                    )
                target = Target(f"//{package}:{spec.name}", spec)
                by_name[spec.name] = target
                self.targets[target.label] = target

    def resolve(self, patterns: list[str]) -> list[Target]:
        """Expands labels, short names and `//pkg/...` patterns into targets, in a stable order.

        Raises:
            LabelError: for a label that names no target, listing the known ones.
        """
        chosen: dict[str, Target] = {}
        for pattern in patterns:
            matches = self._match(pattern)
            if not matches:
                known = ", ".join(sorted(self.targets)) or "none"
                near = self.near(pattern)
                hint = f"did you mean {' or '.join(near)}? " if near else ""
                raise LabelError(f"unknown target {pattern!r}; {hint}known targets: {known}")
            chosen.update((target.label, target) for target in matches)
        return list(chosen.values())

    def near(self, pattern: str) -> list[str]:
        """Labels whose target name is close to the mistyped one in `pattern` (difflib).

        Names, not whole labels, are compared: every label shares `//model_defs:`, which would make any two look
        alike.
        """
        by_name = {target.name: label for label, target in self.targets.items()}
        name = pattern.rsplit(":", 1)[-1]
        return [by_name[close] for close in difflib.get_close_matches(name, list(by_name), n=2, cutoff=0.6)]

    def _match(self, pattern: str) -> list[Target]:
        if pattern.endswith("/..."):
            prefix = pattern[: -len("/...")].rstrip("/")
            return [
                t
                for label, t in sorted(self.targets.items())
                if label.split(":")[0] == prefix or label.startswith(prefix + "/")
            ]
        if pattern.startswith("//"):
            return [self.targets[pattern]] if pattern in self.targets else []
        if ":" in pattern:
            pattern = "//" + pattern.lstrip(":") if not pattern.startswith(":") else f"//{DEFINITIONS_DIR}{pattern}"
            return [self.targets[pattern]] if pattern in self.targets else []
        return [t for t in self.targets.values() if t.name == pattern]


def output_root(root: Path) -> Path:
    """Where build outputs go: `$BUILDSYS_OUT` or `<workspace>/build-out`."""
    return Path(os.environ.get("BUILDSYS_OUT", root / "build-out")).resolve()
