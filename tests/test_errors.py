"""buildsys.errors: what a library's exception contributes to a one-line error."""

import pytest

from buildsys.errors import one_line


@pytest.mark.parametrize(
    ("error", "limit", "line"),
    [
        (RuntimeError("[ONNXRuntimeError] : 2 : bad feed\nmore"), 300, "[ONNXRuntimeError] : 2 : bad feed"),
        (ValueError(""), 300, "ValueError"),  # `str(error).splitlines()[0]` raised IndexError for these
        (OSError("x" * 1000), 160, "x" * 160),
    ],
)
def test_an_exception_is_one_short_line(error: BaseException, limit: int, line: str) -> None:
    assert one_line(error, limit) == line
