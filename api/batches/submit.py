"""Accepting a batch: validate every item first (so a bad line is a 4xx and nothing is
written), then write items and enqueue them chunk by chunk on the bulk lane.

Items are enqueued as one small ``textgen.batch_dispatch`` message per chunk; a worker turns
each into the chunk's item messages. The API's work and memory stay flat in the batch size.

A batch counts against limits of its own, never its key's interactive ones (a backlog of bulk
work must not refuse the key's interactive jobs): each item is one unfinished batch item under
``max_queued_batch_items_per_key`` until it ends, and its ``max_tokens`` counts against
``batch_tokens_per_day``, all at once when the batch is accepted. A batch that does not fit now
is a 429; one that could never fit (more items than the cap, more tokens than the whole budget)
is a 413.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from itertools import islice

from anyio import to_thread
from redis.exceptions import RedisError

from api.app.deadline_fields import window_seconds
from api.app.errors import APIError
from api.app.metrics import JOBS_SUBMITTED
from api.app.model_check import model_not_found
from api.app.priority_check import check_priority
from api.app.state import AppState, batch_store
from api.batches.input import BatchInputError
from api.jobs.refused import remove_batch_later
from textgen_core.batch_store import AsyncBatchStore
from textgen_core.batches import BatchRecord, ItemSpec, new_batch_id
from textgen_core.deadlines import deadline_at, earliest
from textgen_core.dispatch import Chunk, record
from textgen_core.jobs import JobRecord
from textgen_core.modes import Mode

log = logging.getLogger(__name__)

ItemSource = Callable[[], Iterator[tuple[int, str | None, ItemSpec]]]


def _too_many(limit: int) -> APIError:
    return APIError(413, f"a batch holds at most {limit:,} items; split the input into smaller batches",
                    code="too_many_items", param="items")


def _check(source: ItemSource, limit: int, default_model: str, served: Callable[[str], bool],
           what: str) -> tuple[int, str, int]:
    """Validate every item: count, unique custom_ids, one served model. Returns (count, model,
    the sum of the items' max_tokens)."""
    seen: set[str] = set()
    model: str | None = None
    count = tokens = 0
    try:
        for line, line_model, spec in source():
            count += 1
            tokens += spec.params.max_tokens
            if count > limit:
                raise _too_many(limit)
            if spec.custom_id in seen:
                raise BatchInputError(line, f"custom_id {spec.custom_id!r} appears more than once")
            seen.add(spec.custom_id)
            wanted = line_model or model or default_model
            if model is None:
                if not served(wanted):
                    raise BatchInputError(line, f"model {wanted!r} is not served here")
                model = wanted
            elif wanted != model:
                raise BatchInputError(line, f"every request must use the same model ({model!r}); found {wanted!r}")
    except BatchInputError as exc:
        raise APIError(400, str(exc), code="invalid_batch_input", param=what) from exc
    if count == 0:
        raise APIError(400, "the batch has no items", code="invalid_batch_input", param=what)
    return count, model or default_model, tokens


async def _count_against_limits(state: AppState, owner: str, store: AsyncBatchStore, items: int, tokens: int,
                                what: str) -> None:
    """Refuse a batch that does not fit the key's batch limits (413 never, 429 not now); else take
    its items' places under the batch-items cap and its tokens from the day's budget, each in one
    atomic step (places first: they can be given back, tokens cannot, so a batch the queue then
    refuses with a 503 has spent its tokens)."""
    cap = state.settings.max_queued_batch_items_per_key
    if cap and items > cap:
        raise APIError(413, f"a batch of {items:,} items can never fit this API key's cap of {cap:,} unfinished "
                            "batch items; split it into smaller batches",
                       code="batch_over_queued_items_cap", param=what)
    budget = state.limits.batch_tokens
    if budget is not None and tokens > budget.amount:
        raise APIError(413, f"the batch's items ask for {tokens:,} tokens (the sum of their max_tokens), more than "
                            f"this API key's budget of {budget.amount:,} batch tokens per day; split it into "
                            "smaller batches or lower max_tokens", code="batch_over_token_budget", param=what)
    reserved, pending = await store.reserve(owner, items, cap)
    if not reserved:
        raise APIError(429, f"this API key has {pending:,} unfinished batch items; {items:,} more would pass its "
                            f"cap of {cap:,}; wait for some to finish", code="too_many_queued_batch_items",
                       headers={"Retry-After": "5", "x-ratelimit-limit-batch-items": str(cap),
                                "x-ratelimit-remaining-batch-items": str(max(0, cap - pending))})
    try:
        await state.limits.take_batch_tokens(owner, tokens)
    except BaseException:
        await store.unreserve(owner, items)
        raise


def _item_deadline(batch: BatchRecord, spec: ItemSpec, deadline_seconds: float | None) -> float | None:
    """When an item must be done by: the earliest of its own deadline, the batch-wide one and the end
    of the batch's completion window (all counted from the batch's creation)."""
    seconds = earliest(spec.deadline_seconds, deadline_seconds)
    at = [t for t in (deadline_at(batch.created_at, seconds), batch.expires_at) if t is not None]
    return min(at) if at else None


async def accept(state: AppState, owner: str, source: ItemSource, *, model: str | None, mode: Mode,
                 what: str, cache: bool = True, deadline_seconds: float | None = None,
                 **fields: object) -> BatchRecord:
    """``deadline_seconds``: every item's deadline (the body field or the ``Cancel-After`` header); a
    ``completion_window`` among ``fields`` sets the batch's ``expires_at``."""
    settings = state.settings
    default_model = model or settings.default_model
    if settings.model(default_model) is None:
        raise model_not_found(settings, default_model)
    total, model_id, tokens = await to_thread.run_sync(
        lambda: _check(source, settings.batch_max_items, default_model, lambda m: settings.model(m) is not None,
                       what))
    created = time.time()
    window = window_seconds(fields.get("completion_window"))  # type: ignore[arg-type]
    batch = BatchRecord(id=new_batch_id(), owner=owner, model=model_id, mode=mode, total=total, created_at=created,
                        expires_at=deadline_at(created, window), **fields)  # type: ignore[arg-type]
    check_priority(settings, owner, batch.priority)
    store = batch_store(state)
    await _count_against_limits(state, owner, store, total, tokens, what)
    items = source()
    chunk = settings.batch_chunk_size
    written = 0
    try:
        await store.create(batch)
        while specs := await to_thread.run_sync(lambda: [s for _, _, s in islice(items, chunk)]):
            jobs = [JobRecord.new(owner=owner, model=model_id, mode=s.mode, lane="bulk", input=s.input,
                                  params=s.params, batch_id=batch.id, custom_id=s.custom_id, priority=batch.priority,
                                  deadline_at=_item_deadline(batch, s, deadline_seconds)) for s in specs]
            if state.cache is not None:
                for job in jobs:
                    state.cache.mark(job, cache)
            await store.add_items(batch.id, jobs)
            written += len(jobs)
            if state.cache is not None:  # hits end now; their queued messages then find them finished
                await state.cache.answer(jobs)
            await _dispatch(state, batch.id, model_id, written - len(jobs), written, batch.priority)
        await store.start(batch.id)
    except Exception as exc:  # not all enqueued means not accepted: remove what was written
        log.warning("batch %s not accepted: %s", batch.id, exc)
        try:
            await store.delete(batch.id, owner, unwritten=total - written)
        except RedisError:  # Redis is away: remove what was written once it answers again
            remove_batch_later(store, batch.id, owner, total - written)
        raise APIError(503, "the job queue is unavailable; retry shortly", code="queue_unavailable",
                       headers={"Retry-After": "2"}) from exc
    JOBS_SUBMITTED.labels(model_id, state.keys.queue(model_id, "bulk"), "bulk", str(batch.priority)).inc(written)
    return await store.get(batch.id, owner) or batch


async def _dispatch(state: AppState, batch_id: str, model: str, start: int, stop: int, priority: int) -> None:
    """Send one chunk's message, noted first in the dispatch set: if the worker that takes it dies
    before it has sent every item, a reaper sends it again (``textgen_core/dispatch.py``)."""
    chunk = Chunk(batch_id, model, start, stop)
    await record(state.redis, state.keys, chunk, lease_seconds=state.settings.lease_seconds,
                 ttl=state.settings.job_ttl_seconds)
    await state.queue.dispatch(chunk, priority)
