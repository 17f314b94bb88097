"""The remote build cache: a team's published versions shared over HTTP (Bazel's protocol) or object storage.

`RemoteCache.fetch` turns a cache key into a verified version folder in staging (or a miss), `RemoteCache.upload`
stores a published version under its key. `record` owns the stored format, `backends` the transports, `probe` the
TensorFlow-free parity re-check, `transfer` the two operations. The build calls them at its two seams: a lookup
before it loads data or trains, an upload after it publishes. Nothing here imports TensorFlow.
"""

from buildsys.remote.backends import RemoteConfigError, RemoteUnavailableError, display_url, parse_headers
from buildsys.remote.transfer import CorruptEntryError, Fetched, RemoteCache, RemoteRequiredError, RemoteSettings

__all__ = [
    "CorruptEntryError",
    "Fetched",
    "RemoteCache",
    "RemoteConfigError",
    "RemoteRequiredError",
    "RemoteSettings",
    "RemoteUnavailableError",
    "display_url",
    "parse_headers",
]
