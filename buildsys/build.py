"""The build of one target: a plan, then one job that carries it from the cache lookup to the published version.

The scheduler (`buildsys.schedule`) walks the target graph once and calls `plan` for each target: an immutable
`Plan` holding everything the build will use — label, spec, resolved hyperparameters and seed, the cache key, the
dependencies' published versions and weights digests, and every path it will touch. Planning imports no
TensorFlow, so an up-to-date target costs a few file reads. `BuildJob` then runs the plan in stages, each a method
that takes the plan and returns what the next needs (KerasTuner's oracle / tuner / trial split, with the plan
passed between roles): look up a published version (local, then an optional `RemoteCache`); load data; train,
evaluate, export, verify and report into a staging folder; publish; upload. Nothing after `plan` computes a key
or a path. The job holds the target's build lock from its lookup to its publish, so a second build of the same
target waits and then finds the first one's version; the staging folder is removed on any failure or interrupt
and renamed into place only when everything passed, the quality gate included (a rejected candidate is moved to
`build-out/rejected/` instead).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

from buildsys import sources
from buildsys.cache import DIGESTS_DIR, CacheKey, cache_key, file_sha256
from buildsys.console import Reporter, warn_once
from buildsys.dsl.specs import ModelSpec, validate
from buildsys.errors import BuildsysError, DefinitionError, one_line
from buildsys.gate import (
    TEST_PROBABILITIES_FILE,
    QualityGateError,
    Verdict,
    accuracy_of,
    judge,
    reject,
    rejected_dir,
)
from buildsys.graph import Dependency
from buildsys.model_index import write_index
from buildsys.store import WEIGHTS_FILE, OutputTree
from buildsys.transfer import dependency_digests, features_path
from buildsys.workspace import Target
from modelrepo import MANIFEST_FILE, MANIFEST_FORMAT, PLATFORM, FormatError, Manifest


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
    tensorboard: bool = False  # per-epoch scalars under the work folder; not keyed, it changes no weights

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


@dataclass(frozen=True)
class KeptCandidate:
    """A candidate an earlier build kept when the gate rejected it, and this build's verdict on it."""

    folder: Path
    manifest: dict[str, Any]
    verdict: Verdict


@dataclass
class BuildResult:
    label: str
    status: str  # "up to date" | "built" | "fetched" | "trained (worker)" | "failed" | "skipped"
    version: int
    content_hash: str
    metrics: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    reason: str = ""  # failed: the error's one line; skipped: "depends on LABEL"
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "status": self.status,
            "version": self.version,
            "content_hash": self.content_hash,
            "metrics": self.metrics,
            "timings": self.timings,
            "reason": self.reason,
            "seconds": self.seconds,
        }


@dataclass(frozen=True)
class BuildPaths:
    """Every place a build of one target reads or writes in the output tree, fixed when it is planned."""

    model_dir: Path
    staging_root: Path
    work_dir: Path | None = None  # per content hash: training checkpoints; None until the key is known
    features: Path | None = None  # a transfer target's cached base features; None until data and base are known


@dataclass(frozen=True)
class Plan:
    """What one target's build is keyed on and where it goes; `key` is None while the data is not on this machine.

    `dependencies` are the targets a transfer target's base is cut from, each with its content hash, published
    version and weights digest; `upstream` is what of them enters the key. `newer_than` is the highest version
    number published when a `--force` build was planned: it ignores versions up to it, and accepts a version with
    its key that another build published meanwhile (0 without --force).
    """

    target: Target
    options: BuildOptions
    hparams: dict[str, Any]
    seed: int
    key: CacheKey | None
    published_version: int | None
    paths: BuildPaths
    dependencies: tuple[Dependency, ...] = ()
    upstream: dict[str, str] = field(default_factory=dict)
    newer_than: int = 0

    @property
    def label(self) -> str:
        return self.target.label

    @property
    def spec(self) -> ModelSpec:
        return self.target.spec

    def keyed(self, data_fingerprint: str, tree: OutputTree) -> Plan:
        """This plan keyed on data with `data_fingerprint`: the one place a build's key and key-dependent paths
        are computed (at planning, or after the data was fetched by the build)."""
        spec = self.spec
        key = cache_key(spec, data_fingerprint, self.seed, self.hparams, self.options.training_key(), self.upstream)
        features = (
            features_path(tree, self.target, self.dependencies, data_fingerprint, self.seed) if spec.transfer else None
        )
        paths = dataclasses.replace(self.paths, work_dir=tree.work_dir(spec.name, key.digest), features=features)
        published = find_published(tree, spec, key, self.newer_than)
        return dataclasses.replace(self, key=key, paths=paths, published_version=published)


def find_published(tree: OutputTree, spec: ModelSpec, key: CacheKey, newer_than: int = 0) -> int | None:
    """The published version built from `key`; else the newest one trained from the same inputs under another
    quality gate (or none) when it passes this build's gate: a gate judges a trained model and changes nothing in
    it, so a changed gate judges the published model again instead of training the same model again. Reads
    manifests only (no TensorFlow)."""
    found = tree.find_version(spec.name, key.digest, newer_than)
    if found is not None:
        return found
    trained = tree.find_trained(spec.name, key.training_digest, newer_than)
    return trained if trained is not None and regate(tree, spec, trained).passed else None


def regate(tree: OutputTree, spec: ModelSpec, version: int) -> Verdict:
    """The definition's gate on a published version, as if it were being published now: against the latest
    version, or, when it is the latest, against the version it replaced."""
    versions = tree.versions(spec.name)
    earlier = [other for other in versions if other < version]
    baseline = versions[-1] if versions[-1] != version else (earlier[-1] if earlier else None)
    manifest = tree.manifest(spec.name, version)
    accuracy = accuracy_of(manifest.metrics)
    if accuracy is None:  # a version that recorded no test accuracy cannot be judged
        return Verdict(spec.evaluate is not None, 0.0, failures=[f"version {version} records no test accuracy"])
    candidate = {"metrics": {"accuracy": accuracy}, "data_fingerprint": manifest.data_fingerprint}
    return judge(spec.evaluate, candidate, tree.manifest(spec.name, baseline) if baseline else None)


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
    """Plans `target`: its hyperparameters, seed, key and paths, and the published version built from that key.
    Imports no TensorFlow.

    `dependencies` are the targets a transfer target's base is cut from, as the scheduler resolved them
    (`buildsys.schedule.walk` gives the order); their content hashes enter the key.
    """
    spec = target.spec
    upstream = dependency_digests(target, dependencies)
    if spec.transfer is not None:
        options = _transfer_options(target.label, options)
    unkeyed = Plan(
        target=target,
        options=options,
        hparams=resolve_hparams(spec, options.hparams),
        seed=spec.train.seed if options.seed is None else options.seed,
        key=None,
        published_version=None,
        paths=BuildPaths(model_dir=tree.model_dir(spec.name), staging_root=tree.staging_root(spec.name)),
        dependencies=tuple(dependencies),
        upstream=upstream,
        newer_than=tree.highest_version(spec.name) if options.force else 0,
    )
    fingerprint = sources.fingerprint(spec.data, options.data_dir, tree.root / DIGESTS_DIR)
    return unkeyed.keyed(fingerprint, tree) if fingerprint else unkeyed


def _transfer_options(label: str, options: BuildOptions) -> BuildOptions:
    """The options a transfer target's training honours: it fits its head on cached features and fine-tunes under
    the default strategy, in float32, without XLA or TensorBoard logs (`--deterministic` it honours). The others
    are dropped with one warning, so that neither its key nor its manifest claims them, and the rest of a pattern
    build keeps them."""
    dropped = [f"--strategy {options.strategy}"] if options.strategy in ("mirrored", "multi-worker") else []
    flags = (
        ("--mixed-precision", options.mixed_precision),
        ("--jit", options.jit),
        ("--tensorboard", options.tensorboard),
    )
    dropped += [flag for flag, given in flags if given]
    if not dropped:
        return options
    warn_once(
        f"{label}: {', '.join(dropped)} do{'es' if len(dropped) == 1 else ''} not apply to a transfer target "
        "(its head is fitted on cached features, and fine-tuning runs under the default strategy); it builds without"
    )
    strategy = "auto" if options.strategy in ("mirrored", "multi-worker") else options.strategy
    return dataclasses.replace(options, strategy=strategy, mixed_precision=False, jit=False, tensorboard=False)


def onnx_outputs(folder: Path, manifest: dict[str, Any], images: Any, batch_size: int = 256) -> Any:
    """The outputs of the ONNX model in `folder` (as `manifest` describes it: one input, the first output) on
    `images`, a batch at a time on the CPU.

    Raises:
        BuildsysError: the model does not load or does not take these images (one line naming the file).
    """
    import numpy as np
    import onnxruntime

    try:
        described = Manifest.from_json(manifest, str(folder / MANIFEST_FILE))
    except FormatError as error:
        raise BuildsysError(str(error)) from None
    path = folder / described.onnx_file
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed, output = described.inputs[0].name, described.outputs[0].name
        batches = [
            session.run([output], {feed: images[start : start + batch_size]})[0]
            for start in range(0, len(images), batch_size)
        ]
    except Exception as error:  # onnxruntime raises its own types for unloadable models and bad feeds
        raise BuildsysError(f"{path}: cannot run it on the test split: {one_line(error, 200)}") from None
    return np.concatenate(batches).astype(np.float32)


class RemoteCache(Protocol):
    """A shared cache the build job consults after a local miss and fills after a publish (issue 14's seam).

    `fetch` downloads and verifies the version built from `plan.key` into `staging` (an empty folder the job
    owns and removes on failure) and returns its manifest without a version number, or None on a miss (a
    corrupt or unreachable cache is a miss); the job then publishes the folder as it publishes a local build.
    `upload` stores a version this job built (`version_dir`, complete and published) under `plan.key`. Both tell
    the user what they did through `say`, a line in the target's block.
    """

    def fetch(self, plan: Plan, staging: Path, say: Callable[[str], None]) -> Manifest | None: ...

    def upload(self, plan: Plan, version_dir: Path, say: Callable[[str], None]) -> None: ...


def _versions() -> dict[str, str]:
    found = {}
    for package in ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


class BuildJob:
    """Runs one plan: lookup → (remote fetch | load data → train … report) → publish → upload.

    Seams for a shared cache: `remote.fetch` is tried after the local lookup misses and before any data is loaded
    or model trained; `remote.upload` after a version built here is published. Both run under the target lock.
    """

    def __init__(self, plan: Plan, tree: OutputTree, remote: RemoteCache | None = None) -> None:
        self.plan = plan
        self.tree = tree
        self.remote = remote
        self.reporter = Reporter(plan.label, plan.options.quiet)

    def run(self) -> BuildResult:
        """Builds the plan's target unless a published version has its key; returns what happened.

        Raises:
            BuildsysError: for bad data, a failed parity check, or a strategy this machine cannot run; nothing is
                published and the staging folder is removed.
            QualityGateError: the candidate failed its quality gate; nothing is published and the staging folder is
                kept under `build-out/rejected/<name>/<hash>/`.
        """
        if self.plan.published_version is not None:
            return self.up_to_date(self.plan, self.plan.published_version)
        with self._lock():
            return self._run_locked(self.plan)

    def _lock(self) -> contextlib.AbstractContextManager[Any]:
        """The target lock, which multi-worker tasks other than the chief do not take: they train in lockstep
        with the chief (which holds it) and publish nothing."""
        if self.plan.options.strategy == "multi-worker":
            from buildsys.actions.distributed import is_chief

            if not is_chief():
                return contextlib.nullcontext()
        name = self.plan.spec.name
        return self.tree.target_lock(name, waiting=lambda: self.reporter.say("waiting for another build of it"))

    def lookup(self, plan: Plan) -> int | None:
        """The published version built from the plan's key, looked up again under the lock: another build of the
        same target may have published it while this one waited."""
        return find_published(self.tree, plan.spec, plan.key, plan.newer_than)

    def up_to_date(self, plan: Plan, version: int) -> BuildResult:
        """Reports `version` and repairs the model-level files (and the version's copies) when that version is the
        latest and they are missing, stale (a build killed after its rename) or written with other serving
        settings (`max_batch_size`). The result carries the version's own key, which dependents are keyed on: a
        version trained under another gate keeps the key it was built with."""
        name = plan.spec.name
        if self.tree.versions(name)[-1] == version:
            for path in self.tree.refresh_model_files(name, plan.spec.export.max_batch_size):
                self.reporter.say(f"rewrote {path}")
        content_hash = self.tree.manifest(name, version).content_hash
        if content_hash != plan.key.digest:
            self.reporter.say(
                f"version {version} was trained from these inputs under another quality gate; it passes this one"
            )
        self.reporter.result(f"up to date (version {version})")
        return BuildResult(plan.label, "up to date", version, content_hash)

    def _check_gate_of_published(self, plan: Plan) -> None:
        """Fails the build at once when a published version was trained from these inputs under another gate and
        fails this one (`find_published` takes one that passes): the same training would be rejected the same
        way. `--force` trains.

        Raises:
            QualityGateError: naming the version and why this gate rejects it.
        """
        trained = self.tree.find_trained(plan.spec.name, plan.key.training_digest, plan.newer_than)
        if trained is None or plan.spec.evaluate is None or plan.options.strategy == "multi-worker":
            return
        verdict = regate(self.tree, plan.spec, trained)
        if verdict.passed:  # the lookup just before takes a version that passes; nothing to refuse
            return
        raise QualityGateError(
            f"{plan.label}: rejected by the quality gate: {'; '.join(verdict.failures)}; published version "
            f"{trained} was trained from these inputs under another gate and stays published; nothing was trained; "
            "build --force trains it again"
        )

    def _run_locked(self, plan: Plan) -> BuildResult:
        started = time.perf_counter()
        if plan.key is not None and (found := self.lookup(plan)) is not None:
            return self.up_to_date(plan, found)
        if plan.key is not None and (fetched := self._fetch(plan)) is not None:
            return fetched
        if plan.key is not None:
            self._check_gate_of_published(plan)
        kept = self._kept_candidate(plan) if plan.key is not None else None
        splits = self.load_data(plan)
        if plan.key is None:  # the data was fetched just now: key the build on what arrived
            fingerprint = sources.fingerprint(plan.spec.data, plan.options.data_dir, self.tree.root / DIGESTS_DIR)
            if fingerprint is None:
                raise BuildsysError(f"{plan.label}: the data was loaded but its files cannot be found to fingerprint")
            plan = plan.keyed(fingerprint, self.tree)
            if (found := self.lookup(plan)) is not None:
                return self.up_to_date(plan, found)
            if (fetched := self._fetch(plan)) is not None:
                return fetched
            self._check_gate_of_published(plan)
            kept = self._kept_candidate(plan)
        staging = self.tree.staging_dir(plan.spec.name)
        try:
            if kept is not None:
                manifest = self._pass_kept_candidate(plan, kept, splits, staging)
            else:
                manifest = self.train(plan, splits, staging)
            if manifest is None:
                shutil.rmtree(staging, ignore_errors=True)
                self.reporter.result("trained as a multi-worker task; the chief evaluates and publishes")
                return BuildResult(plan.label, "trained (worker)", 0, plan.key.digest, {}, self.reporter.timings)
            if kept is None:  # a kept candidate keeps the timings of the build that trained it
                total = round(time.perf_counter() - started, 3)
                manifest = manifest.replace(timings={**manifest.timings, "total": total})
            version = self.publish(plan, staging, manifest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if kept is not None:
            shutil.rmtree(kept.folder, ignore_errors=True)  # published now: no longer a rejected candidate
        work = plan.paths.work_dir
        shutil.rmtree(work / "checkpoint" if plan.options.tensorboard else work, ignore_errors=True)  # done with them
        if self.remote is not None:
            self.remote.upload(plan, plan.paths.model_dir / str(version), self.reporter.say)
        if plan.options.tensorboard and kept is None:
            from buildsys.actions.train import TENSORBOARD_DIR  # loaded already: this build trained

            self.reporter.result(f"TensorBoard logs: tensorboard --logdir {work / TENSORBOARD_DIR}")
        test = manifest.metrics["test"]
        return BuildResult(plan.label, "built", version, plan.key.digest, test, self.reporter.timings)

    def _fetch(self, plan: Plan) -> BuildResult | None:
        """A version from the remote cache, published here as a local build would be; None on a miss."""
        if self.remote is None:
            return None
        staging = self.tree.staging_dir(plan.spec.name)
        try:
            manifest = self.remote.fetch(plan, staging, self.reporter.say)
            if manifest is None:
                shutil.rmtree(staging, ignore_errors=True)
                return None
            version = self.publish(plan, staging, manifest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        # Its own key, which dependents are keyed on: one fetched by its training digest was built under another gate.
        test = manifest.metrics.get("test", {})
        return BuildResult(plan.label, "fetched", version, manifest.content_hash, test)

    def _kept_candidate(self, plan: Plan) -> KeptCandidate | None:
        """The candidate an earlier build of the same training kept when the gate rejected it, judged by this
        build's gate against what is published now: when it passes, the build publishes it instead of training the
        same model again (a relaxed gate, or a published version that changed); None when none is kept.
        `--force` always trains.

        Raises:
            QualityGateError: the kept candidate still fails: the same training would reach the same verdict.
        """
        if plan.options.force or plan.spec.evaluate is None or plan.options.strategy == "multi-worker":
            return None  # a multi-worker build's tasks must all train together, as for the remote cache
        kept = rejected_dir(self.tree, plan.spec.name, plan.key.training_digest)
        try:
            candidate = json.loads((kept / MANIFEST_FILE).read_text(encoding="utf-8"))
            verdict = judge(plan.spec.evaluate, candidate, self.tree.latest_manifest(plan.spec.name))
        except (OSError, ValueError, KeyError, TypeError):
            return None  # none kept, or one from an older buildsys: train
        if not verdict.passed:
            raise QualityGateError(
                f"{plan.label}: rejected by the quality gate: {'; '.join(verdict.failures)}; nothing was published; "
                f"this content was trained and rejected before (the candidate and its report are in {kept}); "
                "build --force trains it again"
            )
        return KeptCandidate(kept, candidate, verdict)

    def _pass_kept_candidate(self, plan: Plan, kept: KeptCandidate, splits: Any, staging: Path) -> Manifest:
        """Copies a kept candidate that passes the gate now into `staging` as this build's candidate: keyed with
        this build's key and spec (only the gate differs), judged by its gate, its report drawn again from the
        test split and the probabilities it was judged on; the kept folder goes once the version is published.
        A candidate kept without them (fetched from a remote cache and rejected here, or kept by an older
        buildsys) has its `model.onnx` run over the test split instead: seconds of ONNX Runtime, not a training
        (its parity with the trained model was checked when it was built, and its probe when it was fetched)."""
        import numpy as np

        from buildsys.actions.report import write_report

        self.reporter.say(
            f"the candidate rejected earlier ({kept.folder}) passes the gate now; publishing it untrained"
        )
        with self.reporter.action("report"):
            saved = kept.folder / TEST_PROBABILITIES_FILE
            if saved.is_file():
                probabilities = np.load(saved, allow_pickle=False)
            else:
                probabilities = onnx_outputs(kept.folder, kept.manifest, splits.x_test)
            if probabilities.shape != (len(splits.y_test), len(plan.spec.class_names)):
                raise BuildsysError(
                    f"{kept.folder / TEST_PROBABILITIES_FILE}: not this test split's probabilities "
                    f"({probabilities.shape}); build --force trains the candidate again"
                )
            shutil.rmtree(staging)
            shutil.copytree(kept.folder, staging, ignore=shutil.ignore_patterns(TEST_PROBABILITIES_FILE))
            manifest = {
                **kept.manifest,
                "content_hash": plan.key.digest,
                "label": plan.label,
                "spec": plan.spec.to_json(),
                "quality_gate": kept.verdict.to_json(),
            }
            write_report(staging, manifest, splits.x_test, splits.y_test, probabilities)
        for note in kept.verdict.notes:
            self.reporter.say(f"quality gate: {note}")
        return Manifest.from_json(manifest, f"{plan.label} (kept candidate)")

    def load_data(self, plan: Plan) -> Any:
        from buildsys.actions.data import check_and_split

        with self.reporter.action("load data"):
            dataset = sources.load(plan.spec.data, plan.options.data_dir)
            return check_and_split(dataset, plan.spec, plan.seed)

    def train(self, plan: Plan, splits: Any, staging: Path) -> Manifest | None:
        """compile → train → evaluate → export → verify → report, into `staging`; returns the manifest (without a
        version), or None for a multi-worker task other than the chief, which only trains.

        Raises:
            QualityGateError: the candidate failed the definition's gate (moved to `build-out/rejected/`).
        """
        from buildsys.actions.report import write_report

        outcome = _run_actions(plan, splits, staging, self.tree, self.reporter)
        if outcome is None:
            return None
        manifest, probabilities = outcome
        with self.reporter.action("report"):
            verdict = judge(plan.spec.evaluate, manifest, self.tree.latest_manifest(plan.spec.name))
            manifest["quality_gate"] = verdict.to_json()
            write_report(staging, manifest, splits.x_test, splits.y_test, probabilities)
        manifest["timings"]["report"] = self.reporter.timings["report"]
        for note in verdict.notes:
            self.reporter.say(f"quality gate: {note}")
        if not verdict.passed:
            import numpy as np

            np.save(staging / TEST_PROBABILITIES_FILE, np.asarray(probabilities, np.float32), allow_pickle=False)
            raise reject(self.tree, staging, manifest, verdict, plan.key.training_digest)
        return Manifest.from_json(manifest, f"{plan.label} (being built)")

    def publish(self, plan: Plan, staging: Path, manifest: Manifest) -> int:
        with self.reporter.action("publish"):
            version = self.tree.publish(plan.spec.name, staging, manifest, plan.spec.export.max_batch_size)
            write_index(plan.paths.model_dir)  # the page across versions, beside the version folders
        self.reporter.result(f"published version {version} to {plan.paths.model_dir / str(version)}")
        return version


def _run_actions(
    plan: Plan, splits: Any, staging: Path, tree: OutputTree, reporter: Reporter
) -> tuple[dict[str, Any], Any] | None:
    """compile → train → evaluate → export → verify, into `staging`; returns the manifest (without version) and the
    model's probabilities on the test split, predicted once for the metrics, the parity check and the report.

    Training checkpoints into the plan's work folder. A multi-worker task other than the chief returns None after
    training: only the chief evaluates, exports and publishes. A transfer target compiles and trains in
    `buildsys.actions.transfer` (base, cached features, head, fine-tuning) and joins the common path at evaluate.
    """
    from buildsys.actions.checkpoints import TrainingCheckpoint
    from buildsys.actions.compile import parameter_count
    from buildsys.actions.data import data_sizes, stream_failures
    from buildsys.actions.distributed import describe_strategy, is_chief
    from buildsys.actions.evaluate import evaluate
    from buildsys.actions.export import export
    from buildsys.actions.report import classification_metrics, layer_table
    from buildsys.actions.train import TENSORBOARD_DIR, build_in_scope, fit, inference_copy
    from buildsys.actions.verify import verify

    spec, options, key = plan.spec, plan.options, plan.key
    multi_worker = options.strategy == "multi-worker"
    verbose = 1 if sys.stdout.isatty() and not options.quiet else 0  # otherwise the epoch lines are the progress
    work = plan.paths.work_dir
    if spec.transfer is not None:
        from buildsys.actions.transfer import train_transfer

        checkpoint = TrainingCheckpoint(work / "checkpoint")
        model, strategy, history = train_transfer(
            plan, splits, tree, reporter.action, reporter.say, verbose, checkpoint
        )
    else:
        with reporter.action("compile"):
            model, strategy = build_in_scope(
                spec,
                plan.hparams,
                plan.seed,
                options.strategy,
                mixed_precision=options.mixed_precision,
                jit=options.jit,
                deterministic=options.deterministic,
            )
        reporter.note(f"{describe_strategy(strategy)}, {parameter_count(model):,} parameters")
        checkpoint = TrainingCheckpoint(work / "checkpoint", writable=not multi_worker or is_chief())
        logs = work / TENSORBOARD_DIR if options.tensorboard else None
        with reporter.action("train"), stream_failures(splits):
            history = fit(
                model, strategy, spec, splits, plan.seed, verbose, checkpoint=checkpoint, say=reporter.say,
                tensorboard=logs,
            )  # fmt: skip
        if multi_worker and not is_chief():
            return None
        model = inference_copy(model, spec, plan.hparams)
    with reporter.action("evaluate"):
        metrics = evaluate(model, spec, splits)
        probabilities = model.predict(splits.x_test, batch_size=256, verbose=0)
        classified = classification_metrics(splits.y_test, probabilities, spec.class_names)
    reporter.note("test " + ", ".join(f"{name} {value:.4f}" for name, value in metrics.items()))
    with reporter.action("export"):
        tensors = export(model, spec, staging)
        model.save_weights(str(staging / WEIGHTS_FILE))  # what a dependent's target(...) base is rebuilt from
    with reporter.action("verify"):
        parity = verify(spec, staging, splits.x_test, probabilities)
    reporter.note(
        f"parity: ONNX {parity['onnx_max_abs_diff']:.2g}, SavedModel {parity['savedmodel_max_abs_diff']:.2g} "
        f"(max abs over {parity['samples']} inputs)"
    )
    shape = spec.inputs.shape
    manifest = {
        "format": MANIFEST_FORMAT,
        "name": spec.name,
        "label": plan.label,
        "content_hash": key.digest,
        "training_digest": key.training_digest,  # what a build under another gate finds it by (`find_trained`)
        "created": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "platform": PLATFORM,
        "origin": {"kind": "built"},  # a remote cache hit records the cache and key instead (buildsys.remote)
        "files": {"onnx": "model.onnx", "savedmodel": "model.savedmodel", "keras_weights": WEIGHTS_FILE},
        "dependencies": plan.upstream,
        "dependency_versions": {
            dependency.target.label: {"version": dependency.version, "weights_sha256": dependency.weights_digest}
            for dependency in plan.dependencies
        },
        "weights_sha256": file_sha256(staging / WEIGHTS_FILE),
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
        "strategy": {
            "name": type(strategy).__name__,
            "replicas": strategy.num_replicas_in_sync,
            "description": describe_strategy(strategy),
        },
        "training": {name: getattr(options, name) for name in ("mixed_precision", "jit", "deterministic")},
        "framework_versions": {**_versions(), "buildsys": key.versions["buildsys"]},
        "spec": spec.to_json(),
        "timings": dict(reporter.timings),
    }
    return manifest, probabilities
