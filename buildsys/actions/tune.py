"""The tune action: a KerasTuner search over the `hp.*` declarations of one definition.

The search space is the definition's own declarations, declared on KerasTuner's `hp` object by `declare`, and
each trial's model comes from `compile.build_model`/`compile.compile_model` with the values KerasTuner chose — the
model code exists once. Trials fit on the training split and are scored on the validation split carved from it
(`data.check_and_split`); the test split is never seen while tuning. Each trial trains under a `tf.distribute`
strategy chosen as a build chooses it (`train.choose_strategy`), on the same global batch, so a search on several
GPUs finds values for the build that will train on them.

Progress is one line per trial start and end (trial number, values, score, best so far). State lives in
`build-out/tuning/<name>/` (`buildsys.tuning`): KerasTuner reloads its project there, so an interrupted search
resumes with the trial that was running.

Distributed tuning is KerasTuner's chief/worker mode, configured through its environment variables
(KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP, KERASTUNER_ORACLE_PORT): the chief holds the oracle and serves it over
gRPC, workers ask it for trials. The chief runs KerasTuner's own `OracleServicer`, but in a loop of ours that
polls twice a second (KerasTuner's `start_server` sleeps 20 s per check once the search is over) and reports the
trials as workers start and finish them.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from buildsys.actions import data as data_action
from buildsys.actions import tensorflow
from buildsys.actions.compile import build_model, compile_model
from buildsys.actions.distributed import describe_strategy
from buildsys.actions.train import choose_strategy
from buildsys.dsl.specs import ModelSpec, validate
from buildsys.errors import DefinitionError
from buildsys.store import OutputTree
from buildsys.tuning import PROJECT, TuningError, check_settings, record_best, tuning_dir
from buildsys.workspace import Target

tensorflow()
import keras_tuner  # noqa: E402 - after tensorflow() has chosen the Keras backend


@dataclass(frozen=True)
class SearchSettings:
    """The arguments a search is built with; KerasTuner does not save them, `buildsys.tuning` does."""

    tuner: str
    max_trials: int | None
    epochs: int
    objective: str
    seed: int

    def direction(self) -> str:
        return "min" if self.objective.endswith("loss") else "max"


def declare(hp: Any, spec: ModelSpec) -> dict[str, Any]:
    """Declares every hyperparameter of `spec` on KerasTuner's `hp`; returns the values chosen for this trial."""
    values = {}
    for name, parameter in sorted(spec.hyperparameters().items()):
        if parameter.kind == "int":
            values[name] = hp.Int(
                name,
                int(parameter.min_value),
                int(parameter.max_value),
                step=int(parameter.step or 1),
                sampling=parameter.sampling,
                default=parameter.default,
            )
        elif parameter.kind == "float":
            values[name] = hp.Float(
                name,
                float(parameter.min_value),
                float(parameter.max_value),
                step=parameter.step,
                sampling=parameter.sampling,
                default=float(parameter.default),
            )
        elif parameter.kind == "choice":
            values[name] = hp.Choice(name, list(parameter.values), default=parameter.default)
        else:
            values[name] = hp.Boolean(name, default=parameter.default)
    return values


class SpecHyperModel(keras_tuner.HyperModel):
    """The definition as a HyperModel: `build(hp)` is the build's own compile step with the trial's values."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(name=spec.name)
        self.spec = spec

    def build(self, hp: Any) -> Any:
        values = declare(hp, self.spec)
        try:
            validate(self.spec, values)  # e.g. a kernel larger than the feature map: skip the trial, not the search
        except DefinitionError as error:
            raise keras_tuner.errors.FailedTrialError(str(error)) from None
        return compile_model(build_model(self.spec, values), self.spec, values)


def describe_trial(trial: Any) -> dict[str, Any]:
    """A KerasTuner trial as `buildsys.tuning.list_trials` describes one read from disk."""
    values = trial.hyperparameters.values
    return {
        "trial_id": trial.trial_id,
        "status": trial.status,
        "score": trial.score,
        "hparams": {key: value for key, value in sorted(values.items()) if not key.startswith("tuner/")},
    }


class TrialReporter:
    """Formats the progress lines and keeps `best.json` current; shared by every role."""

    def __init__(self, tree: OutputTree, target: Target, settings: SearchSettings, say: Callable[[str], None]):
        self.tree = tree
        self.target = target
        self.settings = settings
        self.say = say

    def number(self, trial_id: str) -> str:
        total = f"/{self.settings.max_trials}" if self.settings.max_trials else ""
        return f"trial {int(trial_id) + 1}{total}"

    def started(self, trial: Any, tuner_id: str) -> None:
        values = ", ".join(
            f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
            for key, value in describe_trial(trial)["hparams"].items()
        )
        self.say(f"{self.number(trial.trial_id)} started on {tuner_id}: {values}")

    def ended(self, trial: Any, tuner_id: str, best: Any | None, record: bool) -> None:
        objective = self.settings.objective
        outcome = f"{objective} {trial.score:.4f}" if trial.score is not None else (trial.message or "").strip()
        outcome = outcome.splitlines()[-1] if outcome else "no score"
        line = f"{self.number(trial.trial_id)} {trial.status.lower()} on {tuner_id}: {outcome}"
        if best is not None and best.score is not None:
            line += f" (best so far {best.score:.4f}, {self.number(best.trial_id)})"
            if record:
                record_best(self.tree, self.target, describe_trial(best), objective)
        self.say(line)


class _Reporting:
    """Adds progress lines (and, outside worker mode, `best.json`) to a KerasTuner tuner."""

    reporter: TrialReporter

    def on_trial_begin(self, trial: Any) -> None:
        super().on_trial_begin(trial)
        self.reporter.started(trial, self.tuner_id)

    def on_trial_end(self, trial: Any) -> None:
        super().on_trial_end(trial)
        best = self.oracle.get_best_trials(1)
        ended = self.oracle.get_trial(trial.trial_id)
        self.reporter.ended(ended, self.tuner_id, best[0] if best else None, record=not self._is_worker())


class _RandomSearch(_Reporting, keras_tuner.RandomSearch):
    pass


class _BayesianOptimization(_Reporting, keras_tuner.BayesianOptimization):
    pass


class _Hyperband(_Reporting, keras_tuner.Hyperband):
    pass


def make_tuner(
    spec: ModelSpec, settings: SearchSettings, directory: str, overwrite: bool, strategy: Any | None = None
) -> Any:
    """The KerasTuner tuner for `settings`, reloading the project in `directory` unless `overwrite`; each trial's
    model is built and trained under `strategy` (None: TensorFlow's default)."""
    objective = keras_tuner.Objective(settings.objective, direction=settings.direction())
    common = {
        "hypermodel": SpecHyperModel(spec),
        "objective": objective,
        "seed": settings.seed,
        "directory": directory,
        "project_name": PROJECT,
        "overwrite": overwrite,
        "distribution_strategy": strategy,
    }
    if settings.tuner == "hyperband":
        return _Hyperband(max_epochs=settings.epochs, factor=3, **common)
    if settings.tuner == "bayesian":
        return _BayesianOptimization(max_trials=settings.max_trials, **common)
    return _RandomSearch(max_trials=settings.max_trials, **common)


def _serve_as_chief(tuner: Any, reporter: TrialReporter, poll_seconds: float = 0.5) -> None:
    """Serves the oracle to the workers until every trial is finished and every worker was told to stop.

    Reports each trial when a worker starts it and when it ends, and keeps `best.json` current.
    """
    from concurrent import futures

    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute.oracle_chief import OracleServicer, exit_chief

    oracle = tuner.oracle
    address = f"{os.environ['KERASTUNER_ORACLE_IP']}:{os.environ['KERASTUNER_ORACLE_PORT']}"
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    servicer = OracleServicer(oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    try:
        server.add_insecure_port(address)
    except RuntimeError as error:
        raise TuningError(f"the tuning chief cannot listen on {address}: {error}") from None
    tuner.save()
    server.start()
    reporter.say(f"oracle serving on {address}; waiting for workers")
    announced: set[tuple[str, str]] = set()
    ended = len(oracle.end_order)
    try:
        while True:
            for tuner_id, trial in list(oracle.ongoing_trials.items()):
                if (trial.trial_id, tuner_id) not in announced:
                    announced.add((trial.trial_id, tuner_id))
                    reporter.started(trial, tuner_id)
            for trial_id in oracle.end_order[ended:]:
                best = oracle.get_best_trials(1)
                reporter.ended(oracle.trials[trial_id], "a worker", best[0] if best else None, record=True)
            ended = len(oracle.end_order)
            if servicer.stop_triggered and exit_chief(oracle):
                break
            time.sleep(poll_seconds)
    finally:
        server.stop(grace=1)


def search(
    target: Target,
    tree: OutputTree,
    splits: data_action.Splits | data_action.StreamSplits,
    settings: SearchSettings,
    *,
    role: str,
    overwrite: bool,
    say: Callable[[str], None],
    strategy: Any | None = None,
) -> list[dict[str, Any]]:
    """Runs (or resumes) the search in `build-out/tuning/<name>/`; returns the best trial first (empty for workers).

    Under a `strategy` of several replicas each trial trains on batches of the definition's batch size per
    replica, as a build under that strategy does, so that the values found are the ones a build would train with.

    Raises:
        TuningError: when the definition has no validation split or declares no hyperparameter.
    """
    import keras

    spec = target.spec
    if not spec.hyperparameters():
        raise TuningError(f"{target.label} declares no hyperparameters (hp.Int, hp.Float, ...); nothing to tune")
    replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    train_data, validation = data_action.training_data(
        splits, spec.train.batch_size * replicas, spec.train.shuffle_buffer, settings.seed
    )
    if validation is None:
        raise TuningError(f"{target.label} sets train(validation_split=0); tuning scores trials on a validation split")
    keras.utils.set_random_seed(settings.seed)
    reporter = TrialReporter(tree, target, settings, say)
    tuner = make_tuner(spec, settings, str(tuning_dir(tree, spec.name)), overwrite and role != "worker", strategy)
    tuner.reporter = reporter
    if role == "chief":
        _serve_as_chief(tuner, reporter)
    else:
        tuner.search(train_data, validation_data=validation, epochs=settings.epochs, verbose=0, shuffle=False)
    if role == "worker":
        return []
    return [describe_trial(trial) for trial in tuner.oracle.get_best_trials(1)]


def resolve_role(role: str | None) -> str:
    """`standalone`, `chief` or `worker`, with KerasTuner's environment set to match.

    Without `--role`, KerasTuner's variables decide (as they would for KerasTuner itself). The chief defaults to
    KERASTUNER_TUNER_ID=chief and both roles to 127.0.0.1:8000; each worker needs its own stable
    KERASTUNER_TUNER_ID, because the chief hands a restarted worker the trial it was running under that id.

    Raises:
        TuningError: for a worker without its own KERASTUNER_TUNER_ID.
    """
    if role is None:
        if "KERASTUNER_ORACLE_IP" not in os.environ:
            return "standalone"
        role = "chief" if "chief" in os.environ.get("KERASTUNER_TUNER_ID", "") else "worker"
    os.environ.setdefault("KERASTUNER_ORACLE_IP", "127.0.0.1")
    os.environ.setdefault("KERASTUNER_ORACLE_PORT", "8000")
    if role == "chief":
        os.environ.setdefault("KERASTUNER_TUNER_ID", "chief")
        if "chief" not in os.environ["KERASTUNER_TUNER_ID"]:
            received = os.environ["KERASTUNER_TUNER_ID"]
            raise TuningError(f"tune --role chief needs a KERASTUNER_TUNER_ID containing 'chief'; got {received!r}")
    elif not os.environ.get("KERASTUNER_TUNER_ID") or "chief" in os.environ["KERASTUNER_TUNER_ID"]:
        raise TuningError(
            "tune --role worker needs KERASTUNER_TUNER_ID set to a name unique to this worker, e.g. worker0"
        )
    return role


def tune(
    target: Target,
    tree: OutputTree,
    settings: SearchSettings,
    *,
    role: str | None,
    overwrite: bool,
    data_dir: Path | None,
    say: Callable[[str], None] | None = None,
    strategy: str = "auto",
) -> list[dict[str, Any]]:
    """Loads the data, checks or records the search settings, searches, and reports the best values.

    `strategy` is a `build --strategy` name other than `multi-worker` (distributed tuning is KerasTuner's
    chief/worker mode); the chief runs no trials and creates none. Returns the best trial first (empty for a
    worker, which has no view of the whole search).
    """
    from buildsys import sources
    from buildsys.actions.data import check_and_split
    from buildsys.cache import DIGESTS_DIR, canonical_json, sha256_text

    spec = target.spec
    say = say or (lambda message: print(f"{target.label}: {message}", flush=True))
    role = resolve_role(role)
    dataset = sources.load(spec.data, data_dir)
    splits = check_and_split(dataset, spec, settings.seed)
    distribution = None if role == "chief" else choose_strategy(strategy)
    if role != "worker":
        fingerprint = sources.fingerprint(spec.data, data_dir, tree.root / DIGESTS_DIR)
        recorded = {
            **dataclasses.asdict(settings),
            "definition": sha256_text(canonical_json({"spec": spec.to_json(), "data_fingerprint": fingerprint})),
        }
        if distribution is not None:  # the global batch, and so the scores, follow it
            recorded["replicas"] = distribution.num_replicas_in_sync
        if check_settings(tree, spec.name, recorded, overwrite):
            say(f"resuming the search in {tuning_dir(tree, spec.name)}")
    if distribution is not None:
        say(f"each trial trains under {describe_strategy(distribution)}")
    best = search(target, tree, splits, settings, role=role, overwrite=overwrite, say=say, strategy=distribution)
    if best:
        trial = best[0]
        values = ", ".join(f"{name}={value}" for name, value in trial["hparams"].items())
        say(
            f"best {settings.objective} {trial['score']:.4f} (trial {int(trial['trial_id']) + 1}): {values}; "
            f"build with: python -m buildsys build {target.label} --hparams best"
        )
    return best
