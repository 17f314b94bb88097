"""Upload and verified fetch of a version folder: a real (tiny) ONNX model through nginx and a file:// store.

The version folder is made here: an ONNX graph written with `onnx.helper` (uint8 [-1, 8, 8] -> softmax over 10
classes), its parity probe, a manifest and stand-ins for the SavedModel and weights files. Every way a remote entry
can be wrong must end as a miss with one warning and an empty staging folder.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from buildsys.remote import RemoteCache, RemoteRequiredError, RemoteSettings
from buildsys.remote.backends import RemoteUnavailableError
from buildsys.remote.probe import PROBE_FILE, write_probe

KEY = "5e" * 32


def _onnx_model(path: Path, seed: int = 0) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(seed).normal(size=(64, 10)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["image"], ["pixels"], to=TensorProto.FLOAT),
            helper.make_node("Reshape", ["pixels", "shape"], ["flat"]),
            helper.make_node("MatMul", ["flat", "weights"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", 8, 8])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(np.array([-1, 64], np.int64), "shape"),
         numpy_helper.from_array(weights / 255, "weights")],
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def make_version(folder: Path, key: str = KEY) -> Path:
    """A published-looking version folder whose probe outputs are the model's own (as Keras' would match)."""
    import onnxruntime

    folder.mkdir(parents=True)
    _onnx_model(folder / "model.onnx")
    (folder / "model.savedmodel" / "variables").mkdir(parents=True)
    (folder / "model.savedmodel" / "saved_model.pb").write_bytes(b"savedmodel graph")
    (folder / "model.savedmodel" / "variables" / "variables.data-00000-of-00001").write_bytes(bytes(range(256)))
    (folder / "model.weights.h5").write_bytes(b"weights" * 100)
    images = np.random.default_rng(1).integers(0, 256, size=(20, 8, 8), dtype=np.uint8)
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    write_probe(folder, images, session.run(["probabilities"], {"image": images})[0])
    manifest = {
        "format": 1, "name": "digits", "version": 3, "content_hash": key, "origin": {"kind": "built"},
        "files": {"onnx": "model.onnx", "savedmodel": "model.savedmodel", "keras_weights": "model.weights.h5"},
        "inputs": [{"name": "image", "datatype": "UINT8", "shape": [-1, 8, 8]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
        "class_names": [str(i) for i in range(10)],
        "parity": {"samples": 20, "tolerance": 1e-4, "onnx_max_abs_diff": 0.0, "savedmodel_max_abs_diff": 0.0},
    }  # fmt: skip
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return folder


class Warnings(list):
    def __call__(self, message: str) -> None:
        self.append(message)


@pytest.fixture(params=["nginx", "file"])
def cache_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "file":
        return (tmp_path / "store").as_uri()
    return request.getfixturevalue("nginx").url


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_upload_then_fetch_gives_the_same_files_verified(cache_url: str, tmp_path: Path) -> None:
    version = make_version(tmp_path / "built" / "3")
    warnings = Warnings()
    cache = RemoteCache(RemoteSettings(cache_url), warn=warnings)
    assert cache.upload(version, KEY) > 0
    assert cache.upload(version, KEY) == 0  # every blob is there already: only the record is sent
    staging = tmp_path / "staging"
    staging.mkdir()
    fetched = cache.fetch(KEY, "digits", staging)
    assert fetched is not None and not warnings
    assert _files(staging) == _files(version)
    origin = fetched.manifest.extra["origin"]
    assert origin["kind"] == "fetched" and origin["key"] == KEY and origin["cache"] == cache.display
    assert origin["built_as"] == {"version": 3, "origin": {"kind": "built"}}
    assert fetched.manifest.version is None
    assert all(p.stat().st_mode & 0o777 in (0o644, 0o755) for p in staging.rglob("*"))
    assert cache.fetch("6f" * 32, "digits", staging) is None and not warnings  # a plain miss says nothing


def test_a_version_is_also_found_by_its_training_digest_and_by_no_other_key(cache_url: str, tmp_path: Path) -> None:
    """Uploaded under its key and its training digest (what a build under another gate looks up): the record
    under the training digest fetches it when its manifest records that digest, and is unusable otherwise."""
    training = "7a" * 32
    version = make_version(tmp_path / "built" / "3")
    manifest = json.loads((version / "manifest.json").read_text())
    (version / "manifest.json").write_text(json.dumps({**manifest, "training_digest": training}))
    warnings = Warnings()
    cache = RemoteCache(RemoteSettings(cache_url), warn=warnings)
    cache.upload(version, KEY, also=(training,))
    for key in (KEY, training):
        staging = tmp_path / f"staging-{key[:2]}"
        staging.mkdir()
        fetched = cache.fetch(key, "digits", staging)
        assert fetched is not None and fetched.manifest.content_hash == KEY and not warnings
        assert fetched.manifest.extra["origin"]["key"] == key
    other = make_version(tmp_path / "other" / "3")  # records no training digest: found by its key only
    cache.upload(other, KEY, also=("8b" * 32,))
    staging = tmp_path / "staging-other"
    staging.mkdir()
    assert cache.fetch("8b" * 32, "digits", staging) is None
    assert len(warnings) == 1 and "is of another build" in warnings[0]


def _uploaded(nginx, tmp_path: Path) -> tuple[RemoteCache, Warnings, Path]:
    warnings = Warnings()
    cache = RemoteCache(RemoteSettings(nginx.url), warn=warnings)
    cache.upload(make_version(tmp_path / "built" / "1"), KEY)
    staging = tmp_path / "staging"
    staging.mkdir()
    return cache, warnings, staging


def _blob_of(nginx, folder: Path, name: str) -> Path:
    return nginx.storage / "cas" / hashlib.sha256((folder / name).read_bytes()).hexdigest()


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "delete", "wrong model", "record garbage"])
def test_a_damaged_entry_is_a_miss_with_one_warning(nginx, tmp_path: Path, damage: str) -> None:
    cache, warnings, staging = _uploaded(nginx, tmp_path)
    blob = _blob_of(nginx, tmp_path / "built" / "1", "model.onnx")
    if damage == "flip a byte":
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0xFF
        blob.write_bytes(bytes(data))
    elif damage == "truncate":
        blob.write_bytes(blob.read_bytes()[:-1])
    elif damage == "delete":
        blob.unlink()
    elif damage == "wrong model":
        assert cache.fetch(KEY, "mnist", staging) is None
    else:
        (nginx.storage / "ac" / KEY).write_bytes(b'{"format": "buildsys-remote/1", "files": {"../../x": 1}}')
    if damage != "wrong model":
        assert cache.fetch(KEY, "digits", staging) is None
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert f"entry {KEY[:16]} is unusable" in warnings[0] and warnings[0].endswith("building locally")
    assert list(staging.iterdir()) == []


def test_a_model_that_does_not_reproduce_its_probe_is_a_miss(nginx, tmp_path: Path) -> None:
    """A consistent record (digests match) whose ONNX computes something else than the recorded Keras outputs."""
    version = make_version(tmp_path / "other" / "1")
    _onnx_model(version / "model.onnx", seed=7)  # other weights, same graph: the probe no longer matches
    warnings = Warnings()
    cache = RemoteCache(RemoteSettings(nginx.url), warn=warnings)
    cache.upload(version, KEY)
    staging = tmp_path / "staging"
    staging.mkdir()
    assert cache.fetch(KEY, "digits", staging) is None
    assert "differs from the recorded Keras outputs" in warnings[0]


def test_a_manifest_of_another_key_is_a_miss(nginx, tmp_path: Path) -> None:
    version = make_version(tmp_path / "built" / "1", key="7a" * 32)
    warnings = Warnings()
    cache = RemoteCache(RemoteSettings(nginx.url), warn=warnings)
    cache.upload(version, KEY)  # stored under KEY although its manifest says otherwise
    staging = tmp_path / "staging"
    staging.mkdir()
    assert cache.fetch(KEY, "digits", staging) is None
    assert "content_hash differs" in warnings[0]


def test_no_probe_no_hit(nginx, tmp_path: Path) -> None:
    version = make_version(tmp_path / "built" / "1")
    (version / PROBE_FILE).unlink()
    warnings = Warnings()
    cache = RemoteCache(RemoteSettings(nginx.url), warn=warnings)
    cache.upload(version, KEY)
    staging = tmp_path / "staging"
    staging.mkdir()
    assert cache.fetch(KEY, "digits", staging) is None
    assert f"no {PROBE_FILE}" in warnings[0]


def test_unreachable_is_a_warning_or_with_required_an_error(nginx, tmp_path: Path) -> None:
    nginx.stop()
    staging = tmp_path / "staging"
    staging.mkdir()
    warnings = Warnings()
    assert RemoteCache(RemoteSettings(nginx.url), warn=warnings).fetch(KEY, "digits", staging) is None
    assert warnings == [f"remote cache lookup: {nginx.url}: connection refused or host unreachable; building locally"]
    assert RemoteCache(RemoteSettings(nginx.url), warn=warnings).upload(make_version(tmp_path / "v"), KEY) is None
    with pytest.raises(RemoteRequiredError, match="remote cache required but unavailable"):
        RemoteCache(RemoteSettings(nginx.url, required=True)).fetch(KEY, "digits", staging)
    shutil.rmtree(staging)


class Watched:
    """A real backend whose blob transfers first meet at a barrier (so they must overlap: serial transfers would
    break it) and which can make one blob fail or trickle."""

    def __init__(self, backend, meeting: int = 0) -> None:
        self.backend = backend
        self.barrier = threading.Barrier(meeting, timeout=10) if meeting else None
        self.failing: str | None = None
        self.trickling: str | None = None
        self.chunks_sent = 0
        self.lock = threading.Lock()
        self.arrived = 0

    def __getattr__(self, name: str):
        return getattr(self.backend, name)

    def _meet(self) -> None:
        """The first `meeting` transfers wait for each other; later ones go straight on."""
        with self.lock:
            self.arrived += 1
            meets = self.barrier is not None and self.arrived <= self.barrier.parties
        if meets:
            self.barrier.wait()

    def get_blob(self, digest: str, size: int):
        self._meet()
        if digest == self.failing:
            raise FileNotFoundError(digest)
        if digest == self.trickling:
            for _ in range(200):  # 10 s unless the download is abandoned
                time.sleep(0.05)
                self.chunks_sent += 1
                yield b"x"
            return
        yield from self.backend.get_blob(digest, size)

    def put_blob(self, digest: str, source: Path) -> None:
        self._meet()
        if digest == self.failing:
            raise RemoteUnavailableError("cache: HTTP 507 on PUT cas/")
        self.backend.put_blob(digest, source)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_blobs_move_concurrently_both_ways(tmp_path: Path) -> None:
    version = make_version(tmp_path / "built" / "3")
    blobs = len([p for p in version.rglob("*") if p.is_file()])
    cache = RemoteCache(RemoteSettings((tmp_path / "store").as_uri()), warn=Warnings())
    cache.backend = Watched(cache.backend, meeting=min(blobs, 4))
    assert cache.upload(version, KEY) > 0
    cache.backend = Watched(cache.backend.backend, meeting=min(blobs, 4))
    staging = tmp_path / "staging"
    staging.mkdir()
    assert cache.fetch(KEY, "digits", staging) is not None
    assert _files(staging) == _files(version)


def test_a_failed_blob_stops_the_other_downloads_and_leaves_nothing(tmp_path: Path) -> None:
    version = make_version(tmp_path / "built" / "3")
    warnings = Warnings()
    cache = RemoteCache(RemoteSettings((tmp_path / "store").as_uri()), warn=warnings)
    cache.upload(version, KEY)
    watched = cache.backend = Watched(cache.backend)
    watched.trickling = _digest(version / "model.onnx")
    watched.failing = _digest(version / "model.weights.h5")
    staging = tmp_path / "staging"
    staging.mkdir()
    assert cache.fetch(KEY, "digits", staging) is None
    assert warnings == [
        f"remote cache {cache.display}: entry {KEY[:16]} is unusable (blob of model.weights.h5 "
        f"({watched.failing[:16]}) is missing); building locally"
    ]
    assert watched.chunks_sent < 200  # the trickling download stopped when the other failed
    assert list(staging.iterdir()) == []


def test_a_failed_blob_upload_stores_no_record(tmp_path: Path) -> None:
    version = make_version(tmp_path / "built" / "3")
    warnings = Warnings()
    cache = RemoteCache(RemoteSettings((tmp_path / "store").as_uri()), warn=warnings)
    watched = cache.backend = Watched(cache.backend)
    watched.failing = _digest(version / "model.onnx")
    assert cache.upload(version, KEY) is None
    assert warnings == ["remote cache upload: cache: HTTP 507 on PUT cas/; the version is published locally only"]
    assert watched.get_record(KEY, 1 << 20) is None  # a record never names a blob that was not stored
    watched.failing = None
    assert cache.upload(version, KEY) >= (version / "model.onnx").stat().st_size
    assert watched.get_record(KEY, 1 << 20) is not None


def test_identical_files_are_one_blob_sent_once_and_fetched_into_each_place(tmp_path: Path) -> None:
    version = make_version(tmp_path / "built" / "3")
    shutil.copy(version / "model.weights.h5", version / "model.savedmodel" / "copy.h5")
    cache = RemoteCache(RemoteSettings((tmp_path / "store").as_uri()), warn=Warnings())
    total = sum(p.stat().st_size for p in version.rglob("*") if p.is_file() and p.name != "copy.h5")
    assert cache.upload(version, KEY) == total
    staging = tmp_path / "staging"
    staging.mkdir()
    assert cache.fetch(KEY, "digits", staging) is not None
    assert _files(staging) == _files(version)
