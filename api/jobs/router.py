"""``/v1/jobs``: submit, read (poll or long-poll), stream, cancel."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Response
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sse_starlette import EventSourceResponse, ServerSentEvent

from api.app.deadline_fields import CancelAfterHeader, cancel_after, deadline_seconds
from api.app.deps import HubDep, KeysDep, OwnerDep, RedisDep, SettingsDep, StateDep, StoreDep
from api.app.errors import CREATE_RESPONSES, ERROR_RESPONSES, APIError, not_found
from api.app.idempotency import IdempotencyDep
from api.app.metrics import JOBS_SUBMITTED
from api.app.model_check import model_not_found
from api.app.priority_check import check_priority
from api.app.state import AppState
from api.jobs.follow import BLOCK_MS
from api.jobs.refused import withdraw_later
from api.jobs.schemas import JobCreate, JobList, JobOut
from api.webhooks.service import check_webhook_url
from textgen_core import metrics
from textgen_core.deadlines import deadline_at, track
from textgen_core.job_index import AsyncJobIndex, CursorNotFound
from textgen_core.jobs import ChatMessage, JobInput, JobRecord, JobStatus
from textgen_core.keys import Keys
from textgen_core.settings import Settings
from textgen_core.store import AsyncJobStore

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=ERROR_RESPONSES)


def job_index(redis: Redis, keys: Keys, settings: Settings) -> AsyncJobIndex:
    return AsyncJobIndex(redis, keys, ttl=settings.job_ttl_seconds)


async def _owned(store: AsyncJobStore, job_id: str, owner: str) -> JobRecord:
    job = await store.get(job_id, owner)
    if job is None:
        raise not_found("job", "job_id")
    return job


async def submit(state: AppState, body: JobCreate, owner: str, lane: str = "interactive",
                 raw: bool = False, response: Response | None = None, *, job_id: str | None = None,
                 history: list[ChatMessage] | None = None, cancel_after: str | None = None) -> JobRecord:
    """Validate the model and the prompt's length, take from the key's token budget, attach
    conversation history, store the job under the key's queued-jobs cap, then enqueue it.

    ``raw``: continue the prompt as plain text, without mode or chat template (OpenAI completions).
    ``job_id`` and ``history``: the id and history of a job that is a response (``api/responses``).
    ``cancel_after``: the ``Cancel-After`` header, a deadline as ``body.deadline_seconds`` is one.
    """
    deadline = deadline_seconds(cancel_after, body.deadline_seconds)
    model = body.model or state.settings.default_model
    if state.settings.model(model) is None:
        raise model_not_found(state.settings, model)
    check_priority(state.settings, owner, body.priority)
    if body.webhook:
        await check_webhook_url(state, owner, body.webhook)
    job_input = JobInput(prompt=body.prompt, messages=body.messages, raw=raw)
    if history is None and body.conversation_id:
        history = await state.store.history(owner, body.conversation_id)
    state.prompts.check(model, body.mode, job_input, body.max_tokens, "prompt" if body.prompt else "messages",
                        history)
    await state.limits.take_tokens(owner, body.max_tokens)
    try:
        job = body.to_record(owner=owner, model=model, history=history or [])
        if job_id is not None:
            job.id = job_id
        job.lane = lane
        job.input.raw = raw
        job.deadline_at = deadline_at(job.timings.created_at, deadline)
        hit = False
        if state.cache is not None:
            state.cache.mark(job, body.cache)
            hit = bool(await state.cache.answer([job]))  # a hit: finished already, nothing to queue
        if not hit:
            await _store_and_enqueue(state, job, model, lane)
    except BaseException:  # not accepted: the budget it took is given back
        await _refund(state, owner, body.max_tokens)
        raise
    if hit:  # it generates nothing, so it costs no budget
        await _refund(state, owner, body.max_tokens)
        log.info("job answered from cache", extra={"job_id": job.id, "model": model, "owner": owner})
        await job_index(state.redis, state.keys, state.settings).add([job])
        return await state.store.get(job.id, owner) or job
    try:  # accepted and queued: a failed index write only leaves it out of GET /v1/jobs
        await job_index(state.redis, state.keys, state.settings).add([job])
    except RedisError as exc:
        log.warning("job %s not indexed for listing: %s", job.id, exc)
    if job.deadline_at is not None:  # a failed write leaves its deadline to the claim, which refuses it too
        try:
            async with state.redis.pipeline(transaction=False) as pipe:
                track(pipe, state.keys, {job.id: job.deadline_at}, state.settings.job_ttl_seconds)
                await pipe.execute()
        except RedisError as exc:
            log.warning("deadline of job %s not tracked for the sweeper: %s", job.id, exc)
    queue = state.keys.queue(model, lane)
    JOBS_SUBMITTED.labels(model, queue, lane, str(job.priority)).inc()
    log.info("job accepted", extra={"job_id": job.id, "model": model, "queue": queue, "owner": owner})
    if response is not None:
        try:  # the job is accepted now: a failed header read must not turn into an error for it
            await state.limits.token_headers(owner, response)
        except RedisError as exc:
            log.warning("token budget headers of job %s not read: %s", job.id, exc)
    return job


async def _store_and_enqueue(state: AppState, job: JobRecord, model: str, lane: str) -> None:
    """Store the job under the key's queued-jobs cap (429 when full), then send its message."""
    cap = state.settings.max_queued_jobs_per_key
    try:
        stored, _ = await state.store.create(job, max_pending=cap)
    except RedisError:  # a 503 (api.app.errors); Redis may still run the create later, so take it back then
        withdraw_later(state.store, job.id)
        raise
    if not stored:
        raise APIError(429, f"this API key already has {cap} unfinished jobs; wait for some to finish",
                       code="too_many_queued_jobs", headers={"Retry-After": "5", "x-ratelimit-limit-jobs": str(cap),
                                                            "x-ratelimit-remaining-jobs": "0"})
    try:
        await state.queue.enqueue(job.id, model, lane, job.priority)
    except Exception as exc:  # not enqueued means not accepted: leave no orphan record behind
        log.warning("enqueue of %s failed: %s", job.id, exc)
        await state.store.delete(job.id)
        raise APIError(503, "the job queue is unavailable; retry shortly", code="queue_unavailable",
                       headers={"Retry-After": "2"}) from exc


async def _refund(state: AppState, owner: str, tokens: int) -> None:
    try:
        await state.limits.refund_tokens(owner, tokens)
    except RedisError as exc:  # the refusal itself is what the client must hear
        log.warning("token budget of a job not accepted was not given back: %s", exc)


@router.post("", status_code=202, response_model=JobOut, summary="Submit a generation job",
             responses=CREATE_RESPONSES)
async def create_job(body: JobCreate, owner: OwnerDep, state: StateDep, response: Response,
                     idem: IdempotencyDep, cancel_after_header: CancelAfterHeader = None) -> JobOut:
    cancel_after(cancel_after_header)  # a bad header is a 400 before anything is stored

    async def create() -> JobOut:
        return JobOut.of(await submit(state, body, owner, response=response, cancel_after=cancel_after_header))

    out = await idem.run(body, create, JobOut)
    response.headers["Location"] = f"/v1/jobs/{out.id}"
    return out


@router.get("", response_model=JobList, summary="List your jobs, newest first",
            description="Cursor paging: pass the page's `last_id` as `after` while `has_more` is true. A page "
                        "reads at most 1000 jobs, so a filter that matches few may return fewer than `limit` "
                        "with `has_more` true; `last_id` then names the last job it looked at.")
async def list_jobs(
    owner: OwnerDep,
    redis: RedisDep,
    keys: KeysDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=100, description="Jobs per page.")] = 20,
    after: Annotated[str | None, Query(description="A job id (`last_id` of the previous page): list the jobs "
                                       "after it.")] = None,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this state.")] = None,
    lane: Annotated[Literal["interactive", "bulk"] | None, Query(
        description="interactive (single jobs) or bulk (batch items).")] = None,
    batch_id: Annotated[str | None, Query(description="Only the items of this batch.")] = None,
) -> JobList:
    def wanted(job: JobRecord) -> bool:
        return ((status is None or job.status is status) and (lane is None or job.lane == lane)
                and (batch_id is None or job.batch_id == batch_id))

    try:
        jobs, more, cursor = await job_index(redis, keys, settings).page(owner, limit, after, wanted)
    except CursorNotFound as exc:
        raise APIError(400, f"after: no job {after!r} in your list", code="invalid_cursor", param="after") from exc
    data = [JobOut.of(job) for job in jobs]
    return JobList(data=data, first_id=data[0].id if data else None, last_id=cursor, has_more=more)


@router.get("/{job_id}", response_model=JobOut, summary="Read a job; ?wait=N holds until it ends")
async def get_job(
    job_id: str,
    owner: OwnerDep,
    store: StoreDep,
    hub: HubDep,
    settings: SettingsDep,
    wait: Annotated[float, Query(ge=0, description="Seconds to hold the request until the job ends "
                                 "(capped at the server's maximum, 60 by default).")] = 0,
) -> JobOut:
    await _owned(store, job_id, owner)
    timeout = min(wait, settings.max_wait_seconds)
    job = await hub.wait(job_id, timeout, lambda: store.get(job_id, owner))
    if job is None:
        raise not_found("job", "job_id")
    return JobOut.of(job)


@router.post("/{job_id}/cancel", response_model=JobOut, summary="Cancel a queued or running job")
async def cancel_job(job_id: str, owner: OwnerDep, store: StoreDep, keys: KeysDep) -> JobOut:
    before = await store.get(job_id, owner)
    outcome = await store.cancel(job_id, owner)
    if outcome == "missing":
        raise not_found("job", "job_id")
    if outcome in ("succeeded", "failed", "expired"):
        raise APIError(409, f"job already {outcome}; nothing to cancel", code="job_not_cancelable",
                       param="job_id")
    job = await _owned(store, job_id, owner)
    if outcome == "canceled" and before is not None and before.status is JobStatus.queued:
        # Ended here, before any worker took it: the API is the one to count it.
        queue = keys.queue(job.model, job.lane)
        metrics.JOBS_FINISHED.labels(job.model, queue, "canceled").inc()
        log.info("job canceled while queued", extra={"job_id": job.id, "model": job.model, "queue": queue})
    return JobOut.of(job)


@router.get(
    "/{job_id}/stream",
    summary="Stream the job's text as Server-Sent Events",
    description="Events: `delta` ({\"text\"}) for each piece of output from the start, then `done` with "
                "the final job record. A subscriber that arrives late still gets every delta. Every event "
                "has an `id`; a client that reconnects with `Last-Event-ID` (or `?last_event_id=`) gets "
                "only the events after it.",
    response_class=EventSourceResponse,
)
async def stream_job(
    job_id: str,
    owner: OwnerDep,
    store: StoreDep,
    redis: RedisDep,
    keys: KeysDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=64,
                                                description="Resume after this event id.")] = None,
    after: Annotated[str | None, Query(alias="last_event_id", max_length=64,
                                       description="As the Last-Event-ID header, for clients that "
                                                   "cannot set headers.")] = None,
) -> EventSourceResponse:
    await _owned(store, job_id, owner)
    resume = last_event_id or after
    if resume is not None and not _is_event_id(resume):
        raise APIError(400, "Last-Event-ID must be an event id this stream sent (like '1717171717171-0')",
                       code="invalid_value", param="Last-Event-ID" if last_event_id else "last_event_id")
    return EventSourceResponse(_events(store, redis, keys, job_id, owner, resume or "0-0"), ping=15)


# Event ids are the token stream's entry ids, so a resumed read starts right after the last one seen.
_EVENT_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
_STREAM_ID_MAX = 2**64 - 1  # each half of a Redis stream id is an unsigned 64-bit number


def _is_event_id(value: str) -> bool:
    return _EVENT_ID.fullmatch(value) is not None and all(int(p) <= _STREAM_ID_MAX for p in value.split("-"))


async def _events(store: AsyncJobStore, redis: Redis, keys: Keys, job_id: str, owner: str,
                  last: str) -> AsyncIterator[ServerSentEvent]:
    key = keys.tokens(job_id)
    while True:
        try:
            batches = await redis.xread({key: last}, count=256, block=BLOCK_MS)
        except RedisError as exc:
            yield ServerSentEvent(event="error", data=json.dumps({"message": f"stream interrupted: {exc}"}))
            return
        entries = batches[0][1] if batches else []
        for entry_id, fields in entries:
            last = entry_id
            if "d" in fields:
                yield ServerSentEvent(event="delta", data=json.dumps({"text": fields["d"]}), id=entry_id)
            elif "end" in fields:
                break
        else:
            if entries:
                continue
            job = await store.get(job_id, owner)  # quiet for a while: did it end without a stream?
            if job is not None and not job.status.terminal:
                continue
        job = await store.get(job_id, owner)
        if job is not None:  # its id is the end entry's: a client resuming after it gets only ``done`` again
            yield ServerSentEvent(event="done", data=JobOut.of(job).model_dump_json(), id=last)
        return
