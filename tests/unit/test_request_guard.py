"""The request guard's JSON checks, as pure functions."""

from __future__ import annotations

import pytest

from api.request_guard import BadJSON, check_json, json_depth_exceeds


def test_depth_counts_brackets_outside_strings_only() -> None:
    assert not json_depth_exceeds(b'{"a": "[[[[[[[[[[[[", "b": [1, {"c": 2}]}', 3)
    assert json_depth_exceeds(b'{"a": [[[1]]]}', 3)
    assert not json_depth_exceeds(b'{"a": "x\\"[[[[", "b": [[1]]}', 3)  # escaped quote inside a string


@pytest.mark.parametrize(
    ("raw", "code"),
    [(b'{"x": NaN}', "invalid_number"), (b'{"x": -Infinity}', "invalid_number"), (b'[1e400]', "invalid_number"),
     (b'{"x": "\\ud800"}', "invalid_unicode"), (b'{"\\udc00": 1}', "invalid_unicode"), (b"[" * 40, "json_too_deep")],
)
def test_refused(raw: bytes, code: str) -> None:
    with pytest.raises(BadJSON) as info:
        check_json(raw, 32)
    assert info.value.code == code


@pytest.mark.parametrize("raw", [
    b'{"x": "\\ud83d\\ude00 caf\\u00e9 \\u0000 \\u001b"}', b'{"x": 1.5e300}', b"{not json"])
def test_passed_on(raw: bytes) -> None:
    check_json(raw, 32)  # valid text, or malformed JSON left to the route's own 4xx
