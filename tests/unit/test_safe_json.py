"""The one loader of client JSON, and the guard's content-type rule, as pure functions."""

from __future__ import annotations

import pytest

from api.app.request_guard import is_json
from api.app.safe_json import BadJSON, loads


def test_depth_counts_brackets_outside_strings_only() -> None:
    assert loads(b'{"a": "[[[[[[[[[[[[", "b": [1, {"c": 2}]}', 3)["b"] == [1, {"c": 2}]
    with pytest.raises(BadJSON) as info:
        loads(b'{"a": [[[1]]]}', 3)
    assert info.value.code == "json_too_deep"
    assert loads(b'{"a": "x\\"[[[[", "b": [[1]]}', 3)["a"] == 'x"[[[['  # escaped quote inside a string


@pytest.mark.parametrize(
    ("raw", "code", "status"),
    [(b'{"x": NaN}', "invalid_number", 422), (b'{"x": -Infinity}', "invalid_number", 422),
     (b'[1e400]', "invalid_number", 422), (b'{"x": "\\ud800"}', "invalid_unicode", 422),
     (b'{"\\udc00": 1}', "invalid_unicode", 422), (b"[" * 40 + b"]" * 40, "json_too_deep", 400),
     (b"[" * 40, "invalid_json", 422),  # unterminated: malformed before it is deep
     # Far past the interpreter's recursion limit: refused, not a RecursionError.
     (b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "json_too_deep", 400),
     (b"{not json", "invalid_json", 422), (b'{"n": ' + b"9" * 5000 + b"}", "invalid_json", 422)],
)
def test_refused(raw: bytes, code: str, status: int) -> None:
    with pytest.raises(BadJSON) as info:
        loads(raw, 32)
    assert (info.value.code, info.value.status) == (code, status)


def test_malformed_json_says_where() -> None:
    with pytest.raises(BadJSON, match=r"line 2, column 7"):
        loads(b'{"a": 1,\n "b": }', 32)


@pytest.mark.parametrize("raw", [b'{"x": "\\ud83d\\ude00 caf\\u00e9 \\u0000 \\u001b"}', b'{"x": 1.5e300}'])
def test_passed_on(raw: bytes) -> None:
    assert isinstance(loads(raw, 32), dict)


@pytest.mark.parametrize(("content_type", "expected"), [
    ("", True), ("application/json", True), ("application/json; charset=utf-8", True),
    ("application/merge-patch+json", True), ("application/x-www-form-urlencoded", False), ("text/plain", False)])
def test_json_content_types(content_type: str, expected: bool) -> None:
    assert is_json(content_type) is expected
