"""One OpenAI-style completion request while its jobs run: wait for them (or stream their
text as OpenAI's SSE chunks), and cancel whatever is unfinished when the client leaves.

The API never runs the model: it submitted one job per choice and only reads their token
streams and records from Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
from fastapi import Request
from redis.exceptions import RedisError

from api.app.errors import APIError, ErrorBody
from api.app.events import RECHECK_SECONDS
from api.app.slots import RequestSlots
from api.app.state import AppState
from api.jobs.follow import Delta, Ended, follow
from api.openai.protocol import openai_finish_reason, total_usage
from textgen_core.jobs import JobRecord, JobStatus

log = logging.getLogger(__name__)

Kind = Literal["chat", "text"]
DISCONNECT_CHECK_SECONDS = 0.5


class ClientGone(Exception):
    """The client closed the connection before its completion was done."""


@dataclass
class CompletionSession:
    state: AppState
    owner: str
    kind: Kind
    model: str
    jobs: list[JobRecord]
    per_prompt: int  # choices per prompt (n)
    include_usage: bool
    slots: RequestSlots
    slot: str
    created: int = field(default_factory=lambda: int(time.time()))
    _ended: dict[int, JobRecord | None] = field(default_factory=dict)
    _closed: bool = False

    @property
    def id(self) -> str:
        stem = self.jobs[0].id.removeprefix("job_")
        return f"chatcmpl-{stem}" if self.kind == "chat" else f"cmpl-{stem}"

    @property
    def job_ids(self) -> list[str]:
        return [job.id for job in self.jobs]

    async def close(self) -> None:
        """Cancel the jobs that have not ended and give the slot back; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            for i, job in enumerate(self.jobs):
                if i not in self._ended:
                    try:
                        await self.state.store.cancel(job.id, self.owner)
                    except RedisError as exc:
                        log.warning("could not cancel %s: %s", job.id, exc)
            try:
                await self.slots.release(self.owner, self.slot)
            except RedisError as exc:
                log.warning("could not release a request slot: %s", exc)

    # -- waiting for the whole answer ---------------------------------------------------

    async def collect(self, request: Request) -> list[JobRecord]:
        """Every job's final record; raises :class:`ClientGone` if the client leaves first.

        It waits on the end-of-job events (``EventHub``), not on the token streams: a waiter that
        read every delta woke once per token per request (64 requests at once: 4,000 reads for
        64 answers), CPU the engine needs on a small machine. A job is read when its event comes,
        and every ``RECHECK_SECONDS`` in case one was missed (a job can end without one: it expired)."""
        pending = dict(zip(self.job_ids, range(len(self.jobs)), strict=True))
        with self.state.hub.watching(pending) as watch:
            due, recheck_at = set(pending), time.monotonic() + RECHECK_SECONDS
            while True:
                for job_id in due & pending.keys():
                    job = await self.state.store.get(job_id, self.owner)
                    if job is None or job.status.terminal:
                        self._ended[pending.pop(job_id)] = job
                if not pending:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(watch.event.wait(), DISCONNECT_CHECK_SECONDS)
                due = watch.take()
                if time.monotonic() >= recheck_at:
                    due, recheck_at = set(pending), time.monotonic() + RECHECK_SECONDS
                if not due and await request.is_disconnected():
                    raise ClientGone
        records = [self._ended.get(i) for i in range(len(self.jobs))]
        for record in records:
            failure = failure_of(record, self.kind)
            if failure is not None:
                raise APIError(failure[0], failure[1].message, code=failure[1].code, param=failure[1].param,
                               type=failure[1].type)
        return [r for r in records if r is not None]

    def usage(self) -> dict[str, int]:
        return total_usage([self._ended.get(i) for i in range(len(self.jobs))], self.per_prompt).model_dump()

    # -- streaming ----------------------------------------------------------------------

    def _chunk(self, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> str:
        body: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.kind == "chat" else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.include_usage:
            body["usage"] = usage
        return json.dumps(body, separators=(",", ":"))

    def _choice(self, index: int, text: str | None, finish_reason: str | None = None,
                role: bool = False) -> dict[str, Any]:
        if self.kind == "chat":
            delta: dict[str, Any] = {"role": "assistant", "content": text or ""} if role else (
                {"content": text} if text is not None else {})
            return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish_reason}

    async def sse(self) -> AsyncIterator[dict[str, str]]:
        """OpenAI's stream: ``data: <chunk>`` events, ending with ``data: [DONE]``.

        A job that fails ends the stream with ``data: {"error": ...}`` (the SDKs raise it).
        """
        try:
            if self.kind == "chat":
                for i in range(len(self.jobs)):
                    yield {"data": self._chunk([self._choice(i, "", role=True)])}
            async for event in follow(self.state, self.job_ids, self.owner):
                if isinstance(event, Delta):
                    yield {"data": self._chunk([self._choice(event.index, event.text)])}
                elif isinstance(event, Ended):
                    self._ended[event.index] = event.job
                    failure = failure_of(event.job, self.kind)
                    if failure is not None:
                        yield {"data": json.dumps({"error": failure[1].model_dump()})}
                        yield {"data": "[DONE]"}
                        return
                    assert event.job is not None
                    reason = openai_finish_reason(event.job.finish_reason)
                    yield {"data": self._chunk([self._choice(event.index, None, reason)])}
            if self.include_usage:
                yield {"data": self._chunk([], self.usage())}
            yield {"data": "[DONE]"}
        finally:
            await self.close()


def failure_of(job: JobRecord | None, kind: Kind) -> tuple[int, ErrorBody] | None:
    """The HTTP status and error a failed (or vanished) job turns into; None if it did not fail."""
    if job is None:
        return 500, ErrorBody(message="the job record expired before it could be read", type="server_error",
                              code="job_missing")
    if job.status is not JobStatus.failed:
        return None
    error = job.error
    if error is not None and error.type == "prompt_too_long":
        return 400, ErrorBody(message=error.message, type="invalid_request_error", code="context_length_exceeded",
                              param="messages" if kind == "chat" else "prompt")
    message = error.message if error else "generation failed"
    return 500, ErrorBody(message=f"generation failed: {message}", type="server_error", code="generation_failed")
