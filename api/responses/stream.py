"""A response's streaming events, rebuilt from its job's token stream.

The sequence is a function of the stream alone: ``response.created`` (0), ``response.in_progress``,
``response.output_item.added``, ``response.content_part.added``, one ``response.output_text.delta``
per stream entry, then ``response.output_text.done``, ``response.content_part.done``,
``response.output_item.done`` and the end (``response.completed``, ``.incomplete`` or ``.failed``;
a cancelled response ends with ``response.incomplete`` whose status is ``cancelled``, the SDK having
no event of its own for it). So every reader, live or late, numbers the same events the same way,
and ``starting_after=N`` replays exactly the events after N before going on live.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from redis.exceptions import RedisError

from api.app.state import AppState
from api.jobs.follow import BLOCK_MS
from textgen_core.jobs import JobRecord, JobStatus
from textgen_core.responses import (
    ResponseMeta,
    ResponseStatus,
    message_id,
    output_items,
    output_text,
    response_object,
    response_status,
)

END_EVENTS = {"completed": "response.completed", "incomplete": "response.incomplete",
              "cancelled": "response.incomplete", "failed": "response.failed"}
QUIET_CHECKS_EVERY = 3  # idle reads between looks at the record (a job can end without a stream end)


class _Numbered:
    """Numbers events and drops those at or before ``starting_after``."""

    def __init__(self, starting_after: int):
        self.after = starting_after
        self.seq = -1

    def __call__(self, kind: str, **fields: Any) -> dict[str, Any] | None:
        self.seq += 1
        if self.seq <= self.after:
            return None
        return {"type": kind, "sequence_number": self.seq, **fields}


async def response_events(state: AppState, job: JobRecord, meta: ResponseMeta, owner: str, *,
                          starting_after: int = -1) -> AsyncIterator[dict[str, Any]]:
    """Every event of the response from the start (those after ``starting_after``), until it ends."""
    number = _Numbered(starting_after)
    part = {"output_index": 0, "item_id": message_id(job.id), "content_index": 0}
    opening: ResponseStatus = "queued" if job.status is JobStatus.queued else "in_progress"
    pending = [number("response.created", response=response_object(job, meta, status=opening))]
    started = False

    def start() -> list[dict[str, Any] | None]:
        return [
            number("response.in_progress", response=response_object(job, meta, status="in_progress")),
            number("response.output_item.added", output_index=0,
                   item=output_items(job, "", done=False)[0] | {"content": []}),
            number("response.content_part.added", **part, part=output_text("")),
        ]

    if job.status is JobStatus.running:
        pending += start()
        started = True
    for event in pending:
        if event is not None:
            yield event
    key, last, quiet = state.keys.tokens(job.id), "0-0", 0
    ended = False
    while not ended:
        batches = await state.redis.xread({key: last}, count=256, block=BLOCK_MS)
        entries = batches[0][1] if batches else []
        if not entries:
            quiet += 1
            if quiet % QUIET_CHECKS_EVERY and not job.status.terminal:
                continue
            current = await state.store.get(job.id, owner)
            if current is None:
                return  # deleted meanwhile: nothing more to tell
            job = current
            if job.status is JobStatus.queued:
                continue
            if not started:
                started = True
                for event in start():
                    if event is not None:
                        yield event
            if not job.status.terminal:
                continue
            # Ended without an end entry (failed at claim), or the stream expired: finish from the record.
            if last == "0-0" and job.output:
                event = number("response.output_text.delta", **part, delta=job.output, logprobs=[])
                if event is not None:
                    yield event
            break
        for entry_id, fields in entries:
            last = entry_id
            if not started:
                started = True
                for event in start():
                    if event is not None:
                        yield event
            if "d" in fields:
                event = number("response.output_text.delta", **part, delta=fields["d"], logprobs=[])
                if event is not None:
                    yield event
            elif "end" in fields:
                ended = True
                break
    final = await state.store.get(job.id, owner) or job
    text = final.output or ""
    status = response_status(final)
    for event in (
        number("response.output_text.done", **part, text=text, logprobs=[]),
        number("response.content_part.done", **part, part=output_text(text)),
        number("response.output_item.done", output_index=0, item=output_items(final)[0]),
        number(END_EVENTS.get(status, "response.failed"), response=response_object(final, meta)),
    ):
        if event is not None:
            yield event


def sse(event: dict[str, Any]) -> dict[str, str]:
    """One event as ``event: <type>`` / ``data: <json>``, as OpenAI sends them."""
    return {"event": event["type"], "data": json.dumps(event, separators=(",", ":"))}


def error_event(exc: RedisError) -> dict[str, str]:
    """The stream's end when Redis went away; the SDKs raise the ``error`` it carries."""
    error = {"message": f"stream interrupted: {exc}", "type": "service_unavailable", "code": "store_unavailable"}
    return {"event": "error", "data": json.dumps({"type": "error", "error": error})}
