"""Durations as the Cancel-After header, deadline_seconds and completion_window write them."""

from __future__ import annotations

import pytest

from api.app.deadline_fields import cancel_after, deadline_seconds
from api.app.errors import APIError
from textgen_core.deadlines import MAX_DEADLINE_SECONDS, earliest, parse_duration


@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30), ("5m", 300), ("1h", 3600), ("24h", 86400), ("1h30m", 5400), ("250ms", 0.25), ("2d", 172800),
    ("45", 45), ("2.5", 2.5), (" 10M ", 600), ("1m30s", 90),
])
def test_durations_in_replicates_and_openais_notation_are_read_as_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "5 m", "-5s", "0", "0s", "1x", "s", "5m5", "m5", "1e3", "nan",
                                  "inf", "1h-30m", "8d", "\u0662\u0664h", "\uff15m", "\u0969\u0966"])
def test_anything_else_is_refused_with_a_reason(text: str) -> None:
    with pytest.raises(ValueError, match="duration|more than zero|longer than"):
        parse_duration(text)


def test_a_bad_cancel_after_header_is_a_400_naming_the_header() -> None:
    with pytest.raises(APIError) as err:
        cancel_after("tomorrow")
    assert err.value.status == 400 and err.value.body.param == "Cancel-After"
    assert "tomorrow" in err.value.body.message
    assert cancel_after(None) is None


def test_the_earlier_of_the_header_and_the_body_field_wins() -> None:
    assert deadline_seconds("1m", 30.0) == 30.0
    assert deadline_seconds("10s", 30.0) == 10.0
    assert deadline_seconds(None, None) is None
    assert earliest(None, 5.0) == 5.0
    assert parse_duration(f"{MAX_DEADLINE_SECONDS}") == MAX_DEADLINE_SECONDS
