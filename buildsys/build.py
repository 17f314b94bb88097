"""The build of one target: plan its cache key, and when nothing matches, run the actions and publish.

Planning (hyperparameters, seed, data fingerprint, key, lookup in the output tree) imports no TensorFlow, so an
up-to-date target costs a few file reads. The actions run in order — load data, compile, train, evaluate, export,
verify, report — each reported on one line with its wall time; the version is assembled in a staging folder that is
removed on any failure or interrupt and renamed into place only when everything passed, the definition's quality
gate included (a candidate it rejects is moved to `build-out/rejected/` instead).
"""

from __future__ import annotations

import datetime
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildsys import sources
from buildsys.cache import CacheKey, cache_key
from buildsys.dsl.specs import ModelSpec, validate
from buildsys.errors import BuildsysError, DefinitionError
from buildsys.graph import Dependency
from buildsys.store import OutputTree
from buildsys.transfer import WEIGHTS_FILE, dependency_digests
from buildsys.workspace import Target

if TYPE_CHECKING:
    from buildsys.remote import RemoteCache


@dataclass(frozen=True)
class BuildOptions:
    """Command-line settings that shape a build."""

    force: bool = False
    quiet: bool = False
    strategy: str = "auto"
    seed: int | None = None
    data_dir: Path | None = None
    hparams: dict[str, Any] = field(default_factory=dict)
    mixed_precision: bool = False
    jit: bool = False
    deterministic: bool = False
    remote: RemoteCache | None = None  # looked up before training, uploaded to after publishing

    def training_key(self) -> dict[str, Any]:
        """The training settings that change the trained weights, as they enter the cache key.

        Settings at their defaults are left out, so the keys of builds that use none of them stay as they were.
        `mirrored` and `multi-worker` are keyed (with the worker count) because the number of replicas sets the
        global batch; `auto`, `default` and `one-device` are not, since resolving `auto` needs TensorFlow and a
        no-op build must not import it — name the strategy to key a multi-GPU build. Mixed precision and XLA
        change the arithmetic; `deterministic` is keyed so that a version built without it never answers a
        request for a reproducible one.
        """
        keyed: dict[str, Any] = {}
        if self.strategy in ("mirrored", "multi-worker"):
            keyed["strategy"] = self.strategy
        if self.strategy == "multi-worker":
            from buildsys.actions.distributed import worker_count

            keyed["workers"] = worker_count()
        for name in ("mixed_precision", "jit", "deterministic"):
            if getattr(self, name):
                keyed[name] = True
        return keyed


@dataclass
class BuildResult:
    label: str
    status: str  # "up to date" | "built" | "fetched"
    version: int
    content_hash: str
    metrics: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "status": self.status,
            "version": self.version,
            "content_hash": self.content_hash,
            "metrics": self.metrics,
            "timings": self.timings,
        }


@dataclass(frozen=True)
class Plan:
    """What a build would be keyed on; `key` is None while the data is not on this machine yet."""

    hparams: dict[str, Any]
    seed: int
    key: CacheKey | None
    published_version: int | None
    dependencies: dict[str, str] = field(default_factory=dict)  # what a transfer target's base depends on


def resolve_hparams(spec: ModelSpec, overrides: dict[str, Any]) -> dict[str, Any]:
    """Defaults overlaid with `overrides`; every override must name a declared hyperparameter and fit its space."""
    declared = spec.hyperparameters()
    for name, value in overrides.items():
        if name not in declared:
            known = ", ".join(sorted(declared)) or "none"
            raise DefinitionError(
                f"{spec.name} declares no hyperparameter {name!r} (it declares: {known}).", spec.location
            )
        declared[name].check(value)
    values = {**spec.default_hparams(), **overrides}
    validate(spec, values)
    return dict(sorted(values.items()))


def plan(target: Target, tree: OutputTree, options: BuildOptions, dependencies: Sequence[Dependency] = ()) -> Plan:
    """Computes the target's key and finds a published version built from it. Imports no TensorFlow.

    `dependencies` are the targets a transfer target's base is cut from, with the content hashes they were
    planned with (`buildsys.graph.TargetGraph.build_order` gives the order); their hashes enter the key.
    """
    spec = target.spec
    hparams = resolve_hparams(spec, options.hparams)
    seed = spec.train.seed if options.seed is None else options.seed
    fingerprint = sources.fingerprint(spec.data, options.data_dir)
    upstream = dependency_digests(target, dependencies)
    key = cache_key(spec, fingerprint, seed, hparams, options.training_key(), upstream) if fingerprint else None
    published = tree.find_version(spec.name, key.digest) if key else None
    return Plan(hparams, seed, key, published, upstream)


class Reporter:
    """Prints one line per action with its wall time, and keeps the timings for the manifest."""

    def __init__(self, label: str, quiet: bool) -> None:
        self.label = label
        self.quiet = quiet
        self.timings: dict[str, float] = {}

    def say(self, message: str) -> None:
        if not self.quiet:
            print(f"{self.label}: {message}", flush=True)

    @contextmanager
    def action(self, name: str) -> Iterator[None]:
        if not self.quiet:
            print(f"{self.label}: {name} ...", flush=True)
        started = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - started, 3)
        self.say(f"{name} done in {self.timings[name]:.2f}s")


def _versions() -> dict[str, str]:
    found = {}
    for package in ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


def build(
    target: Target, tree: OutputTree, options: BuildOptions, dependencies: Sequence[Dependency] = ()
) -> BuildResult:
    """Builds `target` unless a published version has the same key; returns what happened.

    A transfer target's `dependencies` must be built (or up to date) already: see `plan`.

    Raises:
        BuildsysError: for bad data, a failed parity check, or a strategy this machine cannot run; nothing is
            published and the staging folder is removed.
        QualityGateError: the candidate failed its quality gate; nothing is published and the staging folder is
            kept under `build-out/rejected/<name>/<hash>/`.
    """
    spec = target.spec
    reporter = Reporter(target.label, options.quiet)
    current = plan(target, tree, options, dependencies)
    if current.published_version is not None and not options.force:
        reporter.say(f"up to date (version {current.published_version})")
        return BuildResult(target.label, "up to date", current.published_version, current.key.digest)
    if current.key is not None and (hit := _remote_hit(target, tree, options, current.key, reporter)):
        return hit

    started = time.perf_counter()
    from buildsys.actions.data import check_and_split
    from buildsys.actions.report import write_report
    from buildsys.gate import judge, reject

    with reporter.action("load data"):
        dataset = sources.load(spec.data, options.data_dir)
        splits = check_and_split(dataset, spec, current.seed)
    key = current.key
    if key is None:  # the data was fetched just now: key the build on what arrived
        fingerprint = sources.fingerprint(spec.data, options.data_dir)
        if fingerprint is None:
            raise BuildsysError(f"{target.label}: the data was loaded but its files cannot be found to fingerprint")
        key = cache_key(spec, fingerprint, current.seed, current.hparams, options.training_key(), current.dependencies)
        published = tree.find_version(spec.name, key.digest)
        if published is not None and not options.force:
            reporter.say(f"up to date (version {published})")
            return BuildResult(target.label, "up to date", published, key.digest)
        if hit := _remote_hit(target, tree, options, key, reporter):
            return hit

    staging = tree.staging_dir(spec.name)
    try:
        work = tree.work_dir(spec.name, key.digest)
        outcome = _run_actions(target, splits, current, key, staging, work, options, reporter, tree, dependencies)
        if outcome is None:
            shutil.rmtree(staging, ignore_errors=True)
            reporter.say("trained as a multi-worker task; the chief evaluates and publishes")
            return BuildResult(target.label, "trained (worker)", 0, key.digest, {}, reporter.timings)
        manifest, probabilities = outcome
        with reporter.action("report"):
            verdict = judge(spec.evaluate, manifest, tree.latest_manifest(spec.name))
            manifest["quality_gate"] = verdict.to_json()
            write_report(staging, manifest, splits.x_test, splits.y_test, probabilities)
        manifest["timings"]["report"] = reporter.timings["report"]
        for note in verdict.notes:
            reporter.say(f"quality gate: {note}")
        if not verdict.passed:
            raise reject(tree, staging, manifest, verdict)
        manifest["timings"]["total"] = round(time.perf_counter() - started, 3)
        with reporter.action("publish"):
            version = tree.publish(spec.name, staging, manifest, spec.export.max_batch_size)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(work, ignore_errors=True)  # the training checkpoints are no longer needed
    reporter.say(f"published version {version} to {tree.model_dir(spec.name) / str(version)}")
    if options.remote is not None:  # the remote cache seam after publish
        from buildsys.remote.seam import upload_published

        upload_published(options.remote, tree, spec.name, version, key.digest, reporter.say)
    return BuildResult(target.label, "built", version, key.digest, manifest["metrics"]["test"], reporter.timings)


def _remote_hit(
    target: Target, tree: OutputTree, options: BuildOptions, key: CacheKey, reporter: Reporter
) -> BuildResult | None:
    """The remote cache seam before training: a verified hit published as a local version, or None to build.

    Skipped with `--force` (the user asked for a rebuild) and for multi-worker training, whose tasks must all
    train together.
    """
    if options.remote is None or options.force or options.strategy == "multi-worker":
        return None
    from buildsys.remote.seam import publish_hit

    hit = publish_hit(options.remote, tree, target.spec, key.digest, reporter.say)
    if hit is None:
        return None
    version, fetched = hit
    reporter.say(f"published version {version} to {tree.model_dir(target.spec.name) / str(version)} (no training)")
    test_metrics = fetched.manifest.metrics.get("test", {})
    return BuildResult(target.label, "fetched", version, key.digest, test_metrics, {"fetch": fetched.seconds})


def _run_actions(
    target: Target,
    splits: Any,
    current: Plan,
    key: CacheKey,
    staging: Path,
    work: Path,
    options: BuildOptions,
    reporter: Reporter,
    tree: OutputTree,
    dependencies: Sequence[Dependency],
) -> tuple[dict[str, Any], Any] | None:
    """compile → train → evaluate → export → verify, into `staging`; returns the manifest (without version) and the
    model's probabilities on the test split, predicted once for the metrics, the parity check and the report.

    Training checkpoints into `work`. A multi-worker task other than the chief returns None after training: only
    the chief evaluates, exports and publishes. A transfer target compiles and trains in
    `buildsys.actions.transfer` (base, cached features, head, fine-tuning) and joins the common path at evaluate.
    """
    from buildsys.actions.checkpoints import TrainingCheckpoint
    from buildsys.actions.compile import parameter_count
    from buildsys.actions.data import data_sizes, stream_failures
    from buildsys.actions.distributed import is_chief
    from buildsys.actions.evaluate import evaluate
    from buildsys.actions.export import export
    from buildsys.actions.report import classification_metrics, layer_table
    from buildsys.actions.train import build_in_scope, fit, inference_copy
    from buildsys.actions.verify import verify

    spec = target.spec
    multi_worker = options.strategy == "multi-worker"
    verbose = 1 if sys.stdout.isatty() and not options.quiet else 0  # otherwise the epoch lines are the progress
    if spec.transfer is not None:
        from buildsys.actions.transfer import train_transfer

        model, strategy, history = train_transfer(
            target, dependencies, splits, current.hparams, current.seed, key.data_fingerprint, tree,
            reporter.action, reporter.say, verbose,
        )  # fmt: skip
    else:
        with reporter.action("compile"):
            model, strategy = build_in_scope(
                spec,
                current.hparams,
                current.seed,
                options.strategy,
                mixed_precision=options.mixed_precision,
                jit=options.jit,
                deterministic=options.deterministic,
            )
        reporter.say(
            f"strategy {type(strategy).__name__} with {strategy.num_replicas_in_sync} replica(s), "
            f"{parameter_count(model):,} parameters"
        )
        checkpoint = TrainingCheckpoint(work / "checkpoint", writable=not multi_worker or is_chief())
        with reporter.action("train"), stream_failures(splits):
            history = fit(model, strategy, spec, splits, current.seed, verbose, checkpoint=checkpoint, say=reporter.say)
        if multi_worker and not is_chief():
            return None
        model = inference_copy(model, spec, current.hparams)
    with reporter.action("evaluate"):
        metrics = evaluate(model, spec, splits)
        probabilities = model.predict(splits.x_test, batch_size=256, verbose=0)
        classified = classification_metrics(splits.y_test, probabilities, spec.class_names)
    reporter.say("test " + ", ".join(f"{name} {value:.4f}" for name, value in metrics.items()))
    with reporter.action("export"):
        tensors = export(model, spec, staging)
        model.save_weights(str(staging / WEIGHTS_FILE))  # what a dependent's target(...) base is rebuilt from
    with reporter.action("verify"):
        parity = verify(spec, staging, splits.x_test, probabilities)
    reporter.say(
        f"parity: ONNX {parity['onnx_max_abs_diff']:.2g}, SavedModel {parity['savedmodel_max_abs_diff']:.2g} "
        f"(max abs over {parity['samples']} inputs)"
    )
    shape = spec.inputs.shape
    manifest = {
        "format": 1,
        "name": spec.name,
        "label": target.label,
        "content_hash": key.digest,
        "created": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "platform": "onnxruntime_onnx",
        "origin": {"kind": "built"},
        "files": {"onnx": "model.onnx", "savedmodel": "model.savedmodel", "keras_weights": WEIGHTS_FILE},
        "dependencies": current.dependencies,
        "inputs": tensors["inputs"],
        "outputs": tensors["outputs"],
        "opset": tensors["opset"],
        "class_names": list(spec.class_names),
        "image": {
            "height": shape[0],
            "width": shape[1],
            "channels": shape[2] if len(shape) == 3 else 1,
            "color_mode": "rgb" if len(shape) == 3 and shape[2] == 3 else "grayscale",
        },
        "metrics": {"test": metrics, **classified},
        "history": history,
        "parity": parity,
        "data_fingerprint": key.data_fingerprint,
        "data_sizes": data_sizes(splits),
        "seed": key.seed,
        "hparams": key.hparams,
        "params": parameter_count(model),
        "model_summary": layer_table(model),
        "strategy": {"name": type(strategy).__name__, "replicas": strategy.num_replicas_in_sync},
        "training": {name: getattr(options, name) for name in ("mixed_precision", "jit", "deterministic")},
        "framework_versions": {**_versions(), "buildsys": key.versions["buildsys"]},
        "spec": spec.to_json(),
        "timings": dict(reporter.timings),
    }
    return manifest, probabilities
