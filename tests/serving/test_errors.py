"""serving.errors: what an exception from a library becomes in a log line or an answer."""

import pytest

from serving.errors import first_line


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (RuntimeError("[ONNXRuntimeError] : 2 : bad input\nstack trace..."), "[ONNXRuntimeError] : 2 : bad input"),
        (ValueError(""), "ValueError"),  # a message-less exception used to raise IndexError in its own handler
        (ValueError("  \n  "), "ValueError"),
        (OSError("x" * 1000), "x" * 300),
    ],
)
def test_an_exception_is_one_short_line(error: BaseException, line: str) -> None:
    assert first_line(error) == line
