"""``POST /v1/jobs/{id}/retry``: a failed job (a dead letter) gets a new attempt under the same id."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from redis.exceptions import RedisError

from api.app.deps import OwnerDep, StateDep
from api.app.errors import ERROR_RESPONSES, APIError, not_found
from api.app.metrics import JOBS_RETRIED
from api.app.state import AppState
from api.jobs.schemas import JobOut
from textgen_core.dead_letters import AsyncDeadLetters
from textgen_core.jobs import JobStatus

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=ERROR_RESPONSES)


@router.post("/{job_id}/retry", response_model=JobOut, summary="Retry a failed job under the same id",
             description="Only a `failed` job is retried (409 otherwise, also for the second of two retries "
                         "at once: one new attempt is made). Like a new job, it takes its `max_tokens` from the "
                         "key's tokens per minute and counts among the key's unfinished jobs (429 when either is "
                         "spent). It goes back to `queued` with its error, output, attempt counter, deadline and "
                         "token stream cleared, and runs again. Failed batch items are not retried on their own "
                         "(409).")
async def retry_job(job_id: str, owner: OwnerDep, state: StateDep) -> JobOut:
    before = await state.store.get(job_id, owner)
    if before is None:
        raise not_found("job", "job_id")
    # A new attempt generates anew: it takes from the key's token budget as a new job does, and gives
    # it back when the retry is refused. A job that is not failed takes nothing (the script says 409).
    tokens = before.params.max_tokens if before.status is JobStatus.failed and not before.batch_id else 0
    if tokens:
        await state.limits.take_tokens(owner, tokens)
    cap = state.settings.max_queued_jobs_per_key
    letters = AsyncDeadLetters(state.redis, state.keys, lease_seconds=state.settings.lease_seconds,
                               ttl=state.settings.job_ttl_seconds, max_pending=cap)
    try:
        outcome = await letters.retry(job_id, owner)
    except BaseException:
        if tokens:
            await _give_back(state, owner, tokens)
        raise
    if outcome != "retried" and tokens:
        await _give_back(state, owner, tokens)
    if outcome == "missing":
        raise not_found("job", "job_id")
    if outcome == "full":  # a retry is new work: it meets the cap a new job meets
        raise APIError(429, f"this API key already has {cap} unfinished jobs; wait for some to finish",
                       code="too_many_queued_jobs", headers={"Retry-After": "5", "x-ratelimit-limit-jobs": str(cap),
                                                            "x-ratelimit-remaining-jobs": "0"})
    if outcome == "batch_item":
        raise APIError(409, "a batch item is not retried on its own; submit its request again",
                       code="job_not_retryable", param="job_id")
    if outcome != "retried":
        raise APIError(409, f"only a failed job can be retried; this one is {outcome}", code="job_not_failed",
                       param="job_id")
    job = await state.store.get(job_id, owner)
    if job is None:  # expired between the two calls
        raise not_found("job", "job_id")
    try:
        await state.queue.enqueue(job.id, job.model, job.lane, job.priority)
    except Exception as exc:  # queued with a lease no task holds: a worker's reaper sends it when it lapses
        log.warning("retry of %s not enqueued now (a reaper re-sends it): %s", job.id, exc)
    JOBS_RETRIED.labels(job.model, state.keys.queue(job.model, job.lane)).inc()
    log.info("job retried", extra={"job_id": job.id, "model": job.model, "owner": owner})
    return JobOut.of(job)


async def _give_back(state: AppState, owner: str, tokens: int) -> None:
    try:
        await state.limits.refund_tokens(owner, tokens)
    except RedisError as exc:  # the refusal itself is what the client must hear
        log.warning("token budget of a refused retry was not given back: %s", exc)
