"""Triton's logging extension: the log settings in process (levels let through, ISO 8601 times, a change checked
whole before any of it applies, no log file chosen over the network), and a real server whose INFO lines a client
turns on and off with tritonclient.grpc and tritonclient.http."""

import io
import logging

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from serving.errors import ServingError, Status
from serving.log_settings import LogControl
from tests.serving.conftest import images


@pytest.fixture
def logger():
    """A logger of its own with one handler writing to a string, and the control installed on it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s|%(message)s"))
    logger = logging.getLogger("tests.log_settings")
    logger.propagate = False
    logger.handlers = [handler]
    control = LogControl("warning", verbose_logger="tests.log_settings")
    control.install(logger)
    yield logger, control, stream
    logger.handlers = []


def test_the_settings_start_from_the_log_level_and_decide_which_records_are_written(logger):
    log, control, stream = logger
    assert control.settings.as_dict() == {
        "log_file": "",
        "log_info": False,
        "log_warning": True,
        "log_error": True,
        "log_verbose_level": 0,
        "log_format": "default",
    }
    log.info("quiet info")
    log.warning("loud warning")
    control.update({"log_info": True, "log_warning": False, "log_verbose_level": 2, "log_format": None})
    log.debug("verbose debug")
    log.info("loud info")
    log.warning("quiet warning")
    control.update({"log_format": "ISO8601", "log_verbose_level": 0})
    log.debug("quiet debug")
    log.error("iso error")
    stamps, messages = zip(*(line.split("|") for line in stream.getvalue().splitlines()), strict=True)
    assert messages == ("loud warning", "verbose debug", "loud info", "iso error")
    assert "T" in stamps[-1] and " " not in stamps[-1] and "," in stamps[0], stamps
    control.update({"log_format": "default"})
    log.error("default error")
    assert " " in stream.getvalue().splitlines()[-1].split("|")[0]


@pytest.mark.parametrize(
    ("changes", "status", "words"),
    [
        ({"log_info": True, "log_verbose_level": -1}, Status.INVALID_ARGUMENT, "log_verbose_level must be"),
        ({"log_info": True, "log_error": "yes"}, Status.INVALID_ARGUMENT, "log_error must be true or false"),
        ({"log_info": True, "log_format": "json"}, Status.INVALID_ARGUMENT, "log_format must be one of"),
        ({"log_info": True, "log_verbose": 1}, Status.INVALID_ARGUMENT, "unknown log setting 'log_verbose'"),
        ({"log_info": True, "log_file": "/etc/cron.d/x"}, Status.UNIMPLEMENTED, "cannot be changed over the network"),
    ],
)
def test_a_change_with_one_bad_setting_changes_nothing(logger, changes, status, words):
    _, control, _ = logger
    with pytest.raises(ServingError) as raised:
        control.update(changes)
    assert raised.value.status is status and words in raised.value.message
    assert control.settings.log_info is False


def test_a_client_turns_a_live_servers_info_lines_off_and_on_over_both_front_ends(start_server, digits_repo):
    server = start_server(digits_repo)
    with grpcclient.InferenceServerClient(server.url) as client:
        assert "logging" in client.get_server_metadata().extensions
        assert client.get_log_settings(as_json=True)["settings"]["log_info"] == {"bool_param": True}
        updated = client.update_log_settings({"log_info": False}, as_json=True)["settings"]
        assert updated["log_info"] == {"bool_param": False} and updated["log_verbose_level"] == {"uint32_param": 0}
        client.unload_model("digits")  # logs "now serves versions none" before it answers, when INFO is on
        assert "now serves versions none" not in server.log(), "an INFO line was written while log_info was off"
        with pytest.raises(InferenceServerException) as raised:
            client.update_log_settings({"log_file": "/tmp/elsewhere.log"})
        assert raised.value.status() == "StatusCode.UNIMPLEMENTED"
    http = httpclient.InferenceServerClient(server.http_url)
    try:
        assert http.get_log_settings()["log_info"] is False
        assert http.update_log_settings({"log_info": True, "log_format": "ISO8601"})["log_format"] == "ISO8601"
        http.load_model("digits")  # logged before it answers, as the unload was
        start, reload = [line for line in server.log().splitlines() if "now serves versions [1]" in line]
        assert " " in start.split(",")[0] and reload.split(" ")[0].count("T") == 1, reload  # then an ISO 8601 time
        with pytest.raises(InferenceServerException) as raised:
            http.update_log_settings({"log_verbose_level": "high"})
        assert raised.value.status() == "400" and "log_verbose_level must be an integer" in str(raised.value)
        http.update_log_settings({"log_verbose_level": 1})
    finally:
        http.close()
    with grpcclient.InferenceServerClient(server.url) as client:  # verbose: a line per request and per model call
        tensor = grpcclient.InferInput("image", [2, 8, 8], "UINT8")
        tensor.set_data_from_numpy(images(2))
        client.infer("digits", [tensor], request_id="seen")
        client.update_log_settings({"log_verbose_level": 0})
        client.infer("digits", [tensor], request_id="unseen")
    log = server.log()
    assert "infer 'digits' version 1 id 'seen': image UINT8 [2, 8, 8] -> probabilities [2, 10]" in log
    assert "model 'digits/1': one call for 1 request(s), 2 sample(s)" in log
    assert "'unseen'" not in log and "cygrpc" not in log, "only the server's own lines, only while verbose"


def test_tritonserver_s_log_flags_set_the_settings_the_server_starts_with(start_server, digits_repo, tmp_path):
    """--log-file, --log-verbose, --log-info, --log-format as tritonserver takes them: the log goes to the file,
    and a client reads the settings they set."""
    log_file = tmp_path / "server.log"
    flags = ["--log-file", str(log_file), "--log-verbose=1", "--log-warning=false", "--log-format", "ISO8601"]
    server = start_server(digits_repo, *flags, ready_in=log_file)
    http = httpclient.InferenceServerClient(server.http_url)
    try:
        settings = http.get_log_settings()
        assert settings == {
            "log_file": str(log_file),
            "log_info": True,
            "log_warning": False,
            "log_error": True,
            "log_verbose_level": 1,
            "log_format": "ISO8601",
        }
    finally:
        http.close()
    with grpcclient.InferenceServerClient(server.url) as client:
        tensor = grpcclient.InferInput("image", [2, 8, 8], "UINT8")
        tensor.set_data_from_numpy(images(2))
        client.infer("digits", [tensor], request_id="verbose")
    assert server.stop() == 0
    written = log_file.read_text()
    assert "infer 'digits' version 1 id 'verbose'" in written and "(ready)" in written
    assert written.splitlines()[0].split(" ")[0].count("T") == 1, "ISO 8601 times"
    assert "serving" not in server.log(), "nothing of the server's log on standard error"


def test_a_log_file_that_cannot_be_written_stops_the_server_in_one_line(digits_repo, tmp_path):
    from tests.serving.test_lifecycle import run_serving

    completed = run_serving("--repository", str(digits_repo), "--log-file", str(tmp_path / "missing" / "server.log"))
    assert completed.returncode == 2
    assert completed.stderr.strip() == (
        f"serve: error: --log-file {tmp_path / 'missing' / 'server.log'}: No such file or directory"
    )
