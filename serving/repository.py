"""The model repository being served: scans the output tree, loads versions, hot-reloads, loads and unloads.

Every model folder under the root is loaded at start, by its version policy. A poll thread rescans: a new
version is loaded and validated in the background (manifest, config.pbtxt, ONNX session, a test run) while the
old one serves, then swapped in under a lock. A version being replaced keeps its batcher until its last
in-flight request finishes (``lease`` counts them), so a swap never fails or drops a request. A version that
fails validation is logged with its reason, remembered (version folders never change once they appear) and
skipped, and the previous version keeps serving. Model names from requests are only ever looked up among
loaded models, and the repository API accepts only names matching the output tree's pattern, so no request can
reach another path.
"""

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from serving.batcher import DynamicBatcher
from serving.errors import ModelLoadError, ServingError, Status
from serving.model_files import MODEL_NAME, VERSION_NAME, Manifest, list_versions, read_config, read_version
from serving.protocol import model_config_pb2
from serving.runtime import OnnxModel, RuntimeOptions
from serving.statistics import ModelStats
from serving.version_policy import VersionPolicy

log = logging.getLogger(__name__)

# Triton treats max_queue_size 0 as unbounded; serving never queues without limit, so 0 means this default.
DEFAULT_MAX_QUEUE_SIZE = 256


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
class Batching:
    max_batch_size: int
    max_queue_delay_us: int
    max_queue_size: int


class ServedVersion:
    """One loaded, validated model version with its session, batcher and statistics."""

    def __init__(
        self,
        config: model_config_pb2.ModelConfig,
        manifest: Manifest,
        model: OnnxModel,
        batching: Batching,
        on_batch: Callable[[str, int], None],
    ) -> None:
        self.config = config
        self.manifest = manifest
        self.model = model
        self.stats = ModelStats()
        self.batcher = DynamicBatcher(
            name=f"{manifest.name}/{manifest.version}",
            execute=model.run,
            max_batch_size=batching.max_batch_size,
            max_queue_delay_us=batching.max_queue_delay_us,
            max_queue_size=batching.max_queue_size,
            stats=self.stats,
            on_batch=lambda size: on_batch(manifest.name, size),
        )
        self._inflight = 0
        self._idle = threading.Condition()

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> int:
        return self.manifest.version

    def acquire(self) -> None:
        with self._idle:
            self._inflight += 1

    def release(self) -> None:
        with self._idle:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.notify_all()

    def retire(self) -> None:
        """Waits for the requests that leased this version, then closes its batcher (it serves no one new)."""
        with self._idle:
            self._idle.wait_for(lambda: self._inflight == 0)
        self.batcher.close()
        log.info("model '%s' version %d unloaded", self.name, self.version)


class ModelRepository:
    """All models served from one repository folder; thread-safe."""

    def __init__(
        self,
        root: Path,
        runtime_options: RuntimeOptions,
        *,
        version_policy: VersionPolicy | None = None,
        batching: BatchingOverrides = BatchingOverrides(),
        on_batch: Callable[[str, int], None] = lambda model, size: None,
    ) -> None:
        self.root = root
        self.runtime_options = runtime_options
        self.version_policy = version_policy
        self.batching = batching
        self._on_batch = on_batch
        self._lock = threading.Lock()  # guards _models: the swap and every lookup
        self._sync_lock = threading.Lock()  # one scan/load/unload at a time (poll thread vs repository RPCs)
        self._models: dict[str, dict[int, ServedVersion]] = {}
        self._failures: dict[tuple[str, int], str] = {}
        self._model_errors: dict[str, str] = {}
        self._unloaded: set[str] = set()
        self._stop_polling = threading.Event()
        self._poller: threading.Thread | None = None

    # --- lookups (request path) ---------------------------------------------------------------------------

    @contextmanager
    def lease(self, name: str, version: str = "") -> Iterator[ServedVersion]:
        """Yields the version to serve a request; the version cannot be retired until the block exits.

        Raises:
            ServingError: NOT_FOUND for an unknown model or a version that is not loaded.
        """
        with self._lock:
            served = self._resolve(name, version)
            served.acquire()
        try:
            yield served
        finally:
            served.release()

    def versions(self, name: str) -> list[ServedVersion]:
        """The loaded versions of a model, ascending.

        Raises:
            ServingError: NOT_FOUND when the model is not loaded.
        """
        with self._lock:
            self._resolve(name, "")
            return [self._models[name][v] for v in sorted(self._models[name])]

    def get(self, name: str, version: str = "") -> ServedVersion:
        """The version a request for ``name``/``version`` would use (newest when no version is given)."""
        with self._lock:
            return self._resolve(name, version)

    def is_ready(self, name: str, version: str = "") -> bool:
        try:
            self.get(name, version)
        except ServingError:
            return False
        return True

    def loaded(self) -> list[ServedVersion]:
        with self._lock:
            return [served for versions in self._models.values() for served in versions.values()]

    def _resolve(self, name: str, version: str) -> ServedVersion:
        versions = self._models.get(name)
        if not versions:
            loaded = ", ".join(sorted(self._models)) or "none"
            raise ServingError(Status.NOT_FOUND, f"unknown model {name[:80]!r}; loaded models: {loaded}")
        if not version:
            return versions[max(versions)]
        if VERSION_NAME.match(version) and int(version) in versions:
            return versions[int(version)]
        loaded = ", ".join(str(v) for v in sorted(versions))
        raise ServingError(
            Status.NOT_FOUND,
            f"model '{name}' has no loaded version {version[:20]!r}; loaded versions: {loaded}",
        )

    # --- loading --------------------------------------------------------------------------------------------

    def load_all(self) -> None:
        """Scans the repository once and loads every model by its policy (used at start and by the poller)."""
        with self._sync_lock:
            names = set(self._models)
            try:
                entries = sorted(self.root.iterdir())
            except OSError as error:
                log.error("cannot list repository %s: %s", self.root, error.strerror)
                entries = []
            for entry in entries:
                if entry.is_dir() and MODEL_NAME.match(entry.name):
                    names.add(entry.name)
                elif entry.is_dir() and not entry.name.startswith("."):
                    self._note_model_error(entry.name, f"{entry}: folder name does not match {MODEL_NAME.pattern}")
            for name in sorted(names):
                self._sync_model(name)

    def load(self, name: str) -> None:
        """Loads (or reloads) a model now, retrying versions that failed before; the repository RPC.

        Raises:
            ServingError: NOT_FOUND when no such model folder exists; FAILED_PRECONDITION with the reasons
                when no version could be loaded.
        """
        self._check_name(name)
        with self._sync_lock:
            self._unloaded.discard(name)
            self._failures = {key: reason for key, reason in self._failures.items() if key[0] != name}
            self._model_errors.pop(name, None)
            self._sync_model(name)
            with self._lock:
                if name in self._models:
                    return
            reasons = [r for (n, _), r in sorted(self._failures.items()) if n == name]
            reasons += [self._model_errors[name]] if name in self._model_errors else []
            raise ServingError(
                Status.FAILED_PRECONDITION,
                f"model '{name}' has no loadable version: " + ("; ".join(reasons) or "no version matches its policy"),
            )

    def unload(self, name: str) -> None:
        """Unloads every version of a model and keeps it unloaded (polling skips it) until ``load``.

        Raises:
            ServingError: NOT_FOUND when the model is neither loaded nor in the repository.
        """
        self._check_name(name)
        with self._sync_lock:
            with self._lock:
                loaded = name in self._models
            if not loaded and not (self.root / name).is_dir():
                raise ServingError(Status.NOT_FOUND, f"unknown model '{name}' in repository {self.root}")
            self._unloaded.add(name)
            self._sync_model(name)

    def _check_name(self, name: str) -> None:
        if not MODEL_NAME.match(name):
            raise ServingError(Status.NOT_FOUND, f"unknown model {name[:80]!r}: model names match {MODEL_NAME.pattern}")
        if not (self.root / name).is_dir():
            with self._lock:
                if name not in self._models:
                    raise ServingError(Status.NOT_FOUND, f"unknown model '{name}' in repository {self.root}")

    def _note_model_error(self, name: str, reason: str) -> None:
        if self._model_errors.get(name) != reason:
            log.error("%s", reason)
        self._model_errors[name] = reason

    def _sync_model(self, name: str) -> None:
        """Brings one model's loaded versions in line with its folder and policy (caller holds _sync_lock)."""
        with self._lock:
            current = dict(self._models.get(name, {}))
        model_dir = self.root / name
        target: dict[int, ServedVersion] = {}
        if name not in self._unloaded and model_dir.is_dir():
            try:
                config = read_config(model_dir)
            except ModelLoadError as error:
                # Keep serving what already serves: a config being rewritten or broken must not take it down.
                self._note_model_error(name, f"model '{name}' not (re)loaded: {error}")
                return
            self._model_errors.pop(name, None)
            policy = self.version_policy or VersionPolicy.from_config(config)
            candidates = [v for v in list_versions(model_dir) if (name, v) not in self._failures]
            loaded_now: dict[int, ServedVersion] = {}
            wanted = policy.select(candidates)
            while missing := sorted(wanted - current.keys() - loaded_now.keys()):
                for version in missing:
                    try:
                        loaded_now[version] = self._load_version(model_dir / str(version), config)
                    except ModelLoadError as error:
                        reason = f"model '{name}' version {version} refused: {error}"
                        log.error("%s", reason)
                        self._failures[(name, version)] = reason
                        candidates.remove(version)
                wanted = policy.select(candidates)
            target = {v: loaded_now.get(v) or current[v] for v in wanted}
            retired_fresh = [served for v, served in loaded_now.items() if v not in target]
            for served in retired_fresh:
                served.retire()
            if not wanted and not current:
                self._note_model_error(name, f"model '{name}': no version in {model_dir} matches policy {policy}")
        with self._lock:
            models = dict(self._models)
            if target:
                models[name] = target
            else:
                models.pop(name, None)
            self._models = models
        for version, served in current.items():
            if target.get(version) is not served:
                threading.Thread(target=served.retire, name=f"retire-{name}-{version}", daemon=True).start()
        if target.keys() != current.keys():
            log.info("model '%s' now serves versions %s", name, sorted(target) or "none")

    def _load_version(self, version_dir: Path, config: model_config_pb2.ModelConfig) -> ServedVersion:
        name = version_dir.parent.name
        manifest = read_version(version_dir, config)
        model = OnnxModel(version_dir / manifest.onnx_file, manifest.signature, self.runtime_options)
        model.smoke_test()
        batching = self._batching(config)
        served = ServedVersion(config, manifest, model, batching, self._on_batch)
        log.info(
            "model '%s' version %d loaded (providers %s; max_batch_size %d, max_queue_delay_us %d, max_queue_size %d)",
            name,
            manifest.version,
            ", ".join(model.providers),
            batching.max_batch_size,
            batching.max_queue_delay_us,
            batching.max_queue_size,
        )
        return served

    def _batching(self, config: model_config_pb2.ModelConfig) -> Batching:
        dynamic = config.dynamic_batching
        config_queue = dynamic.default_queue_policy.max_queue_size
        overrides = self.batching
        return Batching(
            max_batch_size=overrides.max_batch_size or config.max_batch_size,
            max_queue_delay_us=(
                overrides.max_queue_delay_us
                if overrides.max_queue_delay_us is not None
                else dynamic.max_queue_delay_microseconds
            ),
            max_queue_size=overrides.max_queue_size or config_queue or DEFAULT_MAX_QUEUE_SIZE,
        )

    # --- polling and shutdown -------------------------------------------------------------------------------

    def start_polling(self, interval_s: float) -> None:
        """Rescans every ``interval_s`` seconds on a daemon thread until ``close``."""

        def poll() -> None:
            while not self._stop_polling.wait(interval_s):
                try:
                    self.load_all()
                except Exception:  # a poll must never end polling; the next one retries
                    log.exception("repository poll failed")

        self._poller = threading.Thread(target=poll, name="repository-poll", daemon=True)
        self._poller.start()

    def close(self) -> None:
        """Stops polling, then finishes what is queued in every batcher."""
        self._stop_polling.set()
        if self._poller is not None:
            self._poller.join()
        with self._sync_lock:
            for served in self.loaded():
                served.retire()
            with self._lock:
                self._models = {}

    # --- reporting ------------------------------------------------------------------------------------------

    def index(self) -> list[IndexEntry]:
        """Every model folder and loaded version with its state, and the reason for what does not serve."""
        with self._lock:
            models = {name: sorted(versions) for name, versions in self._models.items()}
        names = set(models) | self._unloaded | set(self._model_errors)
        with contextlib.suppress(OSError):  # a vanished repository folder just lists what is loaded
            names |= {e.name for e in self.root.iterdir() if e.is_dir() and MODEL_NAME.match(e.name)}
        entries = []
        for name in sorted(names):
            entries += [IndexEntry(name, str(v), "READY", "") for v in models.get(name, [])]
            entries += [
                IndexEntry(n, str(v), "UNAVAILABLE", reason)
                for (n, v), reason in sorted(self._failures.items())
                if n == name
            ]
            if name in self._unloaded:
                entries.append(IndexEntry(name, "", "UNAVAILABLE", "unloaded through the repository API"))
            elif name not in models:
                reason = self._model_errors.get(name, "not loaded")
                entries.append(IndexEntry(name, "", "UNAVAILABLE", reason))
        return entries

    def device_warnings(self) -> list[str]:
        return [served.model.device_warning for served in self.loaded() if served.model.device_warning]

    def queue_depths(self) -> dict[str, int]:
        depths: dict[str, int] = {}
        for served in self.loaded():
            depths[served.name] = depths.get(served.name, 0) + served.batcher.queue_depth
        return depths
