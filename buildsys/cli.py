"""The command line: one function per command, and commands contributed by plugins.

The command line knows commands, not implementations: `serve` comes from the `buildsys.plugins` entry point
group (the serving package registers it), so buildsys never imports the server. Every error a user can fix is
printed as one line; exit code 2 means bad input (nothing was done), 1 a failed build, 130 an interrupt.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from buildsys.errors import BuildsysError
from buildsys.store import OutputTree
from buildsys.tuning import TUNERS
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
        raise BuildsysError("--cluster and --task go together, with --strategy multi-worker")
    from buildsys.actions.distributed import tf_config_from_flags

    os.environ["TF_CONFIG"] = tf_config_from_flags(args.cluster, args.task)


def command_build(args: argparse.Namespace) -> int:
    from buildsys.build import BuildOptions
    from buildsys.schedule import build_all

    workspace, tree = _context(args)
    targets = workspace.resolve(args.labels)
    _set_cluster(args)
    options = BuildOptions(
        force=args.force,
        quiet=args.quiet or args.json,
        strategy=args.strategy,
        seed=args.seed,
        data_dir=args.data_dir,
        mixed_precision=args.mixed_precision,
        jit=args.jit,
        deterministic=args.deterministic,
    )
    results = build_all(
        workspace,
        tree,
        targets,
        options,
        lambda target: dataclasses.replace(options, hparams=_hparams_for(args.hparams, target, tree)),
    )
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
        raise BuildsysError("--max-trials does not apply to hyperband, whose trial count follows from --epochs")
    from buildsys.actions.tune import SearchSettings, tune

    for target in workspace.resolve(args.labels):
        settings = SearchSettings(
            tuner=args.tuner,
            max_trials=None if args.tuner == "hyperband" else (args.max_trials or 10),
            epochs=args.epochs or target.spec.train.epochs,
            objective=args.objective,
            seed=target.spec.train.seed if args.seed is None else args.seed,
        )
        tune(target, tree, settings, role=args.role, overwrite=args.overwrite, data_dir=args.data_dir)
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


def command_show(args: argparse.Namespace) -> int:
    workspace, tree = _context(args)
    for target in workspace.resolve(args.labels):
        if args.tuning:
            _show_tuning(target, tree, args.json)
            continue
        version = tree.published_version(target.label, target.name, args.version)
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
        version = tree.published_version(target.label, target.name, args.version)
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
    workspace, tree = _context(args)
    names = [target.name for target in workspace.resolve(args.labels)] if args.labels else [None]
    for name in names:
        for path in tree.clean(name):
            print(f"removed {path}")
    return 0


def _optional_workspace(args: argparse.Namespace) -> Workspace | None:
    """The workspace when there is one: sources given as paths or URLs need none, labels do."""
    from buildsys.errors import LabelError

    try:
        return Workspace(find_root(Path(args.workspace) if args.workspace else None))
    except LabelError:
        return None


def _image_format(args: argparse.Namespace) -> Any:
    from buildsys.sources.resolve import ImageFormat

    if not args.image_size:
        return ImageFormat(None, args.color_mode)
    height, separator, width = args.image_size.lower().partition("x")
    if not separator or not height.isdigit() or not width.isdigit() or not int(height) or not int(width):
        raise BuildsysError(f"--image-size expects HEIGHTxWIDTH such as 28x28; received {args.image_size!r}")
    return ImageFormat((int(height), int(width)), args.color_mode)


def command_predict(args: argparse.Namespace) -> int:
    from buildsys.batch.predict import predict, summary_stream

    root = find_root(Path(args.workspace) if args.workspace else None)
    tree = OutputTree(Path(args.build_out).resolve() if args.build_out else output_root(root))
    summary = predict(
        Workspace(root),
        tree,
        args.label,
        args.input,
        args.destination,
        args.version,
        args.batch_size,
        engine=args.engine,
        master=args.master,
        parquet_columns=(args.image_column, args.label_column, args.id_column),
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


def make_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--workspace", help="folder holding model_defs/ (default: found from the current folder)")
    common.add_argument("--output", help="output tree (default: $BUILDSYS_OUT or <workspace>/build-out)")
    common.add_argument("--json", action="store_true", help="print machine-readable JSON")
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument(
        "--data-dir", type=Path, help="folder with already-downloaded datasets (or set $BUILDSYS_DATA_DIR)"
    )

    parser = argparse.ArgumentParser(prog="buildsys", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    build = commands.add_parser("build", parents=[common, data], help="build, verify and publish targets")
    build.add_argument("labels", nargs="+", metavar="LABEL", help="//model_defs:NAME, NAME, or //model_defs/...")
    build.add_argument("--force", action="store_true", help="rebuild even when a version with the same key exists")
    build.add_argument("--quiet", action="store_true", help="print nothing but errors")
    build.add_argument(
        "--strategy",
        default="auto",
        choices=("auto", "default", "one-device", "mirrored", "multi-worker"),
        help="tf.distribute strategy; the definition's batch size is per replica (see BUILD.md)",
    )
    build.add_argument("--cluster", help="multi-worker: HOST:PORT of the chief, then of each worker (sets TF_CONFIG)")
    build.add_argument("--task", help="multi-worker: this process in --cluster, chief:0 or worker:N")
    build.add_argument("--seed", type=int, help="override the definition's seed")
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
    tune.add_argument("--seed", type=int, help="override the definition's seed")
    tune.add_argument("--overwrite", action="store_true", help="start over instead of resuming an earlier search")
    tune.add_argument(
        "--role",
        choices=("chief", "worker"),
        help="distributed tuning (KerasTuner chief/worker, see BUILD.md); default: inferred from KERASTUNER_*",
    )
    tune.set_defaults(func=command_tune)

    report = commands.add_parser(
        "report", parents=[common], help="the path of a version's report.html and its metrics as text"
    )
    report.add_argument("labels", nargs="+", metavar="LABEL")
    report.add_argument("--version", type=int, help="a published version (default: the latest)")
    report.set_defaults(func=command_report)

    clean = commands.add_parser("clean", parents=[common], help="remove the outputs of targets (all without LABEL)")
    clean.add_argument("labels", nargs="*", metavar="LABEL")
    clean.set_defaults(func=command_clean)

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
    predict.add_argument("--input", nargs="+", required=True, metavar="SOURCE", help=source_help)
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
    predict.add_argument("--master", help="Spark master URL for --engine spark (default: local[2])")
    for column, default in (("image", "encoded image bytes"), ("label", "class names or indices"), ("id", "ids")):
        predict.add_argument(
            f"--{column}-column", help=f"Parquet input with --engine spark: the column of {default} (default: {column})"
        )
    predict.add_argument("--workspace", help="folder holding model_defs/ (default: found from the current folder)")
    predict.add_argument("--build-out", help="output tree (default: $BUILDSYS_OUT or <workspace>/build-out)")
    predict.add_argument("--json", action="store_true", help="print the summary as JSON")
    predict.set_defaults(func=command_predict)

    images = argparse.ArgumentParser(add_help=False)
    images.add_argument("source", metavar="SOURCE", help=source_help)
    images.add_argument("--image-size", help="HEIGHTxWIDTH for folders and files (default: the first image's)")
    images.add_argument("--color-mode", choices=("grayscale", "rgb"), help="default: the first image's")
    images.add_argument("--workspace", help="folder holding model_defs/ (needed for labels)")
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
