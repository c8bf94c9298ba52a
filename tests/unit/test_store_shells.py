"""Each store is one core with a synchronous and an asyncio shell: the shells offer the same methods
with the same signatures, and, run through one scenario on a real (bundled) redis-server, give the
same answers."""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from textgen_core.batch_store import AsyncBatchStore, BatchStore
from textgen_core.batches import BatchRecord, BatchStatus
from textgen_core.cache import AsyncResultCache, CacheEntry, ResultCache
from textgen_core.jobs import ChatMessage, JobInput, JobRecord, JobStatus, SamplingParams
from textgen_core.keys import Keys
from textgen_core.store import AsyncJobStore, JobStore
from textgen_core.webhook_events.emitter import AsyncWebhookEmitter, WebhookEmitter
from textgen_core.webhook_events.outbox import AsyncOutbox, Outbox, member

OWNER, OTHER = "owner-1", "owner-2"
TWINS = [(JobStore, AsyncJobStore), (BatchStore, AsyncBatchStore), (ResultCache, AsyncResultCache),
         (WebhookEmitter, AsyncWebhookEmitter), (Outbox, AsyncOutbox)]
# The worker's single flight blocks while it waits for an identical job; the API never generates.
SYNC_ONLY = {"begin"}


def public_methods(cls: type) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(fn) for name, fn in vars(cls).items()
            if callable(fn) and not name.startswith("_") and name not in SYNC_ONLY and not isinstance(fn, type)}


@pytest.mark.parametrize(("sync", "asynchronous"), TWINS, ids=[s.__name__ for s, _ in TWINS])
def test_the_shells_have_the_same_methods_and_signatures(sync: type, asynchronous: type) -> None:
    mine, theirs = public_methods(sync), public_methods(asynchronous)
    assert sorted(mine) == sorted(theirs)
    for name, signature in mine.items():
        assert list(signature.parameters) == list(theirs[name].parameters), name
        method = getattr(asynchronous, name)
        assert inspect.iscoroutinefunction(method) or inspect.isasyncgenfunction(method), name


async def done(value: Any) -> Any:
    """The value of a shell call, awaited if the shell is the asyncio one."""
    if inspect.isasyncgen(value):
        return [item async for item in value]
    if inspect.isawaitable(value):
        return await value
    return list(value) if inspect.isgenerator(value) else value


def job(**fields: Any) -> JobRecord:
    return JobRecord.new(owner=OWNER, model="m", input=JobInput(prompt="hi"), params=SamplingParams(), **fields)


async def scenario(client: Any, keys: Keys, shells: dict[str, type]) -> list[Any]:
    """One run through every method of a set of shells; returns what a caller would see."""
    seen: list[Any] = []
    store = shells["jobs"](client, keys, job_ttl=60, stream_ttl=60, stream_maxlen=100, lease_seconds=30)
    ended: list[str] = []
    if inspect.iscoroutinefunction(shells["jobs"].get):
        async def hook(job_id: str) -> None:
            ended.append(job_id)
        store.on_terminal = hook
    else:
        store.on_terminal = ended.append

    first, second = job(conversation_id="c1"), job()
    seen.append(await done(store.create(first, max_pending=1)))
    seen.append(await done(store.create(second, max_pending=1)))  # the cap
    seen.append((await done(store.get(first.id, OWNER))).status)
    seen.append(await done(store.get(first.id, OTHER)))  # others see nothing
    seen.append((await done(store.get(first.id))).owner)  # no owner given: the platform's own read
    claim = await done(store.claim(first.id, worker="w", attempt_token="t1", max_attempts=3))
    seen.append((claim.owned, claim.status))
    await done(store.append_deltas({first.id: "o", second.id: ""}))
    seen.append(await done(store.cancel(first.id, OWNER)))  # running: a stop is requested
    seen.append(await done(store.cancel_requested(first.id)))
    seen.append(await done(store.requeue(first.id, "other-attempt")))
    seen.append(await done(store.requeue(first.id, "t1", refund_attempt=True)))
    await done(store.claim(first.id, worker="w", attempt_token="t2", max_attempts=3))
    seen.append(await done(store.finish(first, attempt_token="t1", status=JobStatus.succeeded, fields={})))
    seen.append(await done(store.finish(first, attempt_token="t2", status=JobStatus.succeeded,
                                        fields={"output": "ok"}, history_append=[ChatMessage(role="user", content="hi"),
                                                                                 ChatMessage(role="assistant",
                                                                                             content="ok")])))
    seen.append([m.content for m in await done(store.history(OWNER, "c1"))])
    seen.append(await done(store.delete_history(OWNER, "c1")))
    seen.append(await done(store.history(OWNER, "c1")))
    queued = job()
    await done(store.create(queued))
    seen.append(await done(store.cancel(queued.id, OWNER)))
    seen.append(await done(store.cancel(queued.id, OTHER)))
    withdrawn = job()
    await done(store.create(withdrawn))
    await done(store.delete(withdrawn.id))
    seen.append(await done(store.get(withdrawn.id)))
    hit = job()
    seen.append(await done(store.create_finished(hit, fields={"output": "cached"}, history_append=[],
                                                 history_max_turns=5, history_ttl=60)))
    gave_up = job()
    await done(store.create(gave_up))
    claim = await done(store.claim(gave_up.id, worker="w", attempt_token="t", max_attempts=0))
    seen.append((claim.owned, claim.status, claim.ended))
    seen.append([{first.id: "first", queued.id: "queued", hit.id: "hit", gave_up.id: "gave_up"}[i] for i in ended])

    batches = shells["batches"](client, keys, ttl=60, stream_ttl=60)
    seen.append(await done(batches.reserve(OWNER, 3, 4)))
    seen.append(await done(batches.reserve(OWNER, 2, 4)))
    await done(batches.unreserve(OWNER, 1))
    batch = BatchRecord(id=f"batch_{keys.prefix}", owner=OWNER, model="m", total=2, webhook="http://hook")
    await done(batches.create(batch))
    items = [job(batch_id=batch.id, custom_id=str(i), lane="bulk") for i in range(2)]
    await done(batches.add_items(batch.id, items))
    await done(batches.start(batch.id))
    seen.append(await done(batches.status(batch.id)))
    seen.append(await done(batches.job_ids(batch.id, 0, 1)) == [items[0].id])
    seen.append(await done(batches.get(batch.id, OTHER)))
    page, more = await done(batches.page(OWNER, 10, None))
    seen.append(([b.id == batch.id for b in page], more))
    await done(batches.request_cancel(batch.id, OWNER, 1))
    got = await done(batches.get(batch.id))
    seen.append((got.status, got.canceled))
    seen.append([(row["custom_id"], row["status"]) for row in await done(batches.items(batch.id, 1))])
    await done(batches.delete(batch.id, OWNER, unwritten=0))
    seen.append(await done(batches.get(batch.id)))

    cache = shells["cache"](client, keys)
    entry = CacheEntry("text", "stop", {"completion_tokens": 1}, "job_x", 1.0)
    await done(cache.store(hit, "d1", entry))
    seen.append(await done(cache.lookup(["d1", "d2"])))
    seen.append(await done(cache.lookup([])))
    await done(cache.count_hits("m", 2))
    seen.append(await done(cache.stats()))
    await client_call(client, "set", keys.cache_lead("d1"), "job_a")
    await done(cache.release_lead("d1", "job_b"))
    seen.append(await client_call(client, "get", keys.cache_lead("d1")))
    await done(cache.release_lead("d1", "job_a"))
    seen.append(await client_call(client, "get", keys.cache_lead("d1")))

    sent: list[dict[str, Any]] = []
    if inspect.iscoroutinefunction(shells["emitter"].emit):
        async def send(request: dict[str, Any]) -> None:
            sent.append(request)
    else:
        send = sent.append  # type: ignore[assignment]
    emitter = shells["emitter"](client, keys, send)
    args = {"owner": OWNER, "url": "http://hook", "object_id": "x", "payload": lambda: {"id": "x"}}
    seen.append(await done(emitter.emit(event="job.started", events_filter=["completed"], **args)))
    seen.append(bool(await done(emitter.emit(event="batch.progress", throttle_seconds=30, **args))))
    seen.append(await done(emitter.emit(event="batch.progress", throttle_seconds=30, **args)))  # throttled
    seen.append(await done(emitter.emit(event="job.completed", webhook_id="msg_fixed", url=None,
                                        **{k: v for k, v in args.items() if k != "url"})))

    outbox = shells["outbox"](client, keys, emitter, store, batches, lease_seconds=30)
    hooked = job(webhook="http://hook", batch_id="batch_gone")
    await done(store.create(hooked))
    await client_call(client, "zadd", keys.webhook_outbox, {member("job.completed", hooked.id): time.time() - 10,
                                                            member("batch.completed", "batch_gone"): time.time() - 10})
    ended_ = await done(outbox.job_ended(hooked.id))
    seen.append((ended_.job_event is not None, ended_.batch_id, ended_.batch_event))
    seen.append(await done(outbox.flush("job.completed", hooked.id)))  # taken and queued once
    await client_call(client, "zadd", keys.webhook_outbox, {member("job.completed", hooked.id): time.time() - 10})
    seen.append(await done(outbox.sweep(1)))
    seen.append(await client_call(client, "zcard", keys.webhook_outbox))
    seen.append([(r["event"], r["object_id"] == hooked.id) for r in sent])
    return seen


async def client_call(client: Any, name: str, *args: Any) -> Any:
    return await done(getattr(client, name)(*args))


def test_both_shells_give_the_same_answers(redis_url: str) -> None:
    sync_keys, async_keys = Keys(f"s{uuid.uuid4().hex[:8]}"), Keys(f"a{uuid.uuid4().hex[:8]}")
    sync_client = redis.Redis.from_url(redis_url, decode_responses=True)
    sync_seen = asyncio.run(scenario(sync_client, sync_keys, {
        "jobs": JobStore, "batches": BatchStore, "cache": _SyncCache, "emitter": WebhookEmitter, "outbox": Outbox}))

    async def run_async() -> list[Any]:
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            return await scenario(client, async_keys, {"jobs": AsyncJobStore, "batches": AsyncBatchStore,
                                                        "cache": AsyncResultCache, "emitter": AsyncWebhookEmitter,
                                                        "outbox": AsyncOutbox})
        finally:
            await client.aclose()

    assert sync_seen == asyncio.run(run_async())
    # And what they agree on is what the stores promise (a few anchors).
    assert sync_seen[:2] == [(True, 1), (False, 1)]  # stored, then refused at the cap
    assert sync_seen[3] is None and sync_seen[6] == "running"  # another owner's job; a stop requested
    assert sync_seen[12] == ["hi", "ok"]  # the finish appended the turn
    assert sync_seen[20] == ["first", "queued", "hit", "gave_up"]  # on_terminal once per ended job
    assert sync_seen[27] == (BatchStatus.canceled, 2)  # the cancel settled the batch with its last item
    assert sync_seen[-5] == (True, "batch_gone", None)  # the job's event queued; its batch had expired


def _SyncCache(client: redis.Redis, keys: Keys) -> ResultCache:  # noqa: N802 (stands in for a class)
    return ResultCache(client, keys, profiles={}, wait_seconds=0.1, lead_ttl=10)
