"""Where the build meets the remote cache: publish a verified hit instead of training, upload what was published.

`publish_hit` is called once the cache key is known and no local version has it, before any data is loaded or
TensorFlow imported; `upload_published` right after a local build published its version. A hit goes through the
same quality gate and the same `OutputTree.publish` as a local build, so it becomes a local version like any
other — the next build finds it and says "up to date", a dependent builds on its weights, a server loads it.
Nothing here imports TensorFlow.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable

from buildsys.dsl.specs import ModelSpec
from buildsys.gate import judge, reject
from buildsys.remote.transfer import Fetched, RemoteCache
from buildsys.store import OutputTree


def publish_hit(
    cache: RemoteCache, tree: OutputTree, spec: ModelSpec, key: str, say: Callable[[str], None]
) -> tuple[int, Fetched] | None:
    """Fetches, verifies and publishes the remote entry of `key`; returns (local version, what was fetched), or
    None on a miss (the caller then builds locally).

    Raises:
        RemoteRequiredError: the cache is unavailable and required.
        QualityGateError: the fetched version fails the definition's gate against the local published version,
            exactly as the same build made here would (it is kept under `build-out/rejected/`).
    """
    staging = tree.staging_dir(spec.name)
    try:
        fetched = cache.fetch(key, spec.name, staging)
        if fetched is None:
            shutil.rmtree(staging, ignore_errors=True)
            return None
        manifest = fetched.manifest.to_json()
        try:
            verdict = judge(spec.evaluate, manifest, tree.latest_manifest(spec.name))
        except (KeyError, TypeError, ValueError):
            cache.warn(f"remote cache {cache.display}: entry {key[:16]} records no test metrics; building locally")
            shutil.rmtree(staging, ignore_errors=True)
            return None
        manifest["quality_gate"] = verdict.to_json()
        if not verdict.passed:
            raise reject(tree, staging, manifest, verdict)
        version = tree.publish(spec.name, staging, manifest, spec.export.max_batch_size)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    megabytes = fetched.size / 1e6
    say(f"fetched from remote cache {cache.display} ({megabytes:.1f} MB in {fetched.seconds:.2f}s, verified)")
    return version, fetched


def upload_published(
    cache: RemoteCache, tree: OutputTree, name: str, version: int, key: str, say: Callable[[str], None]
) -> None:
    """Uploads a just-published version under its key when the settings allow uploads."""
    if not cache.settings.upload:
        return
    sent = cache.upload(tree.model_dir(name) / str(version), key, name)
    if sent is not None:
        say(f"uploaded to remote cache {cache.display} ({sent / 1e6:.1f} MB new)")
