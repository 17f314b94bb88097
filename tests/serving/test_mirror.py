"""serving.mirror: model repositories in object storage (moto's S3 server, the GCS emulator) served from a local
mirror, with hot reload, and object keys that can never write outside it."""

import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import boto3
import fsspec
import numpy as np
import onnx
import pytest
import s3fs
import tritonclient.grpc as grpcclient
from hypothesis import given
from hypothesis import strategies as st

from modelrepo import MODEL_NAME
from serving import mirror as mirror_module
from serving.errors import ServingError
from serving.mirror import FETCH_THREADS, FetchError, MirrorError, RepositoryMirror, is_remote
from serving.repository import ModelRepository
from tests.conftest import fuzz_settings
from tests.remote.azurite import ACCOUNT, ACCOUNT_KEY, CONTAINER, azurite  # noqa: F401 - fixture
from tests.remote.gcs import gcs_server  # noqa: F401 - fixture
from tests.remote.s3 import BUCKET, s3  # noqa: F401 - fixture
from tests.serving.conftest import (
    classifier_onnx,
    images,
    publish_ensemble,
    publish_version,
    reference_probabilities,
)
from tests.serving.test_reload import wait_until
from tests.serving.test_repository import CPU

URL = f"s3://{BUCKET}/models"


def upload(local_repo: Path, url: str) -> None:
    fs, root = fsspec.core.url_to_fs(url)
    for path in sorted(p for p in local_repo.rglob("*") if p.is_file() and ".staging" not in str(p)):
        fs.put_file(str(path), f"{root}/{path.relative_to(local_repo).as_posix()}")


def serves_the_ensemble(url: str, local: Path, folder: Path) -> ModelRepository:
    """A repository of the store at ``url``, which holds ``local``'s publish_ensemble, loaded: all three models
    serve, and the classifier answers as its ONNX file does."""
    repository = ModelRepository([RepositoryMirror(url, folder)], CPU)
    repository.load_all()
    assert sorted(s.name for s in repository.loaded()) == ["argmax", "digits", "pipeline"]
    batch = images(2)
    answer = repository.get("digits").model.run({"image": batch})["probabilities"]
    np.testing.assert_allclose(answer, reference_probabilities(local / "digits" / "1", batch), rtol=1e-5, atol=1e-6)
    return repository


def test_urls_of_object_storage_are_mirrored_and_everything_else_is_a_folder():
    assert is_remote("s3://bucket/models") and is_remote("GS://bucket") and is_remote("gcs://b/p")
    assert not is_remote("build-out/models") and not is_remote("/models") and not is_remote("file:///models")


def test_a_repository_in_s3_serves_and_hot_reloads_from_its_mirror(s3, tmp_path, caplog):  # noqa: F811
    local = tmp_path / "local"
    publish_version(local, "digits", 1, seed=1)
    upload(local, URL)
    repository = ModelRepository([RepositoryMirror(URL, tmp_path / "mirror")], CPU)
    repository.load_all()
    batch = images(2)
    served = repository.get("digits")
    answer = served.model.run({"image": batch})["probabilities"]
    np.testing.assert_allclose(answer, reference_probabilities(local / "digits" / "1", batch), rtol=1e-5, atol=1e-6)
    assert repository.load_all() == [], "nothing changed in the store: nothing is fetched or reloaded"

    onnx.save(classifier_onnx(3), local / "digits" / "1" / "model.onnx")  # rewritten in place in the store
    upload(local, URL)
    assert repository.load_all() == [served]
    answer = repository.get("digits").model.run({"image": batch})["probabilities"]
    np.testing.assert_allclose(answer, reference_probabilities(local / "digits" / "1", batch), rtol=1e-5, atol=1e-6)

    publish_version(local, "digits", 2, seed=2)
    upload(local, URL)
    repository.load_all()
    assert [s.version for s in repository.versions("digits")] == [2]
    s3fs.S3FileSystem().rm(f"{BUCKET}/models/digits/2", recursive=True)
    repository.load_all()
    assert [s.version for s in repository.versions("digits")] == [1]
    assert not (tmp_path / "mirror" / "digits" / "2").exists(), "a version gone from the store is gone from the mirror"

    served = repository.get("digits")
    s3.stop()  # the store becomes unreachable: what serves stays, said once
    with caplog.at_level(logging.INFO, logger="serving.repository"):
        assert repository.load_all() == []
        assert repository.load_all() == []
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith(f"cannot list repository {URL}: listing failed: "), errors
    assert errors[0].endswith("; what serves from it stays") and repository.get("digits") is served
    repository.take_all()


def test_a_repository_in_google_cloud_storage_serves_from_its_mirror(gcs_server, tmp_path):  # noqa: F811
    """With an ensemble whose version folder is a folder marker, as the Cloud console's "Create folder" makes it."""
    local = tmp_path / "local"
    publish_ensemble(local)
    url = f"gs://{BUCKET}/models"
    upload(local, url)
    fsspec.filesystem("gs").pipe_file(f"{BUCKET}/models/pipeline/1/", b"")
    repository = serves_the_ensemble(url, local, tmp_path / "mirror")
    repository.take_all()


def test_a_repository_in_azure_storage_serves_from_its_mirror_with_its_empty_folders(azurite, tmp_path):  # noqa: F811
    """Named as Triton names it (as://account/container/path). Azure keeps an empty folder (the ensemble's version
    folder) as a blob of its own, which the mirror makes a folder."""
    local = tmp_path / "local"
    publish_ensemble(local)
    container = azurite.get_container_client(CONTAINER)
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        container.upload_blob(f"models/{path.relative_to(local).as_posix()}", path.read_bytes())
    container.upload_blob("models/pipeline/1", b"", metadata={"hdi_isfolder": "true"})  # as Storage Explorer does
    repository = serves_the_ensemble(f"as://{ACCOUNT}/{CONTAINER}/models", local, tmp_path / "mirror")
    served = repository.get("digits")
    onnx.save(classifier_onnx(3), local / "digits" / "1" / "model.onnx")
    container.upload_blob("models/digits/1/model.onnx", (local / "digits" / "1" / "model.onnx").read_bytes(),
                          overwrite=True)  # fmt: skip
    assert repository.load_all() == [served], "a blob rewritten in place reloads its version"
    container.delete_blob("models/pipeline/1")
    repository.load_all()
    assert sorted(s.name for s in repository.loaded()) == ["argmax", "digits"]
    repository.take_all()


def test_object_keys_that_would_leave_the_mirror_or_that_no_model_holds_are_skipped_once_each(
    s3,  # noqa: F811
    tmp_path,
    caplog,
):
    local = tmp_path / "local"
    publish_version(local, "digits", 1, seed=1)
    upload(local, URL)
    client = boto3.client("s3")
    for key in [
        "models/digits/1/../../../../escape.txt",
        "models//digits/1/model.onnx",
        "models/bad name/1/model.onnx",
        "models/digits/1/nested/deeper/model.onnx",
        "models/digits/1/model.onnx/part",
        "models/README.md",
        "models/letters/",
        "models/digits/1/tab\tseparated",
    ]:
        client.put_object(Bucket=BUCKET, Key=key, Body=b"x")
    mirror = tmp_path / "mirror"
    repository = ModelRepository([RepositoryMirror(URL, mirror)], CPU)
    with caplog.at_level(logging.INFO, logger="serving.mirror"):
        repository.load_all()
        repository.load_all()
    warnings = sorted(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert warnings == [
        f"{URL}: object '/digits/1/model.onnx' skipped: not a path inside the repository",
        f"{URL}: object 'bad name/1/model.onnx' skipped: folder name does not match {MODEL_NAME.pattern}",
        f"{URL}: object 'digits/1/../../../../escape.txt' skipped: not a path inside the repository",
        f"{URL}: object 'digits/1/model.onnx' skipped: a folder of other objects has its name",
        f"{URL}: object 'digits/1/nested/deeper/model.onnx' skipped: deeper than a model's files are read (4 levels)",
        f"{URL}: object 'digits/1/tab\\tseparated' skipped: a control character in its name (it would break the log "
        "lines that name the file)",
    ]
    assert not list(tmp_path.rglob("escape.txt")) and not (mirror / "README.md").exists()
    # The folder digits/1/model.onnx/ (holding "part") stands where the model file would: the version is refused.
    assert repository.loaded() == [] and "model.onnx/model.onnx" in repository.index()[0].reason
    repository.take_all()


SEGMENTS = st.sampled_from(["..", ".", "", "digits", "1", "model.onnx", "a" * 300, "x/", "é", "warmup", "\0"])


KEYS = st.lists(st.lists(SEGMENTS | st.text(max_size=6), min_size=1, max_size=6).map("/".join), max_size=8)


@fuzz_settings(200)
@given(before=KEYS, after=KEYS, folders_listed=st.booleans())
def test_any_object_keys_mirror_inside_the_mirror_folder_or_not_at_all(tmp_path_factory, before, after, folders_listed):
    """A store holding any keys (fsspec's in-memory store), then any others: each sync succeeds and writes only
    inside the mirror, and after the second nothing of the first is left (a file may have to give way to a folder
    of the same name, or the reverse). The store's folders are listed too, as they are for Azure, or not."""
    store = fsspec.filesystem("memory")
    root = f"/fuzz-{uuid.uuid4().hex}/repo"
    top = tmp_path_factory.mktemp("mirror")
    folder = top / "inside"
    mirror = RepositoryMirror(f"memory://{root}", folder)
    mirror._folders_listed = folders_listed
    for keys, content in ((before, b"before"), (before[::2] + after, b"after!")):  # rewritten at the same size
        for path in [path for path in store.store if path.startswith(root)]:  # the store emptied, even of what
            del store.store[path]  # its own rm cannot remove (a key "..")
        stored = {key: key.rstrip("/") for key in keys}  # the memory store drops a trailing slash
        for key, name in stored.items():
            if any(other.startswith(f"{name}/") or name.startswith(f"{other}/") for other in stored.values()):
                continue  # a file and a folder of one name: S3 holds both, fsspec's memory store not (S3 test above)
            try:
                store.pipe_file(f"{root}/{key}", content)
            except Exception:  # what the store itself cannot hold never reaches the mirror
                continue
        mirror.refresh()  # a store that answers never fails a sync, whatever its keys: they are skipped
        models = {model.name for model in folder.iterdir() if not model.name.startswith(".")}
        mirror.prefetch(models)
        for model in sorted(models):
            mirror.fetch(model)
        for path in top.rglob("*"):
            assert path.resolve().is_relative_to(folder.resolve()), path
        for path in folder.rglob("*"):
            assert path.is_dir() or path.read_bytes() == content, path


def memory_store(models: list[str], files_per_model: int = 1) -> str:
    """A repository in fsspec's in-memory store: each model's config.pbtxt and version 1's files; its URL."""
    store = fsspec.filesystem("memory")
    root = f"/mirror-{uuid.uuid4().hex}/repo"
    for model in models:
        store.pipe_file(f"{root}/{model}/config.pbtxt", b"config")
        for index in range(files_per_model):
            store.pipe_file(f"{root}/{model}/1/file{index}", b"version one" * (index + 1))
    return f"memory://{root}"


def test_objects_are_fetched_several_at_a_time_and_models_in_one_batch(tmp_path, monkeypatch):
    mirror = RepositoryMirror(memory_store(["alpha", "beta"]), tmp_path / "mirror")
    fetch = mirror.fs.get_file
    together = threading.Barrier(2, timeout=10)

    def get_file(remote, local):
        together.wait()  # passes only while two fetches are under way at once
        fetch(remote, local)

    monkeypatch.setattr(mirror.fs, "get_file", get_file)
    mirror.refresh()  # alpha/config.pbtxt and beta/config.pbtxt together
    mirror.prefetch({"alpha", "beta"})  # alpha/1/file0 and beta/1/file0 together, though of two models
    assert (tmp_path / "mirror" / "alpha" / "1" / "file0").read_bytes() == b"version one"
    assert (tmp_path / "mirror" / "beta" / "1" / "file0").read_bytes() == b"version one"


def test_no_more_than_fetch_threads_objects_are_fetched_at_once(tmp_path, monkeypatch):
    mirror = RepositoryMirror(memory_store(["alpha"], files_per_model=3 * FETCH_THREADS), tmp_path / "mirror")
    fetch = mirror.fs.get_file
    lock, under_way, most = threading.Lock(), [0], [0]

    def get_file(remote, local):
        with lock:
            under_way[0] += 1
            most[0] = max(most[0], under_way[0])
        time.sleep(0.01)  # long enough for the others to start, if they would
        fetch(remote, local)
        with lock:
            under_way[0] -= 1

    monkeypatch.setattr(mirror.fs, "get_file", get_file)
    mirror.refresh()
    mirror.fetch("alpha")
    assert 1 < most[0] <= FETCH_THREADS
    assert len(list((tmp_path / "mirror" / "alpha" / "1").iterdir())) == 3 * FETCH_THREADS


def test_a_failed_batch_moves_nothing_and_names_its_first_failing_object(tmp_path, monkeypatch, caplog):
    """Every fetch under way finishes before the failure is raised (nothing writes after), none of the batch is
    moved into place, and the line names the first failing key in key order, whichever failed first in time."""
    folder = tmp_path / "mirror"
    mirror = RepositoryMirror(memory_store(["alpha", "beta"], files_per_model=2), folder)
    mirror.refresh()
    fetch = mirror.fs.get_file
    file0_under_way = threading.Event()

    def get_file(remote, local):
        if remote.endswith("beta/1/file1"):  # the larger, so fetched first
            file0_under_way.wait(timeout=10)
            raise ConnectionError("the connection was reset")
        if remote.endswith("beta/1/file0"):
            file0_under_way.set()
            time.sleep(0.05)  # fails after file1 did
            raise TimeoutError("timed out")
        fetch(remote, local)

    monkeypatch.setattr(mirror.fs, "get_file", get_file)
    with pytest.raises(FetchError, match="^fetching beta/1/file0 failed: timed out$"):
        mirror.fetch("beta")
    assert not (folder / "beta" / "1").exists() and not (folder / ".incoming").exists()
    with caplog.at_level(logging.INFO, logger="serving.mirror"):
        mirror.prefetch({"alpha", "beta"})  # best effort: says nothing, changes nothing
    assert not (folder / "alpha" / "1").exists() and caplog.records == []
    mirror.fetch("alpha")  # a model's own fetch is not held back by the other's
    assert (folder / "alpha" / "1" / "file1").read_bytes() == b"version one" * 2


def test_under_explicit_model_control_only_the_models_loaded_are_fetched(s3, tmp_path):  # noqa: F811
    """As Triton fetches only the models a load names: the others' model-level files come (the index lists them),
    their versions only when a load request asks for them."""
    local = tmp_path / "local"
    publish_version(local, "digits", 1, seed=1)
    publish_version(local, "letters", 1, seed=2)
    upload(local, URL)
    mirror = tmp_path / "mirror"
    repository = ModelRepository([RepositoryMirror(URL, mirror)], CPU)
    assert repository.hold_back({"digits"}) == []
    repository.load_all()
    assert [s.name for s in repository.loaded()] == ["digits"]
    assert (mirror / "letters" / "config.pbtxt").is_file() and not (mirror / "letters" / "1").exists()
    assert {(e.name, e.state) for e in repository.index()} == {("digits", "READY"), ("letters", "UNAVAILABLE")}
    with pytest.raises(ServingError, match=f"unknown model 'ghost' in {URL}$"):  # named as the user named it
        repository.load("ghost")
    retired, failure = repository.load("letters")
    assert failure is None and (mirror / "letters" / "1" / "model.onnx").is_file()
    batch = images(2)
    answer = repository.get("letters").model.run({"image": batch})["probabilities"]
    np.testing.assert_allclose(answer, reference_probabilities(local / "letters" / "1", batch), rtol=1e-5, atol=1e-6)
    repository.take_all()


def test_an_ensemble_whose_version_folder_is_a_folder_marker_serves_and_loads_its_steps_in_one_batch(
    s3,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    """An ensemble's version folder is empty, and a store keeps an empty folder only as a folder marker (an empty
    object named "pipeline/1/", as the S3 console's "Create folder" makes it): the mirror makes it a folder, as
    Triton does. A load request for the ensemble fetches the files of its steps' models in one batch."""
    local = tmp_path / "local"
    publish_ensemble(local)
    upload(local, URL)
    boto3.client("s3").put_object(Bucket=BUCKET, Key="models/pipeline/1/", Body=b"")
    mirror = RepositoryMirror(URL, tmp_path / "mirror")
    batches = []
    get_all = mirror._get_all
    monkeypatch.setattr(mirror, "_get_all", lambda keys, *args: (batches.append(keys), get_all(keys, *args)))
    repository = ModelRepository([mirror], CPU)
    assert repository.hold_back({"pipeline"}) == []
    repository.load_all()
    assert sorted(s.name for s in repository.loaded()) == ["argmax", "digits", "pipeline"]
    assert (tmp_path / "mirror" / "pipeline" / "1").is_dir()
    version_batches = [{key.split("/")[0] for key in keys if key.count("/") > 1} for keys in batches]
    assert {"argmax", "digits"} in version_batches, batches

    boto3.client("s3").delete_object(Bucket=BUCKET, Key="models/pipeline/1/")
    repository.load_all()
    assert sorted(s.name for s in repository.loaded()) == ["argmax", "digits"]
    assert not (tmp_path / "mirror" / "pipeline" / "1").exists(), "the folder goes with its marker"
    repository.take_all()


def test_a_model_whose_objects_cannot_be_fetched_serves_as_it_was_and_says_which_store(s3, tmp_path, caplog):  # noqa: F811
    local = tmp_path / "local"
    publish_version(local, "digits", 1, seed=1)
    upload(local, URL)
    mirror = RepositoryMirror(URL, tmp_path / "mirror")
    repository = ModelRepository([mirror], CPU)
    repository.load_all()
    served = repository.get("digits")
    onnx.save(classifier_onnx(3), local / "digits" / "1" / "model.onnx")
    upload(local, URL)

    def unreachable(*args, **kwargs):
        raise ConnectionError("the connection was reset")

    mirror.fs.get_file = unreachable  # the listing still answers; the object does not arrive
    with caplog.at_level(logging.INFO, logger="serving.repository"):
        assert repository.load_all() == []
        assert repository.load_all() == []
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [
        f"model 'digits' not (re)loaded: {URL}: fetching digits/1/model.onnx failed: the connection was reset"
    ]
    assert repository.get("digits") is served
    repository.take_all()


def test_triton_s_url_for_an_s3_store_of_one_s_own_names_its_endpoint(tmp_path):
    for url, endpoint, root in [
        ("s3://minio.example:9000/bucket/models", "http://minio.example:9000", "bucket/models"),
        ("s3://http://minio.example:9000/bucket", "http://minio.example:9000", "bucket"),
        ("s3://https://10.0.0.7:443/bucket/team/models/", "https://10.0.0.7:443", "bucket/team/models"),
    ]:
        mirror = RepositoryMirror(url, tmp_path)
        assert (mirror.fs.endpoint_url, mirror.root, mirror.url) == (endpoint, root, url.rstrip("/"))
    assert RepositoryMirror("S3://bucket/models", tmp_path).root == "bucket/models"


def test_triton_s_url_for_azure_storage_names_the_account_and_the_container(tmp_path):
    mirror = RepositoryMirror("as://teamaccount/models/path/to/repository", tmp_path)
    assert (mirror.fs.account_name, mirror.root) == ("teamaccount", "models/path/to/repository")
    assert RepositoryMirror("AS://teamaccount/models", tmp_path).root == "models"
    assert is_remote("as://teamaccount/models")
    with pytest.raises(MirrorError, match=r"^as://teamaccount: an Azure Storage repository is named as://account/"):
        RepositoryMirror("as://teamaccount", tmp_path)


@pytest.mark.parametrize(("url", "extra"), [("s3://b/m", "s3"), ("GS://b/m", "gcs"), ("as://a/c/m", "azure")])
def test_a_store_whose_library_is_missing_names_the_extra_that_installs_it(tmp_path, monkeypatch, url, extra):
    def missing(url):
        raise ImportError("No module named 'the_storage_library'")

    monkeypatch.setattr(mirror_module, "_open_store", missing)
    with pytest.raises(MirrorError) as caught:
        RepositoryMirror(url, tmp_path)
    assert str(caught.value) == f"{url}: No module named 'the_storage_library': pip install 'buildsys[{extra}]'"


def test_triton_s_azure_authentication_variables_choose_the_credential(tmp_path, monkeypatch):
    """AZURE_STORAGE_AUTH_TYPE as Triton reads it. A managed identity's client id goes to the identity: adlfs alone
    would take AZURE_STORAGE_CLIENT_ID for half of a service principal."""
    from azure.identity.aio import DefaultAzureCredential, ManagedIdentityCredential

    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    monkeypatch.setenv("AZURE_STORAGE_KEY", ACCOUNT_KEY)
    assert RepositoryMirror("as://keyed/models", tmp_path).fs.account_key == ACCOUNT_KEY
    monkeypatch.setenv("AZURE_STORAGE_AUTH_TYPE", "managed_identity")
    monkeypatch.setenv("AZURE_STORAGE_CLIENT_ID", "00000000-0000-0000-0000-000000000001")
    assert isinstance(RepositoryMirror("as://identity/models", tmp_path).fs.credential, ManagedIdentityCredential)
    monkeypatch.setenv("AZURE_STORAGE_AUTH_TYPE", "default")
    assert isinstance(RepositoryMirror("as://chain/models", tmp_path).fs.credential, DefaultAzureCredential)
    monkeypatch.setenv("AZURE_STORAGE_AUTH_TYPE", "sas")
    with pytest.raises(MirrorError, match="^as://other/models: AZURE_STORAGE_AUTH_TYPE 'sas': expected key, "):
        RepositoryMirror("as://other/models", tmp_path)


def test_a_server_serves_an_s3_repository_named_as_tritonserver_names_it(s3, start_server, tmp_path, monkeypatch):  # noqa: F811
    """Named by Triton's URL for a store of one's own (s3://host:port/bucket/path), the endpoint in the URL alone,
    and copied into a folder of its own inside TRITON_AWS_MOUNT_DIRECTORY, as Triton copies it."""
    local = tmp_path / "local"
    publish_version(local, "digits", 1, seed=1)
    upload(local, URL)
    (tmp_path / "empty").mkdir()
    host, port = s3.get_host_and_port()
    url = f"s3://{host}:{port}/{BUCKET}/models"
    mount = tmp_path / "mount"
    mount.mkdir()
    with monkeypatch.context() as server_environment:
        server_environment.delenv("AWS_ENDPOINT_URL")
        server_environment.setenv("TRITON_AWS_MOUNT_DIRECTORY", str(mount))
        server = start_server(tmp_path / "empty", "--model-repository", url, "--repository-poll-secs", "0.3")
    batch = images(2)
    with grpcclient.InferenceServerClient(server.url) as client:
        tensor = grpcclient.InferInput("image", list(batch.shape), "UINT8")
        tensor.set_data_from_numpy(batch)
        answer = client.infer("digits", [tensor]).as_numpy("probabilities")
        np.testing.assert_allclose(answer, reference_probabilities(local / "digits" / "1", batch), rtol=1e-5, atol=1e-6)
        publish_version(local, "letters", 1, seed=2)
        upload(local, URL)
        wait_until(lambda: client.is_model_ready("letters"), what="the model added to the store to serve")
    assert url in server.log()
    (copy,) = mount.iterdir()
    assert copy.name.startswith("mirror-of-s3_") and (copy / "letters" / "1" / "model.onnx").is_file()


def test_a_mount_directory_that_is_not_there_stops_the_server_at_start_in_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    command = [sys.executable, "-m", "serving", "--model-repository", URL, "--no-grpc", "--http-port", "0"]
    environment = {**os.environ, "TRITON_AWS_MOUNT_DIRECTORY": str(tmp_path / "gone")}
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, env=environment, cwd=tmp_path)
    assert result.returncode == 2, result
    assert result.stderr.strip().splitlines()[-1] == (
        f"serve: error: TRITON_AWS_MOUNT_DIRECTORY={tmp_path / 'gone'}: No such file or directory (the local copy "
        f"of {URL} is made there)"
    )
