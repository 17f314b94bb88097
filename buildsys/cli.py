"""The command line: one function per command, and commands contributed by plugins.

The command line knows commands, not implementations: `serve` comes from the `buildsys.plugins` entry point
group (the serving package registers it), so buildsys never imports the server. Every error a user can fix is
printed as one line; exit code 2 means bad input (nothing was done), 1 a failed build, 130 an interrupt.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from buildsys.errors import BuildsysError
from buildsys.store import OutputTree
from buildsys.workspace import Workspace, find_root, output_root


def _context(args: argparse.Namespace) -> tuple[Workspace, OutputTree]:
    root = find_root(Path(args.workspace) if args.workspace else None)
    return Workspace(root), OutputTree(Path(args.output).resolve() if args.output else output_root(root))


def _parse_hparams(text: str | None) -> dict[str, Any]:
    """`units=64,learning_rate=0.01` → {"units": 64, "learning_rate": 0.01}; values are JSON or plain strings."""
    values: dict[str, Any] = {}
    for item in filter(None, (text or "").split(",")):
        name, separator, raw = item.partition("=")
        if not separator or not name.strip():
            raise BuildsysError(f"--hparams expects NAME=VALUE[,NAME=VALUE...]; received {item!r}")
        try:
            values[name.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            values[name.strip()] = raw
    return values


def command_build(args: argparse.Namespace) -> int:
    from buildsys.build import BuildOptions, build

    workspace, tree = _context(args)
    targets = workspace.resolve(args.labels)
    options = BuildOptions(
        force=args.force,
        quiet=args.quiet or args.json,
        strategy=args.strategy,
        seed=args.seed,
        data_dir=Path(args.data_dir) if args.data_dir else None,
        hparams=_parse_hparams(args.hparams),
    )
    results = [build(target, tree, options) for target in targets]
    if args.json:
        print(json.dumps({"targets": [result.to_json() for result in results]}, indent=2))
    return 0


def command_list(args: argparse.Namespace) -> int:
    from buildsys.build import BuildOptions, plan

    workspace, tree = _context(args)
    options = BuildOptions(data_dir=Path(args.data_dir) if args.data_dir else None)
    rows = []
    for target in workspace.resolve(args.labels or ["//..."]):
        versions = tree.versions(target.name)
        current = plan(target, tree, options)
        if not versions:
            state = "not built"
        elif current.published_version is not None:
            state = (
                "up to date"
                if current.published_version == versions[-1]
                else f"up to date (version {current.published_version})"
            )
        else:
            state = "stale" if current.key else "stale (data not on this machine)"
        rows.append({"label": target.label, "state": state, "latest_version": versions[-1] if versions else None})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max((len(row["label"]) for row in rows), default=10)
    for row in rows:
        latest = row["latest_version"] if row["latest_version"] is not None else "-"
        print(f"{row['label']:<{width}}  {row['state']:<12}  latest: {latest}")
    return 0


def command_compile(args: argparse.Namespace) -> int:
    from buildsys.actions.compile import build_model, parameter_count
    from buildsys.build import resolve_hparams

    workspace, _ = _context(args)
    for target in workspace.resolve(args.labels):
        hparams = resolve_hparams(target.spec, _parse_hparams(args.hparams))
        model = build_model(target.spec, hparams)
        if args.json:
            summary = {
                "label": target.label,
                "params": parameter_count(model),
                "inputs": [{"name": t.name, "shape": list(t.shape), "dtype": str(t.dtype)} for t in model.inputs],
                "outputs": [
                    {"name": spec_name, "shape": list(t.shape), "dtype": str(t.dtype)}
                    for spec_name, t in zip([target.spec.output_name], model.outputs, strict=True)
                ],
                "hparams": hparams,
            }
            print(json.dumps(summary, indent=2))
        else:
            print(target.label)
            model.summary()
    return 0


def command_show(args: argparse.Namespace) -> int:
    workspace, tree = _context(args)
    for target in workspace.resolve(args.labels):
        versions = tree.versions(target.name)
        if not versions:
            raise BuildsysError(f"{target.label} has not been built; run: python -m buildsys build {target.label}")
        version = args.version or versions[-1]
        if version not in versions:
            raise BuildsysError(f"{target.label} has no version {version}; published: {', '.join(map(str, versions))}")
        manifest = tree.manifest(target.name, version)
        if args.json:
            print(json.dumps(manifest, indent=2, sort_keys=True))
            continue
        metrics = ", ".join(f"{name} {value:.4f}" for name, value in manifest["metrics"]["test"].items())
        print(
            f"{target.label} version {version} ({manifest['created']})\n"
            f"  path:    {tree.model_dir(target.name) / str(version)}\n"
            f"  hash:    {manifest['content_hash']}\n"
            f"  test:    {metrics}\n"
            f"  parity:  ONNX {manifest['parity']['onnx_max_abs_diff']:.2g}, "
            f"SavedModel {manifest['parity']['savedmodel_max_abs_diff']:.2g}\n"
            f"  hparams: {json.dumps(manifest['hparams'])}\n"
            f"  params:  {manifest['params']:,}"
        )
    return 0


def command_report(args: argparse.Namespace) -> int:
    """Prints where a version's report.html is and the same numbers as text; reads files only (no TensorFlow)."""
    from buildsys.actions.report import REPORT_FILE, summary_text

    workspace, tree = _context(args)
    for target in workspace.resolve(args.labels):
        versions = tree.versions(target.name)
        if not versions:
            raise BuildsysError(f"{target.label} has not been built; run: python -m buildsys build {target.label}")
        version = args.version or versions[-1]
        if version not in versions:
            raise BuildsysError(f"{target.label} has no version {version}; published: {', '.join(map(str, versions))}")
        path = tree.model_dir(target.name) / str(version) / REPORT_FILE
        manifest = tree.manifest(target.name, version)
        if not path.is_file() or "per_class" not in manifest["metrics"]:
            raise BuildsysError(
                f"{target.label} version {version} has no report (it was built before reports existed); "
                f"rebuild it with: python -m buildsys build {target.label} --force"
            )
        if args.json:
            print(json.dumps({"label": target.label, "version": version, "path": str(path),
                              "metrics": manifest["metrics"]}, indent=2, sort_keys=True))  # fmt: skip
            continue
        print(f"{target.label} version {version}\n  report: {path}\n{summary_text(manifest)}")
    return 0


def command_clean(args: argparse.Namespace) -> int:
    workspace, tree = _context(args)
    names = [target.name for target in workspace.resolve(args.labels)] if args.labels else [None]
    for name in names:
        for path in tree.clean(name):
            print(f"removed {path}")
    return 0


def _add_plugins(commands: Any) -> None:
    """Adds the commands registered under the `buildsys.plugins` entry point group (e.g. `serve`).

    A plugin that fails to import still gets its command, which reports why, so that a broken server install
    never breaks `build`.
    """
    for entry_point in sorted(metadata.entry_points(group="buildsys.plugins"), key=lambda ep: ep.name):
        try:
            plugin = entry_point.load()
        except Exception as error:  # any import failure of a plugin is reported when its command is used
            reason = f"the {entry_point.name!r} plugin ({entry_point.value}) failed to load: {error}"
            broken = commands.add_parser(entry_point.name, help=f"unavailable: {reason}")
            broken.add_argument("rest", nargs=argparse.REMAINDER)
            broken.set_defaults(func=lambda args, reason=reason: _raise(reason))
            continue
        sub = commands.add_parser(plugin.COMMAND, help=plugin.HELP)
        plugin.configure_parser(sub)
        sub.set_defaults(func=plugin.run)


def _raise(reason: str) -> int:
    raise BuildsysError(reason)


def make_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--workspace", help="folder holding model_defs/ (default: found from the current folder)")
    common.add_argument("--output", help="output tree (default: $BUILDSYS_OUT or <workspace>/build-out)")
    common.add_argument("--json", action="store_true", help="print machine-readable JSON")
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument("--data-dir", help="folder with already-downloaded datasets (or set $BUILDSYS_DATA_DIR)")

    parser = argparse.ArgumentParser(prog="buildsys", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    build = commands.add_parser("build", parents=[common, data], help="build, verify and publish targets")
    build.add_argument("labels", nargs="+", metavar="LABEL", help="//model_defs:NAME, NAME, or //model_defs/...")
    build.add_argument("--force", action="store_true", help="rebuild even when a version with the same key exists")
    build.add_argument("--quiet", action="store_true", help="print nothing but errors")
    build.add_argument("--strategy", default="auto", choices=("auto", "default", "one-device", "mirrored"))
    build.add_argument("--seed", type=int, help="override the definition's seed")
    build.add_argument("--hparams", help="hyperparameter values, NAME=VALUE[,NAME=VALUE...]")
    build.set_defaults(func=command_build)

    listing = commands.add_parser("list", parents=[common, data], help="every target with its state")
    listing.add_argument("labels", nargs="*", metavar="LABEL")
    listing.set_defaults(func=command_list)

    compile_ = commands.add_parser("compile", parents=[common], help="compile without training; print the summary")
    compile_.add_argument("labels", nargs="+", metavar="LABEL")
    compile_.add_argument("--hparams", help="hyperparameter values, NAME=VALUE[,NAME=VALUE...]")
    compile_.set_defaults(func=command_compile)

    show = commands.add_parser("show", parents=[common], help="the latest (or --version N) manifest")
    show.add_argument("labels", nargs="+", metavar="LABEL")
    show.add_argument("--version", type=int)
    show.set_defaults(func=command_show)

    report = commands.add_parser(
        "report", parents=[common], help="the path of a version's report.html and its metrics as text"
    )
    report.add_argument("labels", nargs="+", metavar="LABEL")
    report.add_argument("--version", type=int, help="a published version (default: the latest)")
    report.set_defaults(func=command_report)

    clean = commands.add_parser("clean", parents=[common], help="remove the outputs of targets (all without LABEL)")
    clean.add_argument("labels", nargs="*", metavar="LABEL")
    clean.set_defaults(func=command_clean)

    _add_plugins(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return args.func(args)
    except BuildsysError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted: nothing was published; run the same command again to start over", file=sys.stderr)
        return 130
