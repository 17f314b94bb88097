"""Triton's system shared memory extension: the region registry in process (keys that must stay inside /dev/shm,
bounds, truncated objects, the switch), and a real server driven by tritonclient.grpc, tritonclient.http and
tritonclient.utils.shared_memory: inputs read from and outputs written into the client's regions, registration,
status and unregistration on both front ends, and every refusal as a client error in one line."""

import contextlib
import os

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from serving.errors import ServingError, Status
from serving.shared_memory import MAX_TENSOR_BYTES, SystemSharedMemory
from tests.serving.conftest import images, reference_probabilities, shared_memory_object


@pytest.fixture
def objects(tmp_path):
    """A folder standing in for /dev/shm, and a function that makes an object of n bytes in it."""

    def make(name: str, size: int, fill: bytes = b"\0") -> str:
        (tmp_path / name).write_bytes((fill * size)[:size])
        return "/" + name

    return tmp_path, make


def refusal(call, *args) -> ServingError:
    with pytest.raises(ServingError) as raised:
        call(*args)
    assert "\n" not in raised.value.message
    return raised.value


def test_register_reads_the_window_of_the_object_that_the_client_registered(objects):
    folder, make = objects
    key = make("data", 32, bytes(range(32)))
    registry = SystemSharedMemory(allowed=True, directory=folder)
    registry.register("r", key, 8, 16)
    [status] = registry.status("r")
    assert (status.name, status.key, status.offset, status.byte_size) == ("r", key, 8, 16)
    piece = registry.slice_for(
        "input", "x", {"shared_memory_region": "r", "shared_memory_byte_size": 4, "shared_memory_offset": 2}
    )
    assert piece.read("input 'x'") == bytes([10, 11, 12, 13])
    piece.check_fits("output 'y'", 4)
    piece.write(b"\xff" * 4)
    assert (folder / "data").read_bytes()[10:14] == b"\xff" * 4
    assert registry.slice_for("input", "x", {"binary_data_size": 4}) is None


@pytest.mark.parametrize(
    "key", ["/../etc/passwd", "../data", "/a/b", "", "/", "//", "/.", "/..", "/da\0ta", "/" + "x" * 300]
)
def test_a_key_can_only_name_an_object_in_the_shared_memory_folder(objects, key):
    folder, make = objects
    make("data", 8)
    error = refusal(SystemSharedMemory(allowed=True, directory=folder / "sub").register, "r", key, 0, 8)
    assert error.status is Status.INVALID_ARGUMENT and "region 'r'" in error.message


def test_a_link_a_folder_or_a_pipe_is_not_an_object(objects):
    folder, make = objects
    make("data", 8)
    (folder / "link").symlink_to(folder / "data")
    (folder / "folder").mkdir()
    os.mkfifo(folder / "pipe")
    registry = SystemSharedMemory(allowed=True, directory=folder)
    for key in ("/link", "/folder", "/pipe", "/missing"):
        assert refusal(registry.register, "r", key, 0, 0).status is Status.INVALID_ARGUMENT
    assert registry.status() == []


def test_registration_refuses_a_window_past_the_end_a_name_in_use_and_more_regions_than_the_limit(objects):
    folder, make = objects
    key = make("data", 16)
    registry = SystemSharedMemory(allowed=True, directory=folder, max_regions=2)
    error = refusal(registry.register, "r", key, 8, 9)
    assert error.status is Status.INVALID_ARGUMENT and "past the end" in error.message and "(16 bytes)" in error.message
    registry.register("r", key, 8, 8)
    assert refusal(registry.register, "r", key, 0, 8).status is Status.ALREADY_EXISTS
    registry.register("s", key, 0, 8)
    assert refusal(registry.register, "t", key, 0, 8).status is Status.UNAVAILABLE
    registry.unregister("s")
    registry.unregister("never registered")  # as in Triton: not an error
    registry.register("t", key, 0, 8)
    registry.unregister()
    assert registry.status() == []
    assert refusal(registry.status, "t").status is Status.NOT_FOUND


@pytest.mark.parametrize(
    ("parameters", "status", "words"),
    [
        ({"shared_memory_byte_size": 4}, Status.INVALID_ARGUMENT, "need shared_memory_region"),
        ({"shared_memory_region": "r"}, Status.INVALID_ARGUMENT, "needs shared_memory_byte_size"),
        ({"shared_memory_region": 3, "shared_memory_byte_size": 4}, Status.INVALID_ARGUMENT, "must be a string"),
        ({"shared_memory_region": "r", "shared_memory_byte_size": -1}, Status.INVALID_ARGUMENT, ">= 0"),
        ({"shared_memory_region": "r", "shared_memory_byte_size": True}, Status.INVALID_ARGUMENT, ">= 0"),
        (
            {"shared_memory_region": "r", "shared_memory_byte_size": 4, "shared_memory_offset": "1"},
            Status.INVALID_ARGUMENT,
            ">= 0",
        ),
        (
            {"shared_memory_region": "q", "shared_memory_byte_size": 4},
            Status.NOT_FOUND,
            "no system shared memory region 'q'",
        ),
        ({"shared_memory_region": "r", "shared_memory_byte_size": 17}, Status.INVALID_ARGUMENT, "outside region 'r'"),
        (
            {"shared_memory_region": "r", "shared_memory_byte_size": 0, "shared_memory_offset": 16},
            Status.INVALID_ARGUMENT,
            "outside",
        ),
        (
            {"shared_memory_region": "r", "shared_memory_byte_size": MAX_TENSOR_BYTES + 1},
            Status.INVALID_ARGUMENT,
            "over the limit",
        ),
    ],
)
def test_a_tensors_shared_memory_parameters_are_checked(objects, parameters, status, words):
    folder, make = objects
    registry = SystemSharedMemory(allowed=True, directory=folder)
    registry.register("r", make("data", 16), 0, 16)
    error = refusal(registry.slice_for, "input", "x", parameters)
    assert error.status is status and words in error.message and error.message.startswith("input 'x'")


def test_an_object_truncated_after_registration_fails_the_request_not_the_server(objects):
    folder, make = objects
    registry = SystemSharedMemory(allowed=True, directory=folder)
    registry.register("r", make("data", 64), 0, 64)
    piece = registry.slice_for("input", "x", {"shared_memory_region": "r", "shared_memory_byte_size": 64})
    os.truncate(folder / "data", 10)
    error = refusal(piece.read, "input 'x'")
    assert error.status is Status.INVALID_ARGUMENT and "truncated" in error.message


def test_a_region_unregistered_while_a_request_holds_it_stays_usable_until_the_request_is_done(objects):
    folder, make = objects
    registry = SystemSharedMemory(allowed=True, directory=folder)
    registry.register("r", make("data", 8, b"\x07"), 0, 8)
    piece = registry.slice_for("output", "y", {"shared_memory_region": "r", "shared_memory_byte_size": 8})
    registry.unregister("r")
    piece.write(b"\x01" * 8)
    assert piece.read("output 'y'") == b"\x01" * 8
    assert (
        refusal(registry.slice_for, "input", "x", {"shared_memory_region": "r", "shared_memory_byte_size": 8}).status
        is Status.NOT_FOUND
    )


def test_everything_is_refused_in_one_line_when_client_shared_memory_is_off(objects):
    folder, make = objects
    registry = SystemSharedMemory(allowed=False, directory=folder)
    for call, args in (
        (registry.register, ("r", make("data", 8), 0, 8)),
        (registry.status, ()),
        (registry.unregister, ()),
        (registry.slice_for, ("input", "x", {"shared_memory_region": "r", "shared_memory_byte_size": 8})),
    ):
        error = refusal(call, *args)
        assert error.status is Status.UNIMPLEMENTED and "--allow-client-shm" in error.message


# --- a real server ------------------------------------------------------------------------------------------


@pytest.fixture
def regions():
    """Creates system shared memory objects with tritonclient's helper: (key, handle); destroyed after the test."""
    with contextlib.ExitStack() as objects:
        yield lambda byte_size: objects.enter_context(shared_memory_object(byte_size))


def test_grpc_client_sends_inputs_and_gets_outputs_through_shared_memory(start_server, digits_repo, regions):
    server = start_server(digits_repo, "--allow-client-shm")
    batch = images(3, seed=11)
    expected = reference_probabilities(digits_repo / "digits" / "1", batch)
    input_key, input_handle = regions(batch.nbytes + 16)
    output_key, output_handle = regions(expected.nbytes)
    shm.set_shared_memory_region(input_handle, [batch], offset=16)
    with grpcclient.InferenceServerClient(server.url) as client:
        assert "system_shared_memory" in client.get_server_metadata().extensions
        client.register_system_shared_memory("in", input_key, batch.nbytes, offset=16)
        client.register_system_shared_memory("out", output_key, expected.nbytes)
        status = client.get_system_shared_memory_status().regions
        assert (status["in"].key, status["in"].offset, status["in"].byte_size) == (input_key, 16, batch.nbytes)
        tensor = grpcclient.InferInput("image", list(batch.shape), "UINT8")
        tensor.set_shared_memory("in", batch.nbytes)
        output = grpcclient.InferRequestedOutput("probabilities")
        output.set_shared_memory("out", expected.nbytes)
        result = client.infer("digits", [tensor], outputs=[output])
        described = result.get_output("probabilities")
        assert list(described.shape) == [3, 10] and described.datatype == "FP32"
        assert result.get_response().raw_output_contents == [b""]
        np.testing.assert_allclose(
            shm.get_contents_as_numpy(output_handle, np.float32, [3, 10]), expected, rtol=1e-5, atol=1e-6
        )
        # An input in shared memory beside one in raw contents is not needed by this model; an output in shared
        # memory beside one in the answer is: the answer carries the second in full.
        plain = grpcclient.InferInput("image", list(batch.shape), "UINT8")
        plain.set_data_from_numpy(batch)
        result = client.infer("digits", [plain], outputs=[output])
        np.testing.assert_allclose(shm.get_contents_as_numpy(output_handle, np.float32, [3, 10]), expected, rtol=1e-5)
        client.unregister_system_shared_memory("in")
        assert list(client.get_system_shared_memory_status().regions) == ["out"]
        with pytest.raises(InferenceServerException) as raised:
            client.infer("digits", [tensor])
        assert raised.value.status() == "StatusCode.NOT_FOUND" and "no system shared memory region 'in'" in str(
            raised.value
        )
        client.unregister_system_shared_memory()
        assert not client.get_system_shared_memory_status().regions


def test_http_client_sends_inputs_and_gets_outputs_through_shared_memory(start_server, digits_repo, regions):
    server = start_server(digits_repo, "--allow-client-shm")
    batch = images(2, seed=12)
    expected = reference_probabilities(digits_repo / "digits" / "1", batch)
    key, handle = regions(batch.nbytes + expected.nbytes)
    shm.set_shared_memory_region(handle, [batch])
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        client.register_system_shared_memory("both", key, batch.nbytes + expected.nbytes)
        assert client.get_system_shared_memory_status("both") == [
            {"name": "both", "key": key, "offset": 0, "byte_size": batch.nbytes + expected.nbytes}
        ]
        tensor = httpclient.InferInput("image", list(batch.shape), "UINT8")
        tensor.set_shared_memory("both", batch.nbytes)
        output = httpclient.InferRequestedOutput("probabilities", binary_data=False)
        output.set_shared_memory("both", expected.nbytes, offset=batch.nbytes)
        result = client.infer("digits", [tensor], outputs=[output])
        assert result.get_output("probabilities") == {"name": "probabilities", "datatype": "FP32", "shape": [2, 10]}
        np.testing.assert_allclose(
            shm.get_contents_as_numpy(handle, np.float32, [2, 10], offset=batch.nbytes), expected, rtol=1e-5, atol=1e-6
        )
        classified = httpclient.InferRequestedOutput("probabilities", class_count=2)
        classified._parameters.update(output._parameters)  # what tritonclient would not let a caller combine
        with pytest.raises(InferenceServerException) as raised:
            client.infer("digits", [tensor], outputs=[classified])
        assert raised.value.status() == "400" and "classification cannot go into shared memory" in str(raised.value)
        client.unregister_system_shared_memory()
        assert client.get_system_shared_memory_status() == []
    finally:
        client.close()


def test_an_output_region_too_small_is_a_client_error_and_the_clients_memory_is_left_as_it_was(
    start_server, digits_repo, regions
):
    server = start_server(digits_repo, "--allow-client-shm")
    batch = images(2, seed=13)
    key, handle = regions(40)
    shm.set_shared_memory_region(handle, [np.full(40, 7, dtype=np.uint8)])
    with grpcclient.InferenceServerClient(server.url) as client:
        client.register_system_shared_memory("small", key, 40)
        tensor = grpcclient.InferInput("image", list(batch.shape), "UINT8")
        tensor.set_data_from_numpy(batch)
        output = grpcclient.InferRequestedOutput("probabilities")
        output.set_shared_memory("small", 40)
        with pytest.raises(InferenceServerException) as raised:
            client.infer("digits", [tensor], outputs=[output])
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "the output is 80 bytes, more than the 40 bytes" in str(raised.value)
    assert (shm.get_contents_as_numpy(handle, np.uint8, [40]) == 7).all()


def test_keys_outside_dev_shm_and_cuda_regions_are_refused_and_the_feature_is_off_by_default(
    start_server, digits_repo, regions
):
    key, _ = regions(64)
    enabled = start_server(digits_repo, "--allow-client-shm")
    with grpcclient.InferenceServerClient(enabled.url) as client:
        for bad_key in ("/../../etc/passwd", "/proc/self/mem"):
            with pytest.raises(InferenceServerException) as raised:
                client.register_system_shared_memory("evil", bad_key, 8)
            assert raised.value.status() == "StatusCode.INVALID_ARGUMENT" and "must be a name in /dev/shm" in str(
                raised.value
            )
        with pytest.raises(InferenceServerException) as raised:
            client.register_cuda_shared_memory("gpu", b"\0" * 64, 0, 64)
        assert raised.value.status() == "StatusCode.UNIMPLEMENTED" and "CUDA shared memory is not supported" in str(
            raised.value
        )
        assert not client.get_cuda_shared_memory_status().regions
    disabled = start_server(digits_repo)
    with grpcclient.InferenceServerClient(disabled.url) as client:
        assert "system_shared_memory" not in client.get_server_metadata().extensions
        with pytest.raises(InferenceServerException) as raised:
            client.register_system_shared_memory("r", key, 64)
        assert raised.value.status() == "StatusCode.UNIMPLEMENTED" and "--allow-client-shm" in str(raised.value)
        tensor = grpcclient.InferInput("image", [1, 8, 8], "UINT8")
        tensor.set_shared_memory("r", 64)
        with pytest.raises(InferenceServerException) as raised:
            client.infer("digits", [tensor])
        assert raised.value.status() == "StatusCode.UNIMPLEMENTED"
    http = httpclient.InferenceServerClient(disabled.http_url)
    try:
        with pytest.raises(InferenceServerException) as raised:
            http.register_system_shared_memory("r", key, 64)
        assert raised.value.status() == "501" and "--allow-client-shm" in str(raised.value)
    finally:
        http.close()
    for server in (enabled, disabled):
        assert "Traceback" not in server.log()
