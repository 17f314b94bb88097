"""BYTES tensors (Triton's TYPE_STRING, ONNX's tensor(string)) end to end: a model of strings, as scikit-learn's
classifiers with text labels are exported, served from a Triton folder with and without config.pbtxt, called with
tritonclient.grpc (raw and typed contents, a stream) and tritonclient.http (binary and JSON), merged by the dynamic
batcher, and every malformed string tensor refused as a client error in one line."""

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.serving.conftest import LABELER_CLASSES, LABELER_WORDS, publish_labeler

WORDS = np.array([[b"cat"], ["naïve".encode()], [b"unknown"], [b"dog"]], dtype=object)
SCORES = np.array([[0.1, 0.7, 0.2], [0.9, 0.0, 0.1], [0.0, 0.1, 0.8], [0.3, 0.3, 0.4]], dtype=np.float32)
EXPECTED_IDS = np.array([[LABELER_WORDS["cat"]], [LABELER_WORDS["naïve"]], [-1], [LABELER_WORDS["dog"]]])
EXPECTED_LABELS = np.array([[LABELER_CLASSES[i].encode()] for i in SCORES.argmax(axis=1)], dtype=object)


@pytest.fixture
def labeler_server(start_server, tmp_path):
    repo = tmp_path / "models"
    publish_labeler(repo)
    publish_labeler(repo, "labeler_auto", config=False)
    return start_server(repo)


def grpc_inputs(words: np.ndarray = WORDS, scores: np.ndarray = SCORES) -> list[grpcclient.InferInput]:
    word = grpcclient.InferInput("word", list(words.shape), "BYTES")
    word.set_data_from_numpy(words)
    score = grpcclient.InferInput("scores", list(scores.shape), "FP32")
    score.set_data_from_numpy(scores)
    return [word, score]


def test_strings_in_and_out_over_grpc_with_and_without_a_config(labeler_server):
    with grpcclient.InferenceServerClient(labeler_server.url) as client:
        for model in ("labeler", "labeler_auto"):
            metadata = client.get_model_metadata(model)
            assert [(t.name, t.datatype) for t in metadata.inputs] == [("word", "BYTES"), ("scores", "FP32")]
            result = client.infer(model, grpc_inputs())
            np.testing.assert_array_equal(result.as_numpy("id"), EXPECTED_IDS)
            np.testing.assert_array_equal(result.as_numpy("label"), EXPECTED_LABELS)
        assert client.get_model_config("labeler").config.input[0].data_type == 13  # TYPE_STRING
        # Typed contents (bytes_contents and fp32_contents) instead of raw ones.
        words, scores = grpc_inputs()
        words._raw_content = scores._raw_content = None
        words._input.contents.bytes_contents.extend(WORDS.reshape(-1).tolist())
        scores._input.contents.fp32_contents.extend(SCORES.reshape(-1).tolist())
        result = client.infer("labeler", [words, scores])
        np.testing.assert_array_equal(result.as_numpy("id"), EXPECTED_IDS)
        # Requests from a stream, merged by the batcher, each answered with its own rows.
        answers = []
        client.start_stream(callback=lambda result, error: answers.append((result, error)))
        for row in range(len(WORDS)):
            client.async_stream_infer("labeler", grpc_inputs(WORDS[row : row + 1], SCORES[row : row + 1]))
        client.stop_stream()
        got = np.concatenate([result.as_numpy("label") for result, _ in answers])
        np.testing.assert_array_equal(got, EXPECTED_LABELS)


def test_strings_in_and_out_over_http_binary_and_json(labeler_server):
    client = httpclient.InferenceServerClient(labeler_server.http_url)
    try:
        for binary in (True, False):
            word = httpclient.InferInput("word", list(WORDS.shape), "BYTES")
            word.set_data_from_numpy(WORDS, binary_data=binary)
            score = httpclient.InferInput("scores", list(SCORES.shape), "FP32")
            score.set_data_from_numpy(SCORES, binary_data=binary)
            outputs = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in ("id", "label")]
            result = client.infer("labeler", [word, score], outputs=outputs)
            np.testing.assert_array_equal(result.as_numpy("id"), EXPECTED_IDS)
            labels = result.as_numpy("label")  # JSON strings come back as str, binary ones as bytes
            np.testing.assert_array_equal(labels if binary else np.char.encode(labels.astype(str)), EXPECTED_LABELS)
        with pytest.raises(InferenceServerException) as raised:
            client.infer("labeler", [word, score], outputs=[httpclient.InferRequestedOutput("label", class_count=2)])
        assert raised.value.status() == "400" and "classification needs scores" in str(raised.value)
    finally:
        client.close()


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"\x03\x00\x00\x00ca", "says 3 bytes but 2 are left"),
        (b"\x03\x00\x00\x00cat\x01", "4 elements"),
        (b"\x03\x00\x00\x00cat" * 5, "4 elements"),
        (b"\x02\x00\x00\x00\xff\xfe" * 4, "element 0 is not UTF-8"),
    ],
)
def test_malformed_string_tensors_are_invalid_argument(labeler_server, raw, words):
    with grpcclient.InferenceServerClient(labeler_server.url) as client:
        inputs = grpc_inputs()
        inputs[0]._raw_content = raw
        with pytest.raises(InferenceServerException) as raised:
            client.infer("labeler", inputs)
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT" and words in str(raised.value)
    assert "Traceback" not in labeler_server.log()
