"""serving.repository in-process: version policies and overrides, and that no model's files can stop the scan."""

import pytest

from serving.errors import ServingError, Status
from serving.repository import BatchingOverrides, ModelRepository
from serving.runtime import RuntimeOptions
from serving.version_policy import VersionPolicy
from tests.serving.conftest import publish_version

CPU = RuntimeOptions(device="cpu", intra_op_threads=1)


def test_repository_serves_versions_by_policy_and_flags_override_batching(tmp_path):
    for version in (1, 2, 3):
        publish_version(tmp_path, "digits", version, seed=version)
    repository = ModelRepository(
        tmp_path,
        CPU,
        version_policy=VersionPolicy.parse("latest:2"),
        batching=BatchingOverrides(max_batch_size=16, max_queue_delay_us=0),
    )
    assert repository.load_all() == []
    assert [s.version for s in repository.versions("digits")] == [2, 3]
    assert repository.get("digits").version == 3
    served = repository.get("digits", "2")
    assert (served.batcher.max_batch_size, served.batcher.max_queue_delay_us) == (16, 0)
    assert served.batcher.max_queue_size == 256  # from config.pbtxt
    with pytest.raises(ServingError) as raised:
        repository.get("digits", "1")
    assert raised.value.status is Status.NOT_FOUND and "loaded versions: 2, 3" in raised.value.message
    assert {s.version for s in repository.take_all()} == {2, 3} and repository.loaded() == []


@pytest.mark.parametrize("version", ["9" * 5000, "1" + "0" * 18, "0", "-1", "1.0", " 1", "١"])
def test_any_version_string_is_not_found_never_an_error_of_the_server(tmp_path, version):
    publish_version(tmp_path, "digits", 1, seed=1)
    repository = ModelRepository(tmp_path, CPU)
    repository.load_all()
    with pytest.raises(ServingError) as raised:
        repository.get("digits", version)
    assert raised.value.status is Status.NOT_FOUND and len(raised.value.message) < 200
    assert not repository.is_ready("digits", version)
