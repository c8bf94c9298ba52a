"""What ``/v1/responses`` does, over the job pipeline: a response is submitted as a job (with a
``resp_`` id), read, followed, canceled and deleted as one. The API never runs the model."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi import Request, Response
from pydantic import ValidationError
from redis.exceptions import RedisError

from api.app.errors import APIError
from api.app.slots import RequestSlots
from api.app.state import AppState
from api.jobs.follow import Ended, follow
from api.jobs.router import submit
from api.responses.protocol import ResponseCreate, input_messages
from textgen_core import metrics
from textgen_core.jobs import ChatMessage, JobRecord, JobStatus
from textgen_core.responses import (
    META_FIELD,
    ResponseMeta,
    history_after,
    is_response,
    new_response_id,
    response_status,
)

log = logging.getLogger(__name__)

DISCONNECT_CHECK_SECONDS = 0.5
CANCEL_WAIT_SECONDS = 10.0  # how long a cancel waits for a running response to stop


def not_found() -> APIError:
    return APIError(404, "response not found", code="response_not_found", param="response_id")


async def read(state: AppState, response_id: str, owner: str) -> tuple[JobRecord, ResponseMeta]:
    """The response's job and its protocol fields; 404 for another key's (or no such) response."""
    job = await state.store.get(response_id, owner) if is_response(response_id) else None
    if job is None:
        raise not_found()
    return job, await meta_of(state, response_id)


async def meta_of(state: AppState, response_id: str) -> ResponseMeta:
    raw = await state.redis.hget(state.keys.job(response_id), META_FIELD)
    return ResponseMeta.model_validate_json(raw) if raw else ResponseMeta()


async def _history(state: AppState, owner: str, previous_id: str | None) -> list[ChatMessage] | None:
    if previous_id is None:
        return None
    previous = await state.store.get(previous_id, owner) if is_response(previous_id) else None
    if previous is None:
        raise APIError(404, f"previous response '{previous_id}' not found", code="previous_response_not_found",
                       param="previous_response_id")
    if not previous.status.terminal:
        raise APIError(409, f"previous response '{previous_id}' has not finished yet; wait for it",
                       code="previous_response_in_progress", param="previous_response_id")
    return history_after(previous, state.settings.history_max_turns)


@dataclass
class Held:
    """A request that holds its connection while its response runs (not background): it took one of
    the key's OpenAI request slots, and cancels its response if the client leaves first."""

    state: AppState
    owner: str
    job: JobRecord
    meta: ResponseMeta
    slots: RequestSlots
    slot: str
    ended: bool = False
    closed: bool = False

    async def close(self) -> None:
        """Cancel the response if it has not ended, give the slot back, delete it if not stored.
        Safe to call twice (a stream's end and the response's background task both call it)."""
        if self.closed:
            return
        self.closed = True
        with anyio.CancelScope(shield=True):
            try:
                if not self.ended:
                    await self.state.store.cancel(self.job.id, self.owner)
                await self.slots.release(self.owner, self.slot)
                if not self.meta.store and self.ended:
                    await delete(self.state, self.job.id)
            except RedisError as exc:
                log.warning("could not close response %s: %s", self.job.id, exc)

    async def wait(self, request: Request) -> JobRecord | None:
        """The final record, or None if the client left first."""
        checked = time.monotonic()
        async for event in follow(self.state, [self.job.id], self.owner):
            if isinstance(event, Ended):
                self.ended = True
                return event.job
            if time.monotonic() - checked >= DISCONNECT_CHECK_SECONDS:
                checked = time.monotonic()
                if await request.is_disconnected():
                    return None
        return None



async def create(state: AppState, body: ResponseCreate, owner: str, response: Response,
                 cancel_after: str | None = None) -> tuple[JobRecord, ResponseMeta, Held | None]:
    """Submit the response's job. Unless it is a background response, take a request slot and make
    sure a worker serves the model first (a held request must not wait on nobody)."""
    settings = state.settings
    messages = input_messages(body.input)
    model = body.model or settings.default_model
    if settings.model(model) is None:
        raise APIError(404, f"The model '{model}' does not exist", code="model_not_found", param="model")
    history = await _history(state, owner, body.previous_response_id)
    try:
        job_create = body.to_job(messages)
    except ValidationError as exc:  # passed the request's own checks but not the job's
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise APIError(400, f"{param}: {first['msg']}" if param else first["msg"], code="invalid_value",
                       param=param) from exc
    meta = ResponseMeta(instructions=body.instructions, previous_response_id=body.previous_response_id,
                        background=body.background, store=body.store)
    slots = slot = None
    if not body.background:
        slots = RequestSlots(state.redis, state.keys, limit=settings.openai_max_concurrent_per_key,
                             lease_seconds=int(settings.generation_time_limit_seconds * 2))
        slot = await slots.acquire(owner)
        if slot is None:
            raise APIError(429, f"too many open requests for this API key (limit "
                           f"{settings.openai_max_concurrent_per_key}); retry when one has finished, or use "
                           "background=true", code="rate_limit_exceeded", headers={"Retry-After": "1"})
    try:
        if slots is not None and not await state.fleet.wait_for_worker(model, settings.openai_worker_wait_seconds):
            raise APIError(503, f"no worker is serving the model '{model}' right now; retry shortly, or use "
                           "background=true", code="model_unavailable", headers={"Retry-After": "5"})
        job = await submit(state, job_create, owner, response=response, job_id=new_response_id(), history=history,
                           cancel_after=cancel_after)
        await state.redis.hset(state.keys.job(job.id), META_FIELD, meta.model_dump_json())
    except BaseException:
        if slots is not None and slot is not None:
            with anyio.CancelScope(shield=True):
                await slots.release(owner, slot)
        raise
    held = Held(state, owner, job, meta, slots, slot) if slots is not None and slot is not None else None
    return job, meta, held


async def cancel(state: AppState, response_id: str, owner: str) -> tuple[JobRecord, ResponseMeta]:
    """Cancel a queued or running response and wait (briefly) for it to stop; a cancelled one is
    returned as it is; one that ended otherwise is a 409."""
    before, meta = await read(state, response_id, owner)
    outcome = await state.store.cancel(response_id, owner)
    if outcome in ("succeeded", "failed", "expired"):
        raise APIError(409, f"the response already ended ({outcome}); nothing to cancel",
                       code="response_not_cancelable", param="response_id")
    if outcome == "canceled" and before.status is JobStatus.queued:
        queue = state.keys.queue(before.model, before.lane)  # ended here, before any worker: count it here
        metrics.JOBS_FINISHED.labels(before.model, queue, "canceled").inc()
    job = await state.hub.wait(response_id, CANCEL_WAIT_SECONDS, lambda: state.store.get(response_id, owner))
    if job is None:
        raise not_found()
    return job, meta


async def delete(state: AppState, response_id: str) -> None:
    """Remove an ended response: its record, token stream and webhook delivery records."""
    await state.redis.delete(state.keys.job(response_id), state.keys.tokens(response_id),
                             state.keys.webhook_deliveries(response_id))


async def delete_owned(state: AppState, response_id: str, owner: str) -> dict[str, Any]:
    """Delete an ended response. One still queued or running is a 409: deleting it would leave its
    job's worker and the key's unfinished-jobs count without a record, so it is cancelled first."""
    job, _ = await read(state, response_id, owner)
    if not job.status.terminal:
        raise APIError(409, f"the response is {response_status(job)}; cancel it (or wait for it to end) first",
                       code="response_in_progress", param="response_id")
    await delete(state, response_id)
    return {"id": response_id, "object": "response", "deleted": True}
