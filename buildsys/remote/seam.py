"""Where the build meets the remote cache: `BuildCache` is the `buildsys.build.RemoteCache` a `BuildJob` calls.

The job calls `fetch` once the cache key is known and no local version has it — before any data is loaded or
TensorFlow imported — and publishes what it returns through the store's publish, as it publishes a local build;
it calls `upload` right after publishing a version it built. A hit passes the definition's quality gate against
the local published version first, exactly as the same build made here would, so it becomes a local version like
any other: the next build finds it and says "up to date", a dependent builds on its weights, a server loads it.
Nothing here imports TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from buildsys.gate import judge, reject
from buildsys.remote.transfer import RemoteCache
from buildsys.store import OutputTree
from modelrepo import FormatError, Manifest

if TYPE_CHECKING:
    from buildsys.build import Plan


class BuildCache:
    """A `RemoteCache` (the transport-level one) adapted to the build job's plan-based seam."""

    def __init__(self, cache: RemoteCache, tree: OutputTree) -> None:
        self.cache = cache
        self.tree = tree

    def fetch(self, plan: Plan, staging: Path, say: Callable[[str], None]) -> Manifest | None:
        """The verified manifest (no version) of the remote entry for the plan's key, its files in `staging`; None
        on a miss, and always None with `--force` (a rebuild was asked for) and for multi-worker training (its
        tasks must all train together).

        Raises:
            RemoteRequiredError: the cache is unavailable and required.
            QualityGateError: the fetched version fails the definition's gate (kept under `build-out/rejected/`).
        """
        options = plan.options
        if options.force or options.strategy == "multi-worker":
            return None
        key, name = plan.key.digest, plan.spec.name
        fetched = self.cache.fetch(key, name, staging)
        if fetched is None and plan.key.training_digest != key:
            # The same training under another gate (or none): this build's gate judges it below, as it judges a
            # local version trained from the same inputs (`buildsys.build.find_published`).
            key = plan.key.training_digest
            fetched = self.cache.fetch(key, name, staging)
        if fetched is None:
            return None
        manifest = fetched.manifest.to_json()
        try:
            verdict = judge(plan.spec.evaluate, manifest, self.tree.latest_manifest(name))
            manifest["quality_gate"] = verdict.to_json()
            typed = Manifest.from_json(manifest, f"{plan.label} (fetched)")
        except (KeyError, TypeError, ValueError, FormatError):
            self.cache.warn(f"remote cache {self.cache.display}: entry {key[:16]} records no test metrics; building")
            return None
        if not verdict.passed:
            raise reject(self.tree, staging, manifest, verdict, plan.key.training_digest)
        say(
            f"fetched from remote cache {self.cache.display} ({fetched.size / 1e6:.1f} MB in {fetched.seconds:.2f}s, "
            "verified; no training)",
        )
        return typed

    def upload(self, plan: Plan, version_dir: Path, say: Callable[[str], None]) -> None:
        """Stores a version this build published under the plan's key and its training digest, unless uploads are
        off."""
        if not self.cache.settings.upload:
            return
        sent = self.cache.upload(version_dir, plan.key.digest, also=(plan.key.training_digest,))
        if sent is not None:
            say(f"uploaded to remote cache {self.cache.display} ({sent / 1e6:.1f} MB new)")
