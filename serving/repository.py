"""The model repository being served: scans the output tree, loads versions, hot-reloads, loads and unloads.

Every model folder under the repository folders (one, or several as Triton's repeated --model-repository: a model
name held by more than one of them serves from none) is loaded at start, by its version policy, and rescanned by
the data plane's poll. A new version is loaded and validated off the event loop (manifest, config.pbtxt, ONNX
session, a test run) while the old one serves, then swapped in by replacing one dictionary, so lookups on the
request path take no lock. A replaced version is handed back to the caller to retire on the loop: it keeps its
batcher until its last in-flight request finishes, so a swap never fails or drops a request.

No file can take the server down: whatever one model's files raise refuses only that model or version, with one
log line naming the file and the reason, and the scan goes on with the others. Each version is remembered with
the state of what its load read (its configuration, the contents of its label files, and the name, size and
modification time of the files in its folder and the warmup folder): a poll reloads a served version whose state
changed, as Triton's POLL does, and a refused version is tried again only when its state changes; what served
keeps serving meanwhile. Model names from requests are only ever looked up among loaded models, and the
repository API accepts only names matching the output tree's pattern, so no request can reach another path.
"""

import asyncio
import contextlib
import dataclasses
import hashlib
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import modelrepo
from modelrepo import CONFIG_FILE, MODEL_NAME, VERSION_NAME, list_versions
from serving.backend_config import (
    graph_optimization_level,
    instance_count,
    intra_op_thread_count,
    placed_on_cpu,
    session_settings,
)
from serving.batcher import DynamicBatcher
from serving.codec import shown
from serving.ensemble import ENSEMBLE_PLATFORM, Step, check_steps, dependency_order, read_steps, step_models
from serving.errors import ModelLoadError, ServingError, Status, first_line
from serving.mirror import FetchError, RepositoryMirror
from serving.model_files import Manifest, read_config, read_version
from serving.protocol import model_config_pb2
from serving.runtime import OnnxModel, RuntimeOptions, requests_cuda, shared_threads
from serving.signature import ModelSignature
from serving.statistics import ModelStats
from serving.version_policy import VersionPolicy
from serving.warmup import WARMUP_FOLDER, warm_up, warmup_samples

log = logging.getLogger(__name__)

# Triton treats max_queue_size 0 as unbounded; serving never queues without limit, so 0 means this default.
DEFAULT_MAX_QUEUE_SIZE = 256
# Versions a scan loads at once: Triton's --model-load-thread-count default. Creating a session releases the GIL.
DEFAULT_LOAD_THREADS = 4


@dataclass(frozen=True)
class BatchingOverrides:
    """Command-line values that replace config.pbtxt's; None keeps the config's value."""

    max_batch_size: int | None = None
    max_queue_delay_us: int | None = None
    max_queue_size: int | None = None


@dataclass(frozen=True)
class IndexEntry:
    name: str
    version: str
    state: str
    reason: str


@dataclass(frozen=True)
class QueuePolicy:
    """One priority level's queue: config.pbtxt's ``ModelQueuePolicy``, read as Triton reads it.

    ``default_timeout_us`` applies to every request (0: none); a request's own ``timeout`` may only shorten it,
    and only where ``overridable`` (``allow_timeout_override``). Without a default, a request's own timeout applies
    as given (Triton ignores it then; gRPC deadlines apply in either). When a request's timeout passes while it is
    queued, ``rejects`` drops it (``timeout_action: REJECT``); otherwise (``DELAY``) it stays queued behind the
    requests of its level whose timeout has not passed. ``max_queue_size`` bounds the level's queue.
    """

    default_timeout_us: int = 0
    overridable: bool = False
    rejects: bool = True
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE

    @classmethod
    def from_config(cls, policy: model_config_pb2.ModelQueuePolicy, max_queue_size: int) -> "QueuePolicy":
        return cls(
            default_timeout_us=policy.default_timeout_microseconds,
            overridable=policy.allow_timeout_override,
            rejects=policy.timeout_action == model_config_pb2.ModelQueuePolicy.REJECT,
            max_queue_size=max_queue_size,
        )

    def timeout_us(self, requested_us: int) -> int:
        """The queue timeout, in microseconds (0: none), of a request that asks for ``requested_us`` (0: none)."""
        if not self.default_timeout_us:
            return requested_us
        if self.overridable and 0 < requested_us < self.default_timeout_us:
            return requested_us
        return self.default_timeout_us


@dataclass(frozen=True)
class Batching:
    """How a version's requests are queued and merged: config.pbtxt's scheduling, after the command line's overrides.

    ``merges`` is False for a model whose config has no ``dynamic_batching``: Triton then runs each request alone,
    and so does this server (a model may answer differently in a batch it was not meant for). With
    ``priority_levels``, a request's ``priority`` picks its level (1 first; 0 or out of range: the default level),
    each level with its own queue policy; without them every request is on level 0.
    """

    max_batch_size: int  # 0 for a model that does not batch: each request runs alone
    max_queue_delay_us: int
    default_policy: QueuePolicy = QueuePolicy()
    merges: bool = True
    priority_levels: int = 0
    default_priority_level: int = 0
    level_policies: Mapping[int, QueuePolicy] = dataclasses.field(default_factory=dict)
    preferred_batch_sizes: tuple[int, ...] = ()

    def level(self, priority: int) -> int:
        """The priority level a request's ``priority`` parameter puts it on, as Triton maps it."""
        return priority if 0 < priority <= self.priority_levels else self.default_priority_level

    def policy(self, level: int) -> QueuePolicy:
        return self.level_policies.get(level, self.default_policy)

    def describe(self) -> str:
        """The scheduling in the words of config.pbtxt, for the log line of a loaded version."""
        if not self.merges:
            return f"no dynamic batching (each request runs alone), max_queue_size {self.default_policy.max_queue_size}"
        levels = f", {self.priority_levels} priority levels" if self.priority_levels else ""
        preferred = f", preferred_batch_size {list(self.preferred_batch_sizes)}" if self.preferred_batch_sizes else ""
        return (
            f"max_queue_delay_us {self.max_queue_delay_us}, max_queue_size {self.default_policy.max_queue_size}"
            + levels
            + preferred
        )


@dataclass(frozen=True)
class _Refusal:
    """Why a version was refused, and the state of what its load read then (``_version_state``): it is retried
    when that changes."""

    reason: str
    state: tuple


_GENERATIONS = itertools.count(1)


class ServedVersion:
    """One loaded, validated model version with its session, batcher and statistics."""

    def __init__(
        self,
        config: model_config_pb2.ModelConfig,
        manifest: Manifest,
        model: OnnxModel | None,
        batching: Batching,
        on_batch: Callable[[str, int], None],
        *,
        loaded_from: tuple,
        steps: tuple[Step, ...] = (),
    ) -> None:
        """``model`` None and ``steps`` given: an ensemble, which has no session and no batcher of its own (its
        steps' models batch its requests). ``loaded_from``: the state of what the load read (``_version_state``),
        taken before reading it, so that a change made during the load still reloads it at the next poll."""
        self.config = config
        self.loaded_from = loaded_from
        self.manifest = manifest
        self.model = model
        self.steps = steps
        self.batching = batching
        self.stats = ModelStats()
        # This load of the version, unlike any other: a response cache keyed by it never answers from another.
        self.generation = next(_GENERATIONS)
        self.caches_answers = config.response_cache.enable
        self.batcher = (
            None
            if model is None
            else DynamicBatcher(
                name=f"{manifest.name}/{manifest.version}",
                instances=model.runners,
                wide=model.wide_runner,
                # A model that does not batch is queued as one row per request, so no two requests are merged.
                max_batch_size=max(1, batching.max_batch_size),
                max_queue_delay_us=batching.max_queue_delay_us,
                max_queue_size=batching.default_policy.max_queue_size,
                level_queue_sizes={level: policy.max_queue_size for level, policy in batching.level_policies.items()},
                merges=batching.merges,
                preferred_batch_sizes=batching.preferred_batch_sizes,
                stats=self.stats,
                on_batch=lambda size: on_batch(manifest.name, size),
            )
        )
        # Changed only on the event loop (requests and retirement run there), so no lock is needed.
        self._inflight = 0
        self._idle: asyncio.Event | None = None

    @property
    def queue_depth(self) -> int:
        """Requests waiting for an execution of this version (none for an ensemble: its steps' models queue)."""
        return 0 if self.batcher is None else self.batcher.queue_depth

    @property
    def max_batch_size(self) -> int:
        """0 for a model that does not batch, else the most samples a request or merged batch holds."""
        return self.batching.max_batch_size

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def signature(self) -> ModelSignature:
        return self.manifest.signature

    @property
    def version(self) -> int:
        return self.manifest.version

    def renew(self) -> None:
        """A model an ensemble's steps run changed: its answers cached before are no longer this ensemble's (as a
        reload would, without reloading)."""
        self.generation = next(_GENERATIONS)

    def acquire(self) -> None:
        self._inflight += 1

    def release(self) -> None:
        self._inflight -= 1
        if self._inflight == 0 and self._idle is not None:
            self._idle.set()

    async def retire(self) -> None:
        """Waits for the requests that hold this version, then finishes its queue (it serves no one new)."""
        while self._inflight:
            self._idle = asyncio.Event()
            await self._idle.wait()
        if self.batcher is not None:
            await self.batcher.close()
        log.info("model '%s' version %d unloaded", self.name, self.version)


class ModelRepository:
    """All models served from the repository folders.

    Scans, loads and unloads are blocking (file reads, ONNX Runtime sessions) and run one at a time on a worker
    thread; each returns the versions it replaced, for the caller to ``retire()`` on the event loop. Lookups
    read one immutable dictionary and take no lock.
    """

    def __init__(
        self,
        repositories: Sequence[Path | RepositoryMirror],
        runtime_options: RuntimeOptions,
        *,
        version_policy: VersionPolicy | None = None,
        batching: BatchingOverrides = BatchingOverrides(),
        on_batch: Callable[[str, int], None] = lambda model, size: None,
        caches_answers: bool = False,
        load_threads: int = DEFAULT_LOAD_THREADS,
        auto_complete: bool = True,
    ) -> None:
        """Creates the repository; nothing is loaded before ``load_all()``.

        Args:
            repositories: the repository folders, each holding model folders, or mirrors of repositories in object
                storage (synced before each scan and load, then served from their local folders).
            caches_answers: whether the server keeps a response cache (``--cache-config``); a model whose config
                enables ``response_cache`` without one is told so when it loads.
            load_threads: versions a scan loads at once (Triton's --model-load-thread-count); 1 loads one after
                another.
            auto_complete: whether a model without config.pbtxt, or whose config lists no tensors, takes them from
                its ONNX file, as Triton does unless --disable-auto-complete-config.
        """
        self.roots = tuple(r.folder if isinstance(r, RepositoryMirror) else r for r in repositories)
        self._mirrors = {r.folder: r for r in repositories if isinstance(r, RepositoryMirror)}
        self.caches_answers = caches_answers
        self.load_threads = load_threads
        self.auto_complete = auto_complete
        self.runtime_options = runtime_options
        self.version_policy = version_policy
        self.batching = batching
        self._on_batch = on_batch
        self._sync_lock = threading.Lock()  # one scan/load/unload at a time (poll vs repository requests)
        # Replaced, never changed in place: a lookup reads one consistent snapshot without a lock.
        self._models: dict[str, dict[int, ServedVersion]] = {}
        self._failures: dict[tuple[str, int], _Refusal] = {}
        self._model_errors: dict[str, str] = {}
        self._unready: dict[str, str] = {}
        # Models kept unloaded until a load request, and why (an unload request, or explicit model control).
        self._unloaded: dict[str, str] = {}
        # Configurations that load requests carried: each stands for its model's config.pbtxt until a load without.
        self._config_overrides: dict[str, model_config_pb2.ModelConfig] = {}
        # The models each ensemble's steps run, as its configuration last read says: what to check again when one
        # of them changes.
        self._dependencies: dict[str, frozenset[str]] = {}
        # Models loaded only because an ensemble that runs them was (explicit model control), as Triton's composing
        # models are: an unload with unload_dependents takes them out with it.
        self._pulled_in: set[str] = set()
        # Served versions whose files changed but failed to reload (they serve as they were), with why and the state
        # that failed: a poll tries them again only when it changes once more, and the index shows the reason.
        self._failed_reloads: dict[tuple[str, int], _Refusal] = {}
        # Repositories that the last scan could not list, and why (logged when that changes).
        self._listing_errors: dict[Path, str] = {}
        # Loads started ahead of a scan's syncs (``_preloading``), by version folder and the state they loaded.
        self._preloaded: dict[tuple[Path, tuple], Future[ServedVersion]] = {}

    # --- lookups (request path) ---------------------------------------------------------------------------

    def get(self, name: str, version: str = "") -> ServedVersion:
        """The version a request for ``name``/``version`` would use (newest when no version is given).

        Raises:
            ServingError: NOT_FOUND for an unknown model or a version that is not loaded.
        """
        models = self._models
        versions = models.get(name)
        if not versions:
            loaded = ", ".join(sorted(models)) or "none"
            raise ServingError(Status.NOT_FOUND, f"unknown model {shown(name)}; loaded models: {loaded}")
        if not version:
            return versions[max(versions)]
        # VERSION_NAME allows at most 18 digits, so int() is cheap and never refuses (a 5,000-digit string would).
        if VERSION_NAME.match(version) and int(version) in versions:
            return versions[int(version)]
        loaded = ", ".join(str(v) for v in sorted(versions))
        raise ServingError(
            Status.NOT_FOUND,
            f"model '{name}' has no loaded version {version[:20]!r}; loaded versions: {loaded}",
        )

    def versions(self, name: str) -> list[ServedVersion]:
        """The loaded versions of a model, ascending.

        Raises:
            ServingError: NOT_FOUND when the model is not loaded.
        """
        self.get(name)
        versions = self._models[name]
        return [versions[v] for v in sorted(versions)]

    def is_ready(self, name: str, version: str = "") -> bool:
        try:
            self.get(name, version)
        except ServingError:
            return False
        return True

    def loaded(self) -> list[ServedVersion]:
        return [served for versions in self._models.values() for served in versions.values()]

    def unready_models(self) -> dict[str, str]:
        """Models in the repository that serve no version although their policy selects one, with the reason."""
        return dict(self._unready)

    def refusals(self) -> list[str]:
        """Why each version and model that should serve does not, or serves as it was (the log's lines): refused
        versions, failed reloads, unreadable or duplicated models; not those kept unloaded on purpose."""
        reasons = [failed.reason for _, failed in sorted({**self._failures, **self._failed_reloads}.items())]
        reasons += [reason for name, reason in sorted(self._model_errors.items()) if name not in self._unloaded]
        reasons += [reason for _, reason in sorted(self._unready.items())]
        return list(dict.fromkeys(reasons))

    # --- loading (blocking: call from a worker thread) -----------------------------------------------------

    def load_all(self) -> list[ServedVersion]:
        """Scans the repositories once and loads every model by its policy (at start and on every poll). While a
        repository cannot be listed (gone, unreadable, a network mount that dropped), the models that served from
        it go on serving as they were: the scan cannot tell what changed there. Its error is logged once.

        Returns:
            The versions no longer served, to retire.
        """
        retired: list[ServedVersion] = []
        with self._sync_lock:
            names = set(self._models)
            entries, unlisted = self._scan_roots()
            for entry in entries:
                if entry.is_dir() and MODEL_NAME.match(entry.name):
                    names.add(entry.name)
                elif entry.is_dir() and not entry.name.startswith("."):
                    self._note_model_error(entry.name, f"{entry}: folder name does not match {MODEL_NAME.pattern}")
            self._prefetch({name for name in names if name not in self._unloaded})
            with self._preloading(names) as unused:
                # Ensembles after the models their steps run, which they are checked against and need loaded.
                for name in dependency_order(names, self._step_models):
                    if unlisted and name in self._models and not self._folders(name):
                        continue  # its repository may be the one that cannot be listed
                    try:
                        retired += self._sync(name)
                    except Exception as error:  # one model's files must never stop the scan of the others
                        reason = f"model '{name}' not (re)loaded: {_naming(self._model_dir(name), error)}"
                        self._note_model_error(name, reason)
                        self._unready[name] = self._model_errors[name]
        return retired + unused

    def load(
        self, name: str, config: model_config_pb2.ModelConfig | None = None
    ) -> tuple[list[ServedVersion], str | None]:
        """Loads a model now, or reloads it, as Triton's load request does: every version its policy selects is
        loaded afresh from its files and its configuration and swapped in, retrying versions refused before. If a
        version that serves fails to reload, nothing changes: the versions that served keep serving as they were.
        ``config`` (the request's) stands for config.pbtxt from now on, until a load without one. The models an
        ensemble's steps run are brought up to date first, as Triton polls an ensemble's composing models: loaded
        if kept unloaded, reloaded where their files changed.

        Returns:
            The versions no longer served, to retire, and what failed (None when everything loaded): the caller
            retires the versions, then reports the failure.

        Raises:
            ServingError: NOT_FOUND when no such model folder exists; INVALID_ARGUMENT for a ``config`` that
                serving cannot use (nothing changes then).
        """
        with self._sync_lock:
            self._scan_roots()  # a model added to a store since the last scan is fetched
        self._check_name(name)
        if config is not None:
            try:
                read_config(self._model_dir(name), config, self.auto_complete)
            except ModelLoadError as error:
                raise ServingError(Status.INVALID_ARGUMENT, str(error)) from None
        with self._sync_lock:
            previous = self._config_overrides.pop(name, None)
            if config is not None:
                self._config_overrides[name] = config
            self._unloaded.pop(name, None)
            self._pulled_in.discard(name)  # asked for by name: an unload of an ensemble that runs it keeps it
            self._failures = {key: refusal for key, refusal in self._failures.items() if key[0] != name}
            self._failed_reloads = {key: failed for key, failed in self._failed_reloads.items() if key[0] != name}
            self._model_errors.pop(name, None)
            self._prefetch(self._with_steps(name))
            retired = self._pull_in(self._step_models(name), {name})
            reload_failures: list[str] = []
            retired += self._sync(name, reload_failures)
            if (reload_failures or name in self._model_errors) and name in self._models:
                # Nothing was reloaded: the configuration in force stays the one the serving versions loaded with.
                if previous is None:
                    self._config_overrides.pop(name, None)
                else:
                    self._config_overrides[name] = previous
            if reload_failures:
                serving = sorted(self._models.get(name, {}))
                return retired, f"model '{name}' was not reloaded, versions {serving} serve as they were: " + "; ".join(
                    reload_failures
                )
            reasons = [r.reason for (n, _), r in sorted(self._failures.items()) if n == name]
            reasons += [self._model_errors[name]] if name in self._model_errors else []
            if name not in self._models:
                return retired, f"model '{name}' has no loadable version: " + (
                    "; ".join(reasons) or "no version matches its policy"
                )
            if reasons:
                serving = sorted(self._models[name])
                return retired, f"model '{name}' serves versions {serving}; not loaded: " + "; ".join(reasons)
            return retired, None

    def unload(self, name: str, unload_dependents: bool = False) -> list[ServedVersion]:
        """Unloads every version of a model and keeps it unloaded (polling skips it) until ``load``. Ensembles
        that run it stop serving until it is loaded again. With ``unload_dependents`` (Triton's parameter), the
        models that were loaded only because this ensemble runs them are unloaded with it, unless another loaded
        ensemble runs them too.

        Returns:
            The versions no longer served, to retire.

        Raises:
            ServingError: NOT_FOUND when the model is neither loaded nor in the repository.
        """
        self._check_name(name)
        with self._sync_lock:
            self._unloaded[name] = "unloaded through the repository API"
            self._pulled_in.discard(name)
            retired = self._sync(name)
            if unload_dependents:
                retired += self._unload_pulled_in(self._dependencies.get(name, frozenset()), name)
            return retired

    def hold_back(self, keep: set[str] | None) -> list[str]:
        """Explicit model control (before the first scan): every model of the repository but those in ``keep``
        (None: all of them) stays unloaded until a load request.

        Returns:
            The names in ``keep`` that are not model folders of the repository.
        """
        with self._sync_lock:
            entries, _ = self._scan_roots()  # first: a store's config.pbtxt files are read from its mirror
        # An ensemble's steps' models load with it, and a nested ensemble's in turn.
        wanted = set().union(*(self._with_steps(name) for name in keep or ()))
        self._pulled_in |= wanted - set(keep or ())
        for name in {entry.name for entry in entries if entry.is_dir() and MODEL_NAME.match(entry.name)}:
            if keep is not None and name not in wanted:
                self._unloaded[name] = "not loaded: with --model-control-mode explicit a load request loads it"
        return sorted(name for name in keep or () if not self._folders(name))

    def take_all(self) -> list[ServedVersion]:
        """Stops serving everything (at shutdown); returns the versions to retire."""
        with self._sync_lock:
            retired, self._models = self.loaded(), {}
            return retired

    def _check_name(self, name: str) -> None:
        if not MODEL_NAME.match(name):
            raise ServingError(Status.NOT_FOUND, f"unknown model {shown(name)}: model names match {MODEL_NAME.pattern}")
        if not self._folders(name) and name not in self._models:
            raise ServingError(Status.NOT_FOUND, f"unknown model '{name}' in {', '.join(self.locations)}")

    def _scan_roots(self) -> tuple[list[Path], bool]:
        """The entries of every repository folder, each mirror synced with its store first, and whether one could
        not be listed (each cause logged once, caller holds _sync_lock)."""
        entries: list[Path] = []
        unlisted = False
        for root in self.roots:
            try:
                if root in self._mirrors:
                    self._mirrors[root].refresh()
                entries += sorted(root.iterdir())
            except OSError as error:
                unlisted = True
                reason = error.strerror or str(error) or type(error).__name__
                if self._listing_errors.get(root) != reason:
                    log.error("cannot list repository %s: %s; what serves from it stays", self._shown(root), reason)
                self._listing_errors[root] = reason
                continue
            if self._listing_errors.pop(root, None) is not None:
                log.info("repository %s can be listed again", self._shown(root))
        return entries, unlisted

    @property
    def locations(self) -> list[str]:
        """The repositories as their user named them (a mirror by its store's URL)."""
        return [self._shown(root) for root in self.roots]

    def _shown(self, root: Path) -> str:
        """A repository as its user named it: a mirror by its store's URL."""
        return str(self._mirrors.get(root, root))

    def _folders(self, name: str) -> list[Path]:
        """The folders named ``name`` in the repositories: one for a model that can serve."""
        return [folder for folder in (root / name for root in self.roots) if folder.is_dir()]

    def _model_dir(self, name: str) -> Path:
        """The model's folder: the first repository's that has it (for messages and reads; whether only one has it
        is ``_sync_model``'s check), else where the first repository would have it."""
        return next(iter(self._folders(name)), self.roots[0] / name)

    def _folder_names(self) -> set[str]:
        """The model folders' names in every repository (unreadable repositories hold none)."""
        names = set()
        for root in self.roots:
            with contextlib.suppress(OSError):
                names |= {e.name for e in root.iterdir() if e.is_dir() and MODEL_NAME.match(e.name)}
        return names

    def _note_model_error(self, name: str, reason: str) -> None:
        if self._model_errors.get(name) != reason:
            log.error("%s", reason)
        self._model_errors[name] = reason

    def _sync(self, name: str, reload_failures: list[str] | None = None) -> list[ServedVersion]:
        """``_sync_model``, then every ensemble that runs a model whose served versions changed is checked again, as
        Triton does: a version whose steps no longer fit the models stops serving, one refused before is tried
        again, and an ensemble that still serves or serves again has its own dependents checked in turn (its
        answers are no longer those of before either; caller holds _sync_lock)."""
        before = self._models.get(name)
        retired = self._sync_model(name, reload_failures)
        changed = [name] if self._models.get(name) != before else []  # ServedVersions compare by identity
        renewed: set[str] = set()  # a renewal alone goes on once (configs not yet loaded may name a cycle)
        while changed:
            model = changed.pop(0)
            for ensemble in sorted(e for e, runs in self._dependencies.items() if model in runs):
                before = self._models.get(ensemble)
                retired += self._recheck(ensemble)
                after = self._models.get(ensemble)
                if after != before or (after and ensemble not in renewed):
                    renewed.add(ensemble)
                    changed.append(ensemble)
        return retired

    def _recheck(self, name: str) -> list[ServedVersion]:
        """An ensemble after a model its steps run changed: its serving versions are checked against the models
        again (a version that fails stops serving, and is tried again after the next change; one that passes
        starts a new generation of cached answers), and its refused versions are tried again."""
        self._failures = {key: refusal for key, refusal in self._failures.items() if key[0] != name}
        current = self._models.get(name, {})
        failing: dict[int, ServedVersion] = {}
        config_path = self._model_dir(name) / CONFIG_FILE
        for version, served in current.items():
            try:
                check_steps(name, served.signature, served.steps, self._models, config_path)
            except Exception as error:  # as in _sync_model: whatever the check raises takes out only this version
                reason = f"model '{name}' version {version} stopped serving: {_naming(config_path, error)}"
                log.error("%s", reason)
                self._failures[(name, version)] = _Refusal(reason, served.loaded_from)
                failing[version] = served
            else:
                served.renew()
        if failing:
            models = dict(self._models)
            models[name] = {version: served for version, served in current.items() if version not in failing}
            if not models[name]:
                del models[name]
            self._models = models
        return [*failing.values(), *self._sync_model(name)]

    def _pull_in(self, models: frozenset[str], seen: set[str]) -> list[ServedVersion]:
        """Brings the models an ensemble being loaded runs up to date, theirs first, as Triton's polling chain
        does: one kept unloaded (explicit model control, an unload request) is loaded, and counts as loaded for
        the ensemble (see ``unload``); a loaded one reloads the versions whose files changed and loads a new
        version its policy selects. ``seen``: the models already brought up to date (each is, once)."""
        retired: list[ServedVersion] = []
        for model in sorted(models - seen):
            seen.add(model)
            if model in self._unloaded:
                del self._unloaded[model]
                self._pulled_in.add(model)
            retired += self._pull_in(self._step_models(model), seen)
            retired += self._sync(model)
        return retired

    def _unload_pulled_in(self, models: frozenset[str], unloaded: str) -> list[ServedVersion]:
        """Unloads those of ``models`` that were pulled in for an ensemble and that no loaded ensemble runs now,
        and theirs in turn."""
        still_run = {step.model for served in self.loaded() for step in served.steps}
        retired: list[ServedVersion] = []
        for model in sorted(models & self._pulled_in - still_run):
            self._unloaded[model] = f"unloaded with ensemble '{unloaded}' (unload_dependents)"
            self._pulled_in.discard(model)
            retired += self._sync(model) + self._unload_pulled_in(self._dependencies.get(model, frozenset()), model)
        return retired

    def _sync_model(self, name: str, reload_failures: list[str] | None = None) -> list[ServedVersion]:
        """Brings one model's loaded versions in line with its folder and policy (caller holds _sync_lock): a
        version the policy selects is loaded, one it no longer selects is retired, and a served version whose files
        changed (``_version_state``) is reloaded, or serves as it was if that fails.

        Args:
            reload_failures: when given, every selected version is loaded afresh (a load request), and the reason
                of each version that failed to, and so keeps serving as it was, is appended to it; the caller then
                keeps every version as it was.
        """
        current = dict(self._models.get(name, {}))
        folders = self._folders(name)
        model_dir = self._model_dir(name)
        target: dict[int, ServedVersion] = {}
        retired: list[ServedVersion] = []
        self._unready.pop(name, None)
        if len(folders) > 1:  # as Triton: a model must be unique across the repositories, else none serves it
            reason = f"model '{name}' is in more than one repository ({_listed(folders)}); it serves from none"
            self._note_model_error(name, reason)
            self._unready[name] = reason
        elif name not in self._unloaded and folders:
            config_path = model_dir / "config.pbtxt"
            try:
                if model_dir.parent in self._mirrors:
                    self._mirrors[model_dir.parent].fetch(name)
                config = read_config(model_dir, self._config_overrides.get(name), self.auto_complete)
            except Exception as error:  # not only ModelLoadError: any unreadable config refuses only this model
                # Keep serving what already serves: a config being rewritten or broken must not take it down.
                if isinstance(error, FetchError):
                    detail = f"{self._mirrors[model_dir.parent]}: {error}"
                else:
                    detail = _naming(config_path, error)
                self._note_model_error(name, f"model '{name}' not (re)loaded: {detail}")
                if not current:
                    self._unready[name] = self._model_errors[name]
                return []
            self._model_errors.pop(name, None)
            self._dependencies[name] = step_models(config)
            policy = self.version_policy or VersionPolicy.from_config(config)
            available = list_versions(model_dir)
            model_state = _model_state(model_dir, config)
            states = {v: _version_state(model_dir, v, model_state) for v in available if v in current}
            candidates = [v for v in available if self._may_try(name, v, model_dir, model_state)]
            loaded_now: dict[int, ServedVersion] = {}
            if reload_failures is not None:  # a load request: every version afresh
                kept = {}
            else:  # a poll: what serves stays, unless its files changed since it loaded or last failed to reload
                failed_states = {v: failed.state for (n, v), failed in self._failed_reloads.items() if n == name}
                kept = {
                    v: served
                    for v, served in current.items()
                    if states.get(v) in (None, served.loaded_from, failed_states.get(v))
                }
            wanted = policy.select(candidates)
            while missing := sorted(wanted - kept.keys() - loaded_now.keys()):
                for version in missing:
                    state = states.get(version) or _version_state(model_dir, version, model_state)
                    try:
                        loaded_now[version] = self._load_version(model_dir / str(version), config, state)
                        self._failed_reloads.pop((name, version), None)
                    except Exception as error:  # whatever a version's files raise refuses only that version
                        detail = _naming(model_dir / str(version), error)
                        if version in current:  # a reload that failed: the version serves as it was
                            kept = {**kept, version: current[version]}
                            reason = f"model '{name}' version {version} failed to reload: {detail}"
                            if reload_failures is None:
                                reason = reason.replace(": ", ", serves as it was: ", 1)
                                self._failed_reloads[(name, version)] = _Refusal(reason, state)
                            else:  # see below
                                reload_failures.append(reason)
                        else:
                            reason = f"model '{name}' version {version} refused: {detail}"
                            self._failures[(name, version)] = _Refusal(reason, state)
                            candidates.remove(version)
                        log.error("%s", reason)
                wanted = policy.select(candidates)
            if reload_failures is not None and current and not wanted:
                reload_failures.append(f"model '{name}': no version in {model_dir} matches policy {policy}")
            if reload_failures:  # a reload that failed changes nothing: what served keeps serving as it was
                return list(loaded_now.values())
            target = {v: loaded_now.get(v) or current[v] for v in wanted}
            retired += [served for v, served in loaded_now.items() if v not in target]
            if not wanted and not current and policy.select(available):
                self._unready[name] = f"model '{name}': no version its policy {policy} selects could be loaded"
            elif not wanted and not current:
                self._note_model_error(name, f"model '{name}': no version in {model_dir} matches policy {policy}")
        models = dict(self._models)
        if target:
            models[name] = target
        else:
            models.pop(name, None)
        self._models = models
        self._failed_reloads = {
            key: failed for key, failed in self._failed_reloads.items() if key[0] != name or key[1] in target
        }
        retired += [served for version, served in current.items() if target.get(version) is not served]
        if target.keys() != current.keys():
            log.info("model '%s' now serves versions %s", name, sorted(target) or "none")
        return retired

    def _may_try(self, name: str, version: int, model_dir: Path, model_state: tuple) -> bool:
        """False for a version refused before whose files have not changed since."""
        refusal = self._failures.get((name, version))
        if refusal is None:
            return True
        if refusal.state == _version_state(model_dir, version, model_state):
            return False
        del self._failures[(name, version)]
        log.info("model '%s' version %d: its files changed since it was refused; trying again", name, version)
        return True

    @contextlib.contextmanager
    def _preloading(self, names: Iterable[str]) -> Iterator[list[ServedVersion]]:
        """Loads, ``load_threads`` at a time, the versions that the syncs of ``names`` are due to load (see
        ``_loads_due``), while the syncs run one model after another as they always do: ``_load_version`` takes a
        load from here when it is of the same files, and waits for it if it is still running. A sync that decides
        otherwise (a version failed, and the policy picks an older one) loads as before. On exit the loads no sync
        took are put in the list yielded, for the caller to retire with the versions no longer served."""
        unused: list[ServedVersion] = []
        due = [load for name in sorted(names) for load in self._loads_due(name)] if self.load_threads > 1 else []
        if len(due) < 2:  # nothing to run side by side
            yield unused
            return
        with ThreadPoolExecutor(min(self.load_threads, len(due)), thread_name_prefix="model-load") as pool:
            for version_dir, config, state in due:
                self._preloaded[(version_dir, state)] = pool.submit(self._load, version_dir, config, state)
            try:
                yield unused
            finally:
                for future in self._preloaded.values():
                    with contextlib.suppress(Exception):  # a load that failed and that no sync asked for
                        unused.append(future.result())
                self._preloaded.clear()

    def _loads_due(self, name: str) -> list[tuple[Path, model_config_pb2.ModelConfig, tuple]]:
        """For a model that serves no version yet (every model at start, a model new to the repository), the
        versions its sync will load if every load succeeds, as ``_sync_model`` decides them. None for a model that
        serves (a scan that changes nothing must cost no more than it did; a new or changed version of a served
        model loads as before), for an ensemble (checked against its steps' models, once they have loaded), a
        model kept unloaded or in several repositories, or one whose configuration cannot be read (its sync says
        why)."""
        folders = self._folders(name)
        if name in self._models or name in self._unloaded or len(folders) != 1:
            return []
        try:
            config = read_config(folders[0], self._config_overrides.get(name), self.auto_complete)
        except Exception:  # as in _sync_model: whatever the files raise; the sync reports it in one line
            return []
        if config.platform == ENSEMBLE_PLATFORM:
            return []
        policy = self.version_policy or VersionPolicy.from_config(config)
        model_state = _model_state(folders[0], config)
        candidates = [v for v in list_versions(folders[0]) if self._may_try(name, v, folders[0], model_state)]
        return [
            (folders[0] / str(v), config, _version_state(folders[0], v, model_state)) for v in policy.select(candidates)
        ]

    def _load_version(self, version_dir: Path, config: model_config_pb2.ModelConfig, state: tuple) -> ServedVersion:
        """A version loaded from its files, or taken from ``_preloading`` when it loaded the same files."""
        preloaded = self._preloaded.pop((version_dir, state), None)
        if preloaded is not None:
            return preloaded.result()  # or raises as the load did
        return self._load(version_dir, config, state)

    def _load(self, version_dir: Path, config: model_config_pb2.ModelConfig, state: tuple) -> ServedVersion:
        """Reads and checks a version's files and creates its sessions; touches no state of the repository but
        ``_models`` (read, for an ensemble), so that ``_preloading`` runs it on several threads."""
        name = version_dir.parent.name
        manifest = read_version(version_dir, config, self.auto_complete)
        if config.response_cache.enable and not self.caches_answers:
            log.warning(
                "model '%s': config.pbtxt enables response_cache, but the server keeps no response cache "
                "(--cache-config local,size=BYTES); its answers are not cached",
                name,
            )
        if manifest.platform == ENSEMBLE_PLATFORM:
            steps = read_steps(config, name, version_dir.parent / CONFIG_FILE)
            check_steps(name, manifest.signature, steps, self._models, version_dir.parent / CONFIG_FILE)
            served = ServedVersion(
                config, manifest, None, self._batching(config), self._on_batch, loaded_from=state, steps=steps
            )
            log.info(
                "model '%s' version %d loaded (an ensemble of %s)",
                name,
                manifest.version,
                " -> ".join(f"'{step.model}'" for step in steps),
            )
            return served
        configured_threads = intra_op_thread_count(config, version_dir.parent)  # checked even when overridden
        device = "cpu" if placed_on_cpu(config) else self.runtime_options.device
        on_gpu = requests_cuda(device)
        settings = session_settings(config, version_dir.parent, on_gpu)
        instances = instance_count(config, version_dir.parent, on_gpu)
        threads = self.runtime_options.intra_op_threads
        if threads is None:  # the command line did not set it for every model
            threads = configured_threads
        wide_threads = 0
        if threads == 0 and instances > 1:
            threads = shared_threads(instances)
            # The instances share the cores; a lone long call gets them all (see serving.batcher). Where threads
            # were set, or on a GPU, the sessions are as asked.
            if not on_gpu and shared_threads(1) > threads:
                wide_threads = shared_threads(1)
        options = dataclasses.replace(
            self.runtime_options,
            device=device,
            intra_op_threads=threads,
            graph_optimization_level=self.runtime_options.graph_optimization_level or graph_optimization_level(config),
            session=settings,
        )
        if settings.not_applied:
            log.warning(
                "model '%s' version %d: %s asks for %s, which serving does not run; ONNX Runtime's %s provider runs it",
                name,
                manifest.version,
                version_dir.parent / CONFIG_FILE,
                " and ".join(settings.not_applied),
                "CUDA" if on_gpu else "CPU",
            )
        model = OnnxModel(
            manifest.onnx_path, manifest.signature, options, instances, wide_threads, declared_in=manifest.declared_in
        )
        model.smoke_test()
        samples = warmup_samples(config, model.signature, version_dir.parent)
        manifest = dataclasses.replace(manifest, signature=model.signature)  # as checked against the file
        batching = self._batching(config)
        served = ServedVersion(config, manifest, model, batching, self._on_batch, loaded_from=state)
        if samples:
            started = time.monotonic()
            runners = served.batcher.measuring_runners()
            warm_up(runners, samples, version_dir.parent / "config.pbtxt")
            log.info(
                "model '%s' version %d warmed up: %s on %d session(s) in %.0f ms",
                name,
                manifest.version,
                ", ".join(f"'{sample.name}' x{sample.calls}" for sample in samples),
                len(runners),
                (time.monotonic() - started) * 1000,
            )
        log.info(
            "model '%s' version %d loaded (providers %s, %d instance(s) of %s intra-op threads%s; max_batch_size "
            "%d, %s)",
            name,
            manifest.version,
            ", ".join(model.providers),
            instances,
            threads or "per-core",
            f" and a wide session of {wide_threads}" if wide_threads else "",
            batching.max_batch_size,
            batching.describe(),
        )
        return served

    def _prefetch(self, models: set[str]) -> None:
        """Fetches the files of the models about to be synced from every store in one batch (see
        ``RepositoryMirror.prefetch``); each model's own sync still fetches, and reports, what this could not."""
        for mirror in self._mirrors.values():
            mirror.prefetch(models)

    def _with_steps(self, name: str) -> set[str]:
        """A model and the models its ensemble steps run, theirs in turn."""
        found, waiting = set(), [name]
        while waiting:
            model = waiting.pop()
            if model not in found:
                found.add(model)
                waiting += self._step_models(model)
        return found

    def _step_models(self, name: str) -> frozenset[str]:
        """The models an ensemble's config (a load request's, else config.pbtxt) runs; none for another model or
        one whose config cannot be read (its own load says why)."""
        override = self._config_overrides.get(name)
        if override is not None:
            return step_models(override)
        path = self._model_dir(name) / CONFIG_FILE
        try:  # the text alone: a model without config.pbtxt is completed from its ONNX file, never an ensemble
            return step_models(modelrepo.read_config(path)) if path.is_file() else frozenset()
        except Exception:  # the model's own load reports it, in one line
            return frozenset()

    def _batching(self, config: model_config_pb2.ModelConfig) -> Batching:
        dynamic = config.dynamic_batching
        overrides = self.batching
        # --max-queue-size replaces the default policy's bound; a level with a policy of its own keeps its bound.
        default_size = overrides.max_queue_size or dynamic.default_queue_policy.max_queue_size or DEFAULT_MAX_QUEUE_SIZE
        return Batching(
            # --max-batch-size cannot give a batch dimension to a model without one.
            max_batch_size=(overrides.max_batch_size or config.max_batch_size) if config.max_batch_size else 0,
            max_queue_delay_us=(
                overrides.max_queue_delay_us
                if overrides.max_queue_delay_us is not None
                else dynamic.max_queue_delay_microseconds
            ),
            default_policy=QueuePolicy.from_config(dynamic.default_queue_policy, default_size),
            merges=config.HasField("dynamic_batching"),
            priority_levels=dynamic.priority_levels,
            default_priority_level=dynamic.default_priority_level,
            level_policies={
                level: QueuePolicy.from_config(policy, policy.max_queue_size or default_size)
                for level, policy in dynamic.priority_queue_policy.items()
                if dynamic.priority_levels  # without levels Triton ignores the per-level policies
            },
            preferred_batch_sizes=tuple(dynamic.preferred_batch_size),
        )

    # --- reporting ------------------------------------------------------------------------------------------

    def index(self) -> list[IndexEntry]:
        """Every model folder and loaded version with its state, and the reason for what does not serve or serves
        as it was because its changed files failed to reload (Triton leaves that reason empty; an operator who sees
        READY after replacing a file would otherwise believe the new file serves)."""
        models = {name: sorted(versions) for name, versions in self._models.items()}
        failures = dict(self._failures)
        reload_failures = {key: failed.reason for key, failed in self._failed_reloads.items()}
        names = set(models) | set(self._unloaded) | set(self._model_errors) | self._folder_names()
        entries = []
        for name in sorted(names):
            entries += [
                IndexEntry(name, str(v), "READY", reload_failures.get((name, v), "")) for v in models.get(name, [])
            ]
            entries += [
                IndexEntry(n, str(v), "UNAVAILABLE", refusal.reason)
                for (n, v), refusal in sorted(failures.items())
                if n == name
            ]
            if name in self._unloaded:
                entries.append(IndexEntry(name, "", "UNAVAILABLE", self._unloaded[name]))
            elif name not in models:
                reason = self._model_errors.get(name) or self._unready.get(name, "not loaded")
                entries.append(IndexEntry(name, "", "UNAVAILABLE", reason))
        return entries

    def device_warnings(self) -> list[str]:
        return [served.model.device_warning for served in self.loaded() if served.model and served.model.device_warning]

    def queue_depths(self) -> dict[str, int]:
        depths: dict[str, int] = {}
        for served in self.loaded():
            depths[served.name] = depths.get(served.name, 0) + served.queue_depth
        return depths


def _model_state(model_dir: Path, config: model_config_pb2.ModelConfig) -> tuple:
    """What the load of any version of a model reads besides its own folder: the configuration it loads with (as
    parsed: an edit that changes nothing, such as a comment, reloads nothing), the contents of the label files it
    names (contents, not times: a publish rewrites labels.txt as it was) and the name, size and modification time
    of the warmup folder's files (model_warmup's data)."""
    labels = []
    for output in config.output:
        if output.label_filename:
            try:
                digest = hashlib.blake2b((model_dir / output.label_filename).read_bytes()).hexdigest()
            except OSError as error:  # a missing label file refuses the version; its arrival changes this
                digest = type(error).__name__
            labels.append((output.label_filename, digest))
    return config.SerializeToString(deterministic=True), tuple(labels), _files_state(model_dir / WARMUP_FOLDER)


def _version_state(model_dir: Path, version: int, model_state: tuple) -> tuple:
    """The state of what one version's load reads: ``_model_state`` and its own folder's files, one folder deep
    (an ONNX model kept as a folder with its external data). Other files of the model folder (index.html, an
    editor's swap file) do not count."""
    return model_state, _files_state(model_dir / str(version), depth=1)


def _files_state(folder: Path, depth: int = 0) -> tuple:
    """Name, size and modification time of each file in ``folder`` and, ``depth`` folders deep, in its folders."""
    state = []
    folders = [(str(folder), "", 0)]
    for path, prefix, level in folders:
        with contextlib.suppress(OSError):
            for entry in os.scandir(path):
                with contextlib.suppress(OSError):
                    if entry.is_dir():
                        if level < depth:
                            folders.append((entry.path, f"{prefix}{entry.name}/", level + 1))
                        continue
                    stat = entry.stat()
                    state.append((prefix + entry.name, stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(state))


def _listed(paths: Sequence[Path]) -> str:
    return ", ".join(str(path) for path in paths)


def _naming(path: Path, error: BaseException) -> str:
    """One line for a file error that names the file: the error's own message when it does, else prefixed."""
    first = first_line(error)
    if str(path.parent) in first:
        return first
    return (
        f"{path}: {first}"
        if isinstance(error, ModelLoadError | ValueError)
        else f"{path}: {type(error).__name__}: {first}"
    )
