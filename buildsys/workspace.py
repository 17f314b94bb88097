"""The workspace: where definitions live, how they are loaded, and how labels name targets.

A workspace is a folder with a `model_defs/` tree. Every `*.py` file under it is executed with the definition
language in scope; each `model(...)` call it makes declares one target, labelled `//<folder>:<name>`
(`//model_defs:digits`). Labels accept the short form `digits` and the pattern `//model_defs/...`. Loading a
definition never imports TensorFlow, so it is cheap enough for every command, including no-op builds.

Definitions are code that runs as the user, so a workspace found by searching upward (as Bazel does) must be safe:
one where another user owns, or everyone may write to, `model_defs/` or a folder or file in it is refused, the
way git refuses a repository owned by someone else, unless the user names it (`--workspace`, `$BUILDSYS_WORKSPACE`).
The workspace lends its definitions the source probe (`buildsys.sources.probe`) through which a declaration reads
what it needs from its files or database, so the definition language never imports the code that reads data.
"""

from __future__ import annotations

import difflib
import os
import stat
import traceback
from dataclasses import dataclass
from pathlib import Path

from buildsys import sources
from buildsys.dsl.datasets import declaring
from buildsys.dsl.specs import ModelSpec, collect_targets, stop_collecting
from buildsys.errors import DefinitionError, LabelError, Location

DEFINITIONS_DIR = "model_defs"
WORKSPACE_VARIABLE = "BUILDSYS_WORKSPACE"


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


def open_workspace(named: str | Path | None = None, *, defer: bool = False) -> Workspace:
    """The workspace of a command: the folder the user named (`--workspace`, else `$BUILDSYS_WORKSPACE`), trusted
    as named, or else the nearest one found upward from the current folder, whose definitions run only once
    `check_safe` accepts it.

    Raises:
        LabelError: for a named folder without `model_defs/`, or when no workspace is found.
    """
    named = named or os.environ.get(WORKSPACE_VARIABLE) or None
    if named is None:
        return Workspace(find_root(), defer=defer, trusted=False)
    root = Path(named).resolve()
    if not (root / DEFINITIONS_DIR).is_dir():
        raise LabelError(f"{root} (named by --workspace or ${WORKSPACE_VARIABLE}) holds no {DEFINITIONS_DIR}/ folder")
    return Workspace(root, defer=defer)


def check_safe(root: Path) -> None:
    """Refuses a workspace whose definitions someone else could have written: a `model_defs/`, a folder under it or
    a `*.py` file in it (any of which a definition may run or import) that is owned by another user or writable by
    every user (a shared `/tmp/model_defs/`, say, or one world-writable file in a safe tree). Group-writable ones
    are accepted, since with a private group per user (umask 002) every file is. A symbolic link is judged by what
    it points to, which is what runs.

    Raises:
        LabelError: in one line naming the first unsafe path, saying why and how to trust the workspace anyway.
    """
    definitions = root / DEFINITIONS_DIR
    for path in (definitions, *sorted(_tree(definitions))):
        try:
            status = path.stat()
        except OSError:  # a dangling link: nothing to run, and loading it says so
            continue
        if status.st_uid != os.geteuid():
            why = f"is owned by another user (uid {status.st_uid})"
        elif status.st_mode & stat.S_IWOTH:
            why = "is writable by every user"
        else:
            continue
        raise LabelError(
            f"unsafe workspace: {path} {why}, and its definitions would run as you; if you trust it, name it: "
            f"--workspace {root} (or ${WORKSPACE_VARIABLE}={root})"
        )


def _tree(definitions: Path) -> list[Path]:
    """The folders and Python files under `definitions`: what loading the workspace may execute."""
    found: list[Path] = []
    for folder, subfolders, files in os.walk(definitions):
        here = Path(folder)
        found.extend(here / name for name in subfolders)
        found.extend(here / name for name in files if name.endswith(".py"))
    return found


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


def load_file(path: Path, root: Path | None = None) -> list[ModelSpec]:
    """Executes one definition file of the workspace at `root` and returns the targets it declares.

    `root` defaults to the folder above the file's `model_defs/` (the file's own folder outside one); relative
    paths in the file's data sources resolve against it.
    """
    import buildsys.dsl as dsl

    if root is None:
        root = next((f.parent for f in path.resolve().parents if f.name == DEFINITIONS_DIR), path.resolve().parent)
    try:
        source = path.read_text(encoding="utf-8")
    except OSError as error:
        raise DefinitionError(f"cannot read the definition: {error.strerror}.", Location(str(path), 0)) from None
    except UnicodeDecodeError as error:
        raise DefinitionError(
            f"the definition is not UTF-8 text (byte {error.start}).", Location(str(path), 0)
        ) from None
    namespace = {"__name__": f"model_defs.{path.stem}", "__file__": str(path)}
    namespace.update({name: getattr(dsl, name) for name in dsl.__all__})
    targets, token = collect_targets()
    try:
        with declaring(root.resolve(), sources.probe):
            exec(compile(source, str(path), "exec"), namespace)  # noqa: S102 - definitions are the user's own code
    except Exception as error:  # every failure in a definition becomes one readable line
        raise _definition_error(error, path) from None
    finally:
        stop_collecting(token)
    return targets


class Workspace:
    """All targets of a workspace, loaded once per command.

    `defer=True` runs the definitions only when `targets` is first read: commands whose inputs may be paths or
    URLs rather than labels (`data import`, `data inspect`, `clean` without labels) then run none, so a broken or
    untrusted definition cannot stop or affect them. `trusted=False` (a workspace found, not named) runs them only
    after `check_safe`.
    """

    def __init__(self, root: Path, *, defer: bool = False, trusted: bool = True) -> None:
        self.root = root
        self.trusted = trusted
        self._targets: dict[str, Target] | None = None
        if not defer:
            self._load()

    @property
    def targets(self) -> dict[str, Target]:
        """Every target by label (the definitions run on the first use of a deferred workspace)."""
        if self._targets is None:
            self._load()
        return self._targets

    def _load(self) -> None:
        if not self.trusted:
            check_safe(self.root)
        definitions = self.root / DEFINITIONS_DIR
        targets: dict[str, Target] = {}
        by_name: dict[str, Target] = {}
        for path in sorted(definitions.rglob("*.py")):
            if path.name.startswith("_"):
                continue
            package = path.parent.relative_to(self.root).as_posix()
            for spec in load_file(path, self.root):
                if spec.name in by_name:
                    first = by_name[spec.name].spec.location
                    raise DefinitionError(
                        f"duplicate target name {spec.name!r} (first declared at {first}).", spec.location
                    )
                target = Target(f"//{package}:{spec.name}", spec)
                by_name[spec.name] = target
                targets[target.label] = target
        self._targets = targets

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
