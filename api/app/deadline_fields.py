"""The two ways a request sets a deadline: the ``Cancel-After`` header (Replicate's: ``30s``, ``5m``,
``1h``, ``1h30m`` or plain seconds) and the ``deadline_seconds`` body field. Both given: the earlier
deadline wins. The rules of the durations live in ``textgen_core/deadlines.py``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Header
from pydantic import AfterValidator, Field

from api.app.errors import APIError
from textgen_core.deadlines import MAX_DEADLINE_SECONDS, earliest, parse_duration
from textgen_core.jobs import NotBool

DEADLINE_DOC = ("Seconds from submission: a job not started by then ends `expired` without running; one running "
                "then stops at its next step and ends `expired` with its text so far (finish_reason "
                "`deadline`). The `Cancel-After` header (`30s`, `5m`, `1h`) does the same; given both, the "
                "earlier wins.")

# The bounds on the number, NotBool on the field (JSON ``true`` is not one second); a bound on the
# optional field would also be applied to ``None``.
DeadlineSeconds = Annotated[Annotated[float, Field(gt=0, le=MAX_DEADLINE_SECONDS)] | None, NotBool,
                            Field(default=None, description=DEADLINE_DOC)]

CancelAfterHeader = Annotated[str | None, Header(alias="Cancel-After", max_length=64,
                                                 description="A deadline as a duration: `30s`, `5m`, `1h`, or "
                                                             "plain seconds.")]


def _window(value: str) -> str:
    parse_duration(value)  # a ValueError is a 422 naming the field
    return value


CompletionWindow = Annotated[str, AfterValidator(_window), Field(
    max_length=32, description="The time the batch has to finish, from its creation: OpenAI's `24h`, or shorter "
    "(`10m`, `1h`) or longer (up to 7 days). Items not finished by then end `expired` (running ones keep their "
    "text so far) and the batch ends `expired`, its counts saying how many.")]


def window_seconds(value: str | None) -> float | None:
    return None if value is None else parse_duration(value)


def cancel_after(value: str | None) -> float | None:
    """Seconds in a ``Cancel-After`` header; a bad value is a 400 naming the header."""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise APIError(400, f"Cancel-After: {exc}", code="invalid_value", param="Cancel-After") from exc


def deadline_seconds(header: str | None, body: float | None) -> float | None:
    """The request's deadline in seconds from now, from the header and the body field (the earlier)."""
    return earliest(cancel_after(header), body)
