"""Triton's response cache: the --cache-config flag, the request digest (what changes an answer changes the key),
the byte bound with the least recently used answers going first, the data plane answering a repeated request
without running its model (and never from a version loaded before), and a live server's statistics and metrics."""

import json
import logging

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from serving.dataplane import InferenceRequest, InputTensor, OutputTensor, RequestedOutput
from serving.response_cache import ENTRY_OVERHEAD_BYTES, ResponseCache, parse_cache_config
from tests.serving.conftest import (
    ENSEMBLE_CONFIG,
    append_to_config,
    free_port,
    images,
    publish_ensemble,
    publish_version,
    scrape,
)
from tests.serving.test_dataplane import request, run

CACHED = "response_cache { enable: true }\n"


def test_the_flag_is_tritons_local_cache_with_a_size_in_bytes():
    assert parse_cache_config([]) is None
    assert parse_cache_config(["local,size=1048576"]) == 1048576


@pytest.mark.parametrize(
    ("flag", "words"),
    [
        ("redis,host=localhost", "the one cache is 'local'"),
        ("local", "expected local,size=BYTES"),
        ("local,capacity=100", "expected local,size=BYTES"),
        ("local,size=1k", "a number of bytes of at least 1024"),
        ("local,size=10", "a number of bytes of at least 1024"),
    ],
)
def test_a_flag_that_cannot_make_a_cache_is_refused_in_one_line(flag, words):
    with pytest.raises(ValueError, match=words):
        parse_cache_config([flag])


def tensor(name: str, data: np.ndarray, datatype: str = "UINT8") -> InputTensor:
    return InputTensor(name, datatype, data.shape, data)


def test_what_changes_an_answer_changes_the_digest_and_nothing_else_does():
    pixels, other = images(2, seed=1), images(2, seed=2)
    digest = ResponseCache.digest(1, [tensor("a", pixels), tensor("b", other)], [])
    assert digest == ResponseCache.digest(1, [tensor("b", other), tensor("a", pixels)], []), "order is not content"
    changed = [
        ResponseCache.digest(2, [tensor("a", pixels), tensor("b", other)], []),  # another load of the version
        ResponseCache.digest(1, [tensor("a", other), tensor("b", pixels)], []),
        ResponseCache.digest(1, [tensor("a", pixels.reshape(2, 64)), tensor("b", other)], []),
        ResponseCache.digest(1, [tensor("a", pixels.view(np.int8), "INT8"), tensor("b", other)], []),
        ResponseCache.digest(1, [tensor("a", pixels), tensor("b", other)], [("probabilities", 0)]),
        ResponseCache.digest(1, [tensor("a", pixels), tensor("b", other)], [("probabilities", 3)]),
    ]
    assert len({digest, *changed}) == 7
    split = [np.array([b"ab", b"c"], dtype=object), np.array([b"a", b"bc"], dtype=object)]
    assert len({ResponseCache.digest(1, [tensor("w", words, "BYTES")], []) for words in split}) == 2


def answer(size: int) -> list[OutputTensor]:
    return [OutputTensor("y", "UINT8", (size,), np.zeros(size, np.uint8))]


def test_a_digest_that_collides_is_only_a_miss_the_answer_belongs_to_the_request_it_answered():
    cache = ResponseCache(1 << 20)
    asked, other = [tensor("x", images(1, seed=1))], [tensor("x", images(1, seed=2))]
    cache.put(b"same digest", 1, asked, [], answer(4))
    assert cache.get(b"same digest", 1, asked, []) is not None
    assert cache.get(b"same digest", 1, other, []) is None, "another request under the same digest"
    assert cache.get(b"same digest", 2, asked, []) is None and cache.get(b"same digest", 1, asked, [("y", 1)]) is None
    cache.put(b"same digest", 1, other, [], answer(4))
    assert cache.get(b"same digest", 1, other, []) is not None and len(cache) == 1


def test_the_least_recently_used_answers_go_first_within_the_byte_bound():
    request = [tensor("x", np.zeros(28, np.uint8))]
    cache = ResponseCache(3 * (ENTRY_OVERHEAD_BYTES + 128))
    for digest in (b"a", b"b", b"c"):
        cache.put(digest, 1, request, [], answer(100))
    assert cache.get(b"a", 1, request, []) is not None  # "a" is now the most recently used
    cache.put(b"d", 1, request, [], answer(100))
    assert cache.get(b"b", 1, request, []) is None
    assert all(cache.get(digest, 1, request, []) for digest in (b"a", b"c", b"d"))
    cache.put(b"huge", 1, request, [], answer(cache.max_bytes))
    assert cache.get(b"huge", 1, request, []) is None and len(cache) == 3 and cache.used_bytes <= cache.max_bytes


def test_a_repeated_request_is_answered_without_running_the_model_and_never_by_an_earlier_load(tmp_path):
    publish_version(tmp_path, "digits", 1, seed=1)
    append_to_config(tmp_path / "digits", CACHED)
    batch, other = images(3, seed=4), images(3, seed=5)
    top = [RequestedOutput.from_parameters("probabilities", {"classification": 2})]

    async def scenario(dataplane):
        answers = [await dataplane.infer(request(batch)) for _ in range(3)]
        await dataplane.infer(request(other))
        labels = [await dataplane.infer(request(batch, outputs=top)) for _ in range(2)]
        [before] = dataplane.statistics("digits")
        await dataplane.load("digits")  # the same version, loaded again: its former answers must not be used
        await dataplane.infer(request(batch))
        [after] = dataplane.statistics("digits")
        return answers, labels, before.stats, after.stats

    answers, labels, before, after = run(scenario, tmp_path, response_cache=ResponseCache(1 << 20))
    for answer in answers[1:]:
        np.testing.assert_array_equal(answer.outputs[0].data, answers[0].outputs[0].data)
    assert labels[0].outputs[0].data.tolist() == labels[1].outputs[0].data.tolist()
    assert labels[0].outputs[0].datatype == "BYTES", "the classification asked for is part of the key"
    assert (before.cache_hit.count, before.cache_miss.count) == (3, 3), "a repeat of each of three requests"
    assert before.execution_count == 3 and before.success.count == 6 and before.inference_count == 9
    assert (after.cache_hit.count, after.cache_miss.count, after.execution_count) == (0, 1, 1)


def test_an_ensemble_answers_from_its_cache_without_its_steps_and_never_from_before_one_of_them_changed(tmp_path):
    """As in Triton, an ensemble's cache is its own (its steps' models need none); a reload of a step's model
    starts a new generation of the ensemble's answers, as a reload of the ensemble would."""
    publish_ensemble(tmp_path, ENSEMBLE_CONFIG + CACHED)
    batch = images(2, seed=9)

    async def scenario(dataplane):
        ask = InferenceRequest(model="pipeline", inputs=[InputTensor("IMAGE", "UINT8", batch.shape, batch)])
        answers = [await dataplane.infer(ask) for _ in range(2)]
        before = {entry.name: entry.stats for entry in dataplane.statistics()}
        await dataplane.load("argmax")
        answers.append(await dataplane.infer(ask))
        after = {entry.name: entry.stats for entry in dataplane.statistics()}
        return answers, before, after

    answers, before, after = run(scenario, tmp_path, response_cache=ResponseCache(1 << 20))
    for answer in answers[1:]:
        assert [o.data.tolist() for o in answer.outputs] == [o.data.tolist() for o in answers[0].outputs]
    assert (before["pipeline"].cache_hit.count, before["pipeline"].cache_miss.count) == (1, 1)
    assert before["digits"].success.count == before["argmax"].success.count == 1, "a hit runs no step"
    assert (after["pipeline"].cache_hit.count, after["pipeline"].cache_miss.count) == (1, 2), "argmax reloaded"
    assert after["digits"].success.count == 2


def test_only_a_model_whose_config_enables_it_is_cached_and_one_without_a_server_cache_is_told(tmp_path, caplog):
    publish_version(tmp_path, "digits", 1, seed=1)

    async def twice(dataplane):
        for _ in range(2):
            await dataplane.infer(request(images(1, seed=7)))
        [entry] = dataplane.statistics("digits")
        return entry.stats

    plain = run(twice, tmp_path, response_cache=ResponseCache(1 << 20))
    assert (plain.cache_hit.count, plain.cache_miss.count, plain.execution_count) == (0, 0, 2)
    append_to_config(tmp_path / "digits", CACHED)
    with caplog.at_level(logging.WARNING, logger="serving"):
        uncached = run(twice, tmp_path)
    assert uncached.execution_count == 2 and "enables response_cache, but the server keeps no response cache" in (
        caplog.text
    )


def test_a_live_server_reports_hits_and_misses_in_its_statistics_and_tritons_metrics(start_server, tmp_path):
    publish_version(tmp_path, "digits", 1, seed=1)
    append_to_config(tmp_path / "digits", CACHED)
    metrics_port = free_port()
    server = start_server(tmp_path, "--cache-config", "local,size=1048576", "--metrics-port", str(metrics_port))
    batch = images(2, seed=8)
    with grpcclient.InferenceServerClient(server.url) as client:
        inputs = grpcclient.InferInput("image", [2, 8, 8], "UINT8")
        inputs.set_data_from_numpy(batch)
        first = client.infer("digits", [inputs]).as_numpy("probabilities")
        again = client.infer("digits", [inputs]).as_numpy("probabilities")
        stats = client.get_inference_statistics("digits", as_json=True)["model_stats"][0]["inference_stats"]
    np.testing.assert_array_equal(first, again)
    assert stats["cache_hit"]["count"] == "1" and stats["cache_miss"]["count"] == "1"
    http = httpclient.InferenceServerClient(server.http_url)
    try:
        inputs = httpclient.InferInput("image", [2, 8, 8], "UINT8")
        inputs.set_data_from_numpy(batch)
        np.testing.assert_array_equal(http.infer("digits", [inputs]).as_numpy("probabilities"), first)
        rest_stats = http.get_inference_statistics("digits")["model_stats"][0]["inference_stats"]
    finally:
        http.close()
    assert rest_stats["cache_hit"]["count"] == 2 and json.dumps(rest_stats)
    text = scrape(metrics_port)
    assert 'nv_cache_num_hits_per_model{model="digits",version="1"} 2.0' in text
    assert 'nv_cache_num_misses_per_model{model="digits",version="1"} 1.0' in text
    assert 'nv_inference_exec_count{model="digits",version="1"} 1.0' in text
