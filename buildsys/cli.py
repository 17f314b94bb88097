"""The command line: one function per command, and commands contributed by plugins.

The command line knows commands, not implementations: `serve` comes from the `buildsys.plugins` entry point
group (the serving package registers it), so buildsys never imports the server. Every error a user can fix is
printed as one line; exit code 2 means bad input (nothing was done), 1 a failed build, 130 an interrupt.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from buildsys import __version__
from buildsys.errors import BuildsysError, UsageError
from buildsys.sources.image_folder import listed_once
from buildsys.store import OutputTree
from buildsys.tuning import TUNERS
from buildsys.workspace import Workspace, open_workspace, output_root

DESCRIPTION = """\
Builds Keras image classifiers from declarative definitions (model_defs/*.py), verifies their ONNX and SavedModel
exports, and publishes them as numbered versions in an output tree that Triton-style servers read.
"""

EXAMPLES = """\
examples:
  buildsys build //model_defs:digits           build, verify and publish (or say it is up to date)
  buildsys build //model_defs/... --quiet      every target, printing only one result line each
  buildsys list                                every target with its state
  buildsys diff digits                         the two latest versions side by side
  buildsys report digits                       where report.html is, and its numbers as text
  buildsys predict digits --input images/ --output predictions.csv
  buildsys serve                               the inference server (the serving plugin)

Bad input exits 2, a failed build 1, an interrupt 130. See README.md and BUILD.md.
"""


class Parser(argparse.ArgumentParser):
    """argparse with the project's error style: one line, naming the command's --help, exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]  # argparse's error() never returns
        self.exit(2, f"error: {message} (see: {self.prog} --help)\n")


def _seed(text: str) -> int:
    """`--seed` checked up front, as `train(seed=...)` is: NumPy's and scikit-learn's generators take 32-bit seeds."""
    from buildsys.dsl.datasets import MAX_SEED

    if not text.strip().isdigit() or int(text) > MAX_SEED:
        raise argparse.ArgumentTypeError(f"expects an int in [0, 2**32 - 1], not {text!r}")
    return int(text)


def _existing_folder(text: str) -> Path:
    """`--data-dir` checked up front: a missing folder or a file is bad input, not a later missing-dataset hint."""
    path = Path(text).expanduser()
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text!r} does not exist")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file, not a folder")
    return path


def _check_data_dir_environment(args: argparse.Namespace) -> None:
    """$BUILDSYS_DATA_DIR gets the same check as --data-dir, for the commands that read datasets."""
    value = os.environ.get("BUILDSYS_DATA_DIR")
    if getattr(args, "data_dir", ...) is None and value:
        try:
            _existing_folder(value)
        except argparse.ArgumentTypeError as error:
            raise UsageError(f"$BUILDSYS_DATA_DIR: {error}") from None


def _output_tree(args: argparse.Namespace, root: Path) -> OutputTree:
    """`--build-out` (or the deprecated `--output` of commands other than predict), else the default tree."""
    chosen = args.build_out
    if getattr(args, "deprecated_output", None):
        print("warning: --output is deprecated for the output tree; use --build-out", file=sys.stderr)
        chosen = chosen or args.deprecated_output
    return OutputTree(Path(chosen).resolve() if chosen else output_root(root))


def _context(args: argparse.Namespace, defer: bool = False) -> tuple[Workspace, OutputTree]:
    workspace = open_workspace(args.workspace, defer=defer)
    return workspace, _output_tree(args, workspace.root)


def _parse_hparams(text: str | None) -> dict[str, Any]:
    """`units=64,learning_rate=0.01` → {"units": 64, "learning_rate": 0.01}; values are JSON or plain strings."""
    values: dict[str, Any] = {}
    for item in filter(None, (text or "").split(",")):
        name, separator, raw = item.partition("=")
        if not separator or not name.strip():
            raise UsageError(f"--hparams expects NAME=VALUE[,NAME=VALUE...]; received {item!r}")
        try:
            values[name.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            values[name.strip()] = raw
    return values


def _hparams_for(text: str | None, target: Any, tree: OutputTree) -> dict[str, Any]:
    """`--hparams` for one target: a leading `best` stands for the values its last `tune` recorded, and any
    NAME=VALUE after it overrides them (`best,units=64`)."""
    head, _, rest = (text or "").partition(",")
    if head.strip() != "best":
        return _parse_hparams(text)
    from buildsys.tuning import best_hparams

    return {**best_hparams(tree, target), **_parse_hparams(rest)}


def _set_cluster(args: argparse.Namespace) -> None:
    """`--cluster`/`--task` become TF_CONFIG, which MultiWorkerMirroredStrategy reads; they need each other."""
    if not (args.cluster or args.task):
        return
    if not (args.cluster and args.task) or args.strategy != "multi-worker":
        raise UsageError("--cluster and --task go together, with --strategy multi-worker")
    from buildsys.actions.distributed import tf_config_from_flags

    os.environ["TF_CONFIG"] = tf_config_from_flags(args.cluster, args.task)


def _remote_cache(args: argparse.Namespace, tree: OutputTree) -> Any:
    """The `--remote-cache` of a build (or $BUILDSYS_REMOTE_CACHE), None without one; headers come from
    `--remote-header` and $BUILDSYS_REMOTE_HEADERS (one `NAME: VALUE` per line), never from anything printed."""
    from buildsys.remote import RemoteConfigError

    url = args.remote_cache or os.environ.get("BUILDSYS_REMOTE_CACHE")
    if not url:
        if args.remote_cache_required or args.remote_header or args.remote_ca:
            raise RemoteConfigError("--remote-cache-required, --remote-header and --remote-ca need --remote-cache URL")
        return None
    from buildsys.remote import RemoteCache, RemoteSettings, parse_headers
    from buildsys.remote.seam import BuildCache

    headers = parse_headers([*os.environ.get("BUILDSYS_REMOTE_HEADERS", "").splitlines(), *args.remote_header])
    settings = RemoteSettings(url, args.remote_upload, args.remote_cache_required, headers, args.remote_ca)
    return BuildCache(RemoteCache(settings), tree)


def command_build(args: argparse.Namespace) -> int:
    from buildsys.build import BuildOptions
    from buildsys.schedule import BuildFailed, build_all, summary_table

    workspace, tree = _context(args)
    targets = workspace.resolve(args.labels)
    _set_cluster(args)
    remote = _remote_cache(args, tree)
    options = BuildOptions(
        force=args.force,
        quiet=args.quiet or args.json,
        strategy=args.strategy,
        seed=args.seed,
        data_dir=args.data_dir,
        mixed_precision=args.mixed_precision,
        jit=args.jit,
        deterministic=args.deterministic,
        tensorboard=args.tensorboard,
    )
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():  # stdout: JSON only
        try:
            results = build_all(
                workspace,
                tree,
                targets,
                options,
                lambda target: dataclasses.replace(options, hparams=_hparams_for(args.hparams, target, tree)),
                keep_going=args.keep_going,
                remote=remote,
            )
        except BuildFailed as failed:
            if (len(targets) > 1 or len(failed.results) > 1) and not args.json:
                print(summary_table(failed.results), flush=True)
            raise
    if (len(targets) > 1 or len(results) > 1) and not args.json:
        print(summary_table(results))
    if args.json:
        print(json.dumps({"targets": [result.to_json() for result in results]}, indent=2))
    return 0


def command_list(args: argparse.Namespace) -> int:
    from buildsys.build import BuildOptions
    from buildsys.schedule import plan_all

    workspace, tree = _context(args)
    options = BuildOptions(data_dir=args.data_dir)
    rows = []
    targets = workspace.resolve(args.labels or ["//..."])
    plans = plan_all(workspace, tree, targets, options)
    for target in targets:
        versions = tree.versions(target.name)
        current = plans[target.label]
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

    workspace, tree = _context(args)
    for target in workspace.resolve(args.labels):
        hparams = resolve_hparams(target.spec, _parse_hparams(args.hparams))
        if target.spec.transfer is not None:
            from buildsys.actions.transfer import architecture

            model = architecture(workspace, tree, target, hparams)
        else:
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


def command_tune(args: argparse.Namespace) -> int:
    workspace, tree = _context(args)
    if args.tuner == "hyperband" and args.max_trials is not None:
        raise UsageError("--max-trials does not apply to hyperband, whose trial count follows from --epochs")
    from buildsys.actions.tune import SearchSettings, tune

    for target in workspace.resolve(args.labels):
        settings = SearchSettings(
            tuner=args.tuner,
            max_trials=None if args.tuner == "hyperband" else (args.max_trials or 10),
            epochs=args.epochs or target.spec.train.epochs,
            objective=args.objective,
            seed=target.spec.train.seed if args.seed is None else args.seed,
        )
        tune(
            target,
            tree,
            settings,
            role=args.role,
            overwrite=args.overwrite,
            data_dir=args.data_dir,
            strategy=args.strategy,
        )
    return 0


def _show_tuning(target: Any, tree: OutputTree, as_json: bool) -> None:
    from buildsys.tuning import list_trials

    trials = list_trials(tree, target.name)
    if not trials:
        raise BuildsysError(f"{target.label} has not been tuned; run: python -m buildsys tune {target.label}")
    if as_json:
        print(json.dumps({"label": target.label, "trials": trials}, indent=2, sort_keys=True))
        return
    print(f"{target.label}: {len(trials)} trial(s)")
    for trial in trials:
        score = f"{trial['score']:.4f}" if trial["score"] is not None else "-"
        values = ", ".join(f"{name}={value}" for name, value in trial["hparams"].items())
        print(f"  trial {int(trial['trial_id']) + 1:>3}  {trial['status'] or '-':<10}  {score:>7}  {values}")


def _origin_text(origin: Any) -> str:
    """Where a version came from, as `show` prints it; versions from before origins were recorded were built here."""
    if isinstance(origin, dict) and origin.get("kind") == "fetched":
        built = origin.get("built_as") or {}
        remote_version = f", version {built['version']} there" if built.get("version") else ""
        return f"fetched from {origin.get('cache')} ({origin.get('fetched')}{remote_version}), key {origin.get('key')}"
    return "built here"


def command_show(args: argparse.Namespace) -> int:
    workspace, tree = _context(args)
    for target in workspace.resolve(args.labels):
        if args.tuning:
            _show_tuning(target, tree, args.json)
            continue
        version = tree.published_version(target.label, target.name, args.version)
        manifest = tree.manifest(target.name, version)
        if args.json:
            print(json.dumps(manifest.to_json(), indent=2, sort_keys=True))
            continue
        metrics = ", ".join(f"{name} {value:.4f}" for name, value in manifest.metrics["test"].items())
        print(
            f"{target.label} version {version} ({manifest.created})\n"
            f"  path:    {tree.model_dir(target.name) / str(version)}\n"
            f"  hash:    {manifest.content_hash}\n"
            f"  test:    {metrics}\n"
            f"  parity:  ONNX {manifest.parity['onnx_max_abs_diff']:.2g}, "
            f"SavedModel {manifest.parity['savedmodel_max_abs_diff']:.2g}\n"
            f"  hparams: {json.dumps(manifest.hparams)}\n"
            f"  params:  {manifest.params or 0:,}\n"
            f"  origin:  {_origin_text(manifest.extra.get('origin'))}"
        )
    return 0


def command_report(args: argparse.Namespace) -> int:
    """Prints where a version's report.html is and the same numbers as text; reads files only (no TensorFlow)."""
    from buildsys.actions.report import REPORT_FILE, summary_text

    workspace, tree = _context(args)
    for target in workspace.resolve(args.labels):
        version = tree.published_version(target.label, target.name, args.version)
        path = tree.model_dir(target.name) / str(version) / REPORT_FILE
        manifest = tree.manifest(target.name, version)
        if not path.is_file() or "per_class" not in manifest.metrics:
            raise BuildsysError(
                f"{target.label} version {version} has no report (it was built before reports existed); "
                f"rebuild it with: python -m buildsys build {target.label} --force"
            )
        if args.json:
            print(json.dumps({"label": target.label, "version": version, "path": str(path),
                              "metrics": manifest.metrics}, indent=2, sort_keys=True))  # fmt: skip
            continue
        print(f"{target.label} version {version}\n  report: {path}\n{summary_text(manifest.to_json())}")
    return 0


def command_diff(args: argparse.Namespace) -> int:
    """`diff LABEL [V1 [V2]]`: V1 against V2, V1 against the latest, or the two latest; reads files only."""
    from buildsys.diff import diff_versions, format_diff

    workspace, tree = _context(args)
    (target,) = workspace.resolve([args.label])
    if len(args.versions) > 2:
        raise UsageError(f"diff compares two versions; received {len(args.versions)}")
    asked = [tree.published_version(target.label, target.name, version) for version in args.versions]
    published = tree.versions(target.name)
    if not asked:
        if len(published) < 2:
            raise BuildsysError(
                f"{target.label} has {len(published)} published version(s); diff needs two (build it again with "
                "other --hparams or --seed, or with --force)"
            )
        asked = published[-2:]
    elif len(asked) == 1:
        if asked[0] == published[-1]:
            raise UsageError(f"version {asked[0]} is the latest of {target.label}; name the version to compare it with")
        asked.append(published[-1])
    difference = diff_versions(tree.model_dir(target.name), asked[0], asked[1])
    print(json.dumps(difference, indent=2) if args.json else format_diff(difference, all_rows=args.all))
    return 0


def command_featurize(args: argparse.Namespace) -> int:
    """`featurize LABEL [--engine local|spark]`: a transfer target's base features, cached for its build."""
    from buildsys.actions.features import featurize
    from buildsys.build import BuildOptions

    workspace, tree = _context(args)
    options = BuildOptions(quiet=args.json, data_dir=args.data_dir)
    for target in workspace.resolve(args.labels):
        say = (lambda _: None) if args.json else print
        written = featurize(workspace, tree, target, options, args.engine, args.master, say)
        print(json.dumps({"label": target.label, "features": str(written)}) if args.json else f"features: {written}")
    return 0


def command_query(args: argparse.Namespace) -> int:
    """`query deps|rdeps LABEL...`: the labels, then what they depend on (or what depends on them)."""
    from buildsys.graph import TargetGraph

    workspace, _ = _context(args)
    graph = TargetGraph(workspace)
    labels = [target.label for target in workspace.resolve(args.labels)]
    reverse = args.relation == "rdeps"
    if args.dot:
        print(graph.to_dot(labels, reverse=reverse), end="")
        return 0
    found: dict[str, list[str]] = {}
    for label in labels:
        walk = graph.rdeps if reverse else graph.deps
        found[label] = walk(label, transitive=not args.direct)
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    printed: list[str] = []
    for label, related in found.items():
        printed += [item for item in (label, *related) if item not in printed]
    print("\n".join(printed))
    return 0


def command_clean(args: argparse.Namespace) -> int:
    workspace, tree = _context(args, defer=not args.labels)
    names = [target.name for target in workspace.resolve(args.labels)] if args.labels else [None]
    for name in names:
        for path in tree.clean(name):
            print(f"removed {path}")
    return 0


def _size(text: str) -> int:
    from buildsys.tree_usage import parse_size

    try:
        return parse_size(text)
    except BuildsysError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("--max-size ")) from None


def command_cache(args: argparse.Namespace) -> int:
    """`cache stats` and `cache gc [--keep N] [--max-size SIZE] [--dry-run]`: the local output tree as a cache."""
    from buildsys.tree_usage import gc, human, usage

    _, tree = _context(args)
    if args.cache_command == "stats":
        found = usage(tree)
        print(json.dumps(found.to_json(), indent=2) if args.json else found.text())
        return 0
    removed = gc(tree, args.keep, args.max_size, args.dry_run)
    if args.json:
        rows = [{"path": str(r.path), "bytes": r.size, "reason": r.reason} for r in removed]
        print(json.dumps({"dry_run": args.dry_run, "removed": rows}, indent=2))
        return 0
    verb = "would remove" if args.dry_run else "removed"
    for removal in removed:
        print(f"{verb} {removal.path} ({human(removal.size)}): {removal.reason}")
    print(f"{verb} {len(removed)} item(s), {human(sum(r.size for r in removed))}")
    return 0


def _optional_workspace(args: argparse.Namespace) -> Workspace | None:
    """The workspace when there is one, its definitions run only if a source is a label: sources given as paths
    or URLs need none, so a broken or unsafe definition never affects them."""
    from buildsys.errors import LabelError

    try:
        return open_workspace(args.workspace, defer=True)
    except LabelError:
        return None


def _image_format(args: argparse.Namespace) -> Any:
    from buildsys.sources.resolve import ImageFormat

    if not args.image_size:
        return ImageFormat(None, args.color_mode)
    height, separator, width = args.image_size.lower().partition("x")
    if not separator or not height.isdigit() or not width.isdigit() or not int(height) or not int(width):
        raise UsageError(f"--image-size expects HEIGHTxWIDTH such as 28x28; received {args.image_size!r}")
    return ImageFormat((int(height), int(width)), args.color_mode)


def command_predict(args: argparse.Namespace) -> int:
    from buildsys.batch.predict import predict, summary_stream

    workspace = open_workspace(args.workspace)
    tree = _output_tree(args, workspace.root)
    summary = predict(
        workspace,
        tree,
        args.label,
        args.input,
        args.destination,
        args.version,
        args.batch_size,
        engine=args.engine,
        master=args.master,
        parquet_columns=(args.image_column, args.label_column, args.id_column),
        device=args.device,
    )
    stream = summary_stream(args.destination)
    print(json.dumps(summary.to_json(), indent=2) if args.json else summary.line(), file=stream)
    return 0


def command_data_import(args: argparse.Namespace) -> int:
    from buildsys.batch.data_import import import_source
    from buildsys.sources.resolve import open_sources

    opened = open_sources([args.source], _image_format(args), _optional_workspace(args))
    summary = import_source(opened, args.to, args.format, args.batch_size)
    print(json.dumps(summary.to_json(), indent=2) if args.json else summary.line())
    return 0


def command_data_inspect(args: argparse.Namespace) -> int:
    from buildsys.batch.data_inspect import inspect, plot
    from buildsys.sources.resolve import open_sources

    inspection = inspect(open_sources([args.source], _image_format(args), _optional_workspace(args)))
    print(json.dumps(inspection.to_json(), indent=2) if args.json else inspection.text())
    if args.plot:
        plot(inspection, Path(args.plot))
        print(f"wrote {args.plot}", file=sys.stderr if args.json else sys.stdout)
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


WORKSPACE_HELP = (
    "folder holding model_defs/, trusted as named (default: $BUILDSYS_WORKSPACE, else found upward from the "
    "current folder, refused when another user owns its model_defs/ or everyone may write to it)"
)


def make_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--workspace", default=argparse.SUPPRESS, help=WORKSPACE_HELP)
    common.add_argument("--build-out", help="output tree (default: $BUILDSYS_OUT or <workspace>/build-out)")
    common.add_argument("--output", dest="deprecated_output", help=argparse.SUPPRESS)  # the old name of --build-out
    common.add_argument("--json", action="store_true", help="print machine-readable JSON")
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument(
        "--data-dir", type=_existing_folder, help="folder with already-downloaded datasets (or set $BUILDSYS_DATA_DIR)"
    )

    parser = Parser(
        prog="buildsys", description=DESCRIPTION, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"buildsys {__version__}")
    # Before or after the command; the subcommands' copies leave the value unset unless given (SUPPRESS), so that
    # `buildsys --workspace DIR build X` keeps DIR.
    parser.add_argument("--workspace", help=WORKSPACE_HELP)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    build = commands.add_parser("build", parents=[common, data], help="build, verify and publish targets")
    build.add_argument("labels", nargs="+", metavar="LABEL", help="//model_defs:NAME, NAME, or //model_defs/...")
    build.add_argument("--force", action="store_true", help="rebuild even when a version with the same key exists")
    build.add_argument("--quiet", action="store_true", help="print nothing but errors")
    build.add_argument(
        "-k", "--keep-going", action="store_true", help="after a failure, build every target not depending on it"
    )
    build.add_argument(
        "--strategy",
        default="auto",
        choices=("auto", "default", "one-device", "mirrored", "multi-worker"),
        help="tf.distribute strategy; the definition's batch size is per replica (see BUILD.md)",
    )
    build.add_argument("--cluster", help="multi-worker: HOST:PORT of the chief, then of each worker (sets TF_CONFIG)")
    build.add_argument("--task", help="multi-worker: this process in --cluster, chief:0 or worker:N")
    build.add_argument("--seed", type=_seed, help="override the definition's seed")
    build.add_argument(
        "--hparams", help="hyperparameter values, NAME=VALUE[,NAME=VALUE...]; 'best' for the last tune's values"
    )
    build.add_argument(
        "--mixed-precision", action="store_true", help="train in mixed_float16 (GPU) or mixed_bfloat16 (CPU)"
    )
    build.add_argument("--jit", action="store_true", help="compile the train step with XLA")
    build.add_argument(
        "--deterministic", action="store_true", help="deterministic ops: same seed, same weights (slower)"
    )
    build.add_argument(
        "--tensorboard", action="store_true", help="write per-epoch TensorBoard scalars under the build's work folder"
    )
    remote = build.add_argument_group("remote cache (see BUILD.md)")
    remote.add_argument(
        "--remote-cache",
        metavar="URL",
        help="share built versions: http(s)://HOST/PATH (Bazel's HTTP protocol), file://, s3:// or gs:// "
        "(default: $BUILDSYS_REMOTE_CACHE)",
    )
    remote.add_argument(
        "--remote-upload",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="upload what this build trained and published (default: on)",
    )
    remote.add_argument(
        "--remote-cache-required", action="store_true", help="fail the build when the cache cannot be reached"
    )
    remote.add_argument(
        "--remote-header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'|@FILE",
        help="an HTTP header such as a token, or @FILE with one per line (keeps it out of the process list)",
    )
    remote.add_argument("--remote-ca", type=Path, metavar="FILE", help="CA certificates to verify the cache's TLS with")
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
    show.add_argument("--tuning", action="store_true", help="list the trials of the target's last tune")
    show.set_defaults(func=command_show)

    tune = commands.add_parser("tune", parents=[common, data], help="search the hp.* values of targets with KerasTuner")
    tune.add_argument("labels", nargs="+", metavar="LABEL")
    tune.add_argument("--tuner", default="hyperband", choices=TUNERS)
    tune.add_argument("--max-trials", type=int, help="trials to run (bayesian, random; default 10)")
    tune.add_argument("--epochs", type=int, help="epochs per trial (hyperband: the most; default: the definition's)")
    tune.add_argument("--objective", default="val_accuracy", help="metric to optimise, on the validation split")
    tune.add_argument("--seed", type=_seed, help="override the definition's seed")
    tune.add_argument("--overwrite", action="store_true", help="start over instead of resuming an earlier search")
    tune.add_argument(
        "--role",
        choices=("chief", "worker"),
        help="distributed tuning (KerasTuner chief/worker, see BUILD.md); default: inferred from KERASTUNER_*",
    )
    tune.add_argument(
        "--strategy",
        default="auto",
        choices=("auto", "default", "one-device", "mirrored"),
        help="tf.distribute strategy each trial trains under, as in build (the batch size is per replica)",
    )
    tune.set_defaults(func=command_tune)

    report = commands.add_parser(
        "report", parents=[common], help="the path of a version's report.html and its metrics as text"
    )
    report.add_argument("labels", nargs="+", metavar="LABEL")
    report.add_argument("--version", type=int, help="a published version (default: the latest)")
    report.set_defaults(func=command_report)

    diff = commands.add_parser(
        "diff",
        parents=[common],
        help="two published versions side by side: metrics, hyperparameters, data, options, parity, sizes, timings",
    )
    diff.add_argument("label", metavar="LABEL")
    diff.add_argument("versions", nargs="*", type=int, metavar="VERSION", help="V1 [V2] (default: the two latest)")
    diff.add_argument("--all", action="store_true", help="show every row, not only those that differ")
    diff.set_defaults(func=command_diff)

    clean = commands.add_parser("clean", parents=[common], help="remove the outputs of targets (all without LABEL)")
    clean.add_argument("labels", nargs="*", metavar="LABEL")
    clean.set_defaults(func=command_clean)

    cache = commands.add_parser("cache", help="the local output tree as a cache: sizes, and garbage collection")
    cache_actions = cache.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    cache_actions.add_parser("stats", parents=[common], help="versions, sizes, work and feature folders, leftovers")
    collect = cache_actions.add_parser(
        "gc", parents=[common], help="remove dead staging folders, older versions, caches (never a newest version)"
    )
    collect.add_argument("--keep", type=int, metavar="N", help="keep the newest N versions of each model")
    collect.add_argument(
        "--max-size", type=_size, metavar="SIZE", help="then remove the oldest until the tree is under SIZE (2G)"
    )
    collect.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    cache.set_defaults(func=command_cache)

    featurize = commands.add_parser(
        "featurize", parents=[common, data], help="compute a transfer target's base features ahead of its build"
    )
    featurize.add_argument("labels", nargs="+", metavar="LABEL")
    featurize.add_argument("--engine", choices=("local", "spark"), default="local", help="where the base runs")
    featurize.add_argument("--master", help="Spark master URL for --engine spark (default: local[2])")
    featurize.set_defaults(func=command_featurize)

    query = commands.add_parser("query", parents=[common], help="what targets depend on (deps) or what depends on them")
    query.add_argument("relation", choices=("deps", "rdeps"))
    query.add_argument("labels", nargs="+", metavar="LABEL")
    query.add_argument("--direct", action="store_true", help="only direct dependencies (default: all the way)")
    query.add_argument("--dot", action="store_true", help="print a Graphviz digraph (dependent -> base)")
    query.set_defaults(func=command_query)

    source_help = (
        "a label (its declared data), a database URL (tutorial tables), an .npz file, an image folder, or image "
        "files; add #train or #test for one split"
    )
    predict = commands.add_parser("predict", help="run a published model (ONNX Runtime) over images")
    predict.add_argument("label", metavar="LABEL")
    predict.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="SOURCE",
        help=f"{source_help}; with --engine spark also a Parquet table, and a Parquet table or an image folder at a "
        "filesystem URL (hdfs://, s3a://, gs://, file:///...)",
    )
    predict.add_argument(
        "--output",
        dest="destination",
        required=True,
        metavar="DEST",
        help="- (a table on stdout), FILE.csv, FILE.jsonl, or a database URL (prediction_results)",
    )
    predict.add_argument("--version", type=int, help="a published version (default: the latest)")
    predict.add_argument("--batch-size", type=int, default=256, help="images per ONNX Runtime call and per write")
    predict.add_argument("--engine", choices=("local", "spark"), default="local", help="where the model runs")
    predict.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="the local engine's ONNX Runtime device: auto (CUDA when it activates), cpu, or cuda (required)",
    )
    predict.add_argument("--master", help="Spark master URL for --engine spark (default: local[2])")
    for column, default in (("image", "encoded image bytes"), ("label", "class names or indices"), ("id", "ids")):
        predict.add_argument(
            f"--{column}-column", help=f"Parquet input with --engine spark: the column of {default} (default: {column})"
        )
    predict.add_argument("--workspace", default=argparse.SUPPRESS, help=WORKSPACE_HELP)
    predict.add_argument("--build-out", help="output tree (default: $BUILDSYS_OUT or <workspace>/build-out)")
    predict.add_argument("--json", action="store_true", help="print the summary as JSON")
    predict.set_defaults(func=command_predict)

    images = argparse.ArgumentParser(add_help=False)
    images.add_argument("source", metavar="SOURCE", help=source_help)
    images.add_argument("--image-size", help="HEIGHTxWIDTH for folders and files (default: the first image's)")
    images.add_argument("--color-mode", choices=("grayscale", "rgb"), help="default: the first image's")
    images.add_argument("--workspace", default=argparse.SUPPRESS, help=WORKSPACE_HELP + "; needed for labels")
    images.add_argument("--json", action="store_true", help="print machine-readable JSON")
    data_commands = commands.add_parser("data", help="import a dataset into a database, or inspect one")
    data_actions = data_commands.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    importing = data_actions.add_parser("import", parents=[images], help="write a dataset into the tutorial tables")
    importing.add_argument("--to", required=True, metavar="URL", help="SQLAlchemy URL, e.g. sqlite:///images.db")
    importing.add_argument("--format", choices=("png", "npy"), default="png", help="how images are stored")
    importing.add_argument("--batch-size", type=int, default=500, help="rows per transaction")
    importing.set_defaults(func=command_data_import)
    inspecting = data_actions.add_parser("inspect", parents=[images], help="sizes, pixels, class balance, samples")
    inspecting.add_argument("--plot", metavar="FILE.png", help="save a 5x5 grid of samples with their class names")
    inspecting.set_defaults(func=command_data_inspect)

    _add_plugins(commands)
    return parser


# The top-level modules of the `build` extra: without them only the serving side (`serve`) is installed.
BUILD_EXTRA_MODULES = frozenset(
    {"tensorflow", "keras", "keras_tuner", "tensorboard", "tf2onnx", "onnx", "sklearn", "matplotlib",
     "sqlalchemy", "pymysql"}
)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        _check_data_dir_environment(args)
        with listed_once():  # one listing of a folder in object storage per command
            return args.func(args)
    except BuildsysError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] not in BUILD_EXTRA_MODULES:
            raise
        print(
            f"error: `{args.command}` needs the build extra and {error.name} is not installed (this is the serving "
            "install): pip install 'buildsys[build]' (from a checkout: pip install '.[build]', or scripts/setup.sh)",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt as error:
        detail = str(error) or (
            "nothing was published; run the same command again to resume (finished training epochs and tuning "
            "trials are kept under the output tree)"
        )
        print(f"interrupted: {detail}", file=sys.stderr)
        return 130
