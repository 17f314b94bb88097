"""The build block's shape, without a build: label once, one line per finished action, notes joined, result last."""

from __future__ import annotations

import pytest

from buildsys.console import Reporter, warn_once


def test_block_holds_one_line_per_finished_action_with_its_notes(capsys: pytest.CaptureFixture[str]) -> None:
    reporter = Reporter("//model_defs:toy", quiet=False)
    with reporter.action("compile"):
        pass
    reporter.note("default (1 CPU), 10 parameters")
    reporter.say("epoch 1/1     0.10s  loss 0.5000")
    with reporter.action("verify"):
        pass
    reporter.note("parity: ONNX 0")
    reporter.result("published version 1 to here")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "//model_defs:toy"
    assert lines[1].startswith("  compile ") and lines[1].endswith("s  default (1 CPU), 10 parameters")
    assert lines[2] == "  epoch 1/1     0.10s  loss 0.5000"
    assert lines[3].startswith("  verify ") and lines[3].endswith("s  parity: ONNX 0")
    assert lines[4] == "  published version 1 to here" and len(lines) == 5
    assert set(reporter.timings) == {"compile", "verify"}


def test_quiet_and_result_only_blocks_are_one_labelled_line(capsys: pytest.CaptureFixture[str]) -> None:
    quiet = Reporter("//model_defs:toy", quiet=True)
    with quiet.action("train"):
        pass
    quiet.say("epoch 1/1")
    quiet.result("published version 2 to here")
    Reporter("//model_defs:other", quiet=False).result("up to date (version 1)")
    assert capsys.readouterr().out.splitlines() == [
        "//model_defs:toy: published version 2 to here",
        "//model_defs:other: up to date (version 1)",
    ]


def test_a_warning_is_said_once(capsys: pytest.CaptureFixture[str]) -> None:
    for _ in range(3):
        warn_once("test warning for the console module")
    assert capsys.readouterr().err == "warning: test warning for the console module\n"
