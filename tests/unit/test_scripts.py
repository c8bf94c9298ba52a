"""The Lua script registry on a real (bundled) redis-server: every defined script compiles, and a
store call runs each one at least once and does what its store promises; and no Lua lives outside
``textgen_core/scripts/``."""

from __future__ import annotations

import asyncio
import importlib
import json
import pkgutil
import re
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

import api
import textgen_core
from textgen_core import scripts
from textgen_core.aging import BrokerAging
from textgen_core.aging import lane_lists as aging_lane_lists
from textgen_core.batch_store import AsyncBatchStore
from textgen_core.batches import BatchRecord
from textgen_core.cache import ResultCache
from textgen_core.dead_letters import AsyncDeadLetters
from textgen_core.deadlines import DeadlineSweeper
from textgen_core.dispatch import Chunk, ChunkLeases, record
from textgen_core.job_index import AsyncJobIndex
from textgen_core.jobs import JobInput, JobRecord, JobStatus, SamplingParams
from textgen_core.keys import Keys
from textgen_core.leases import JobLeases
from textgen_core.store import AsyncJobStore, JobStore, encode_job
from textgen_core.webhook_events.outbox import Outbox, member

OWNER = "owner-1"


def _import_all() -> None:
    """Import every module that could define a script (the engine needs torch and defines none)."""
    for package in (textgen_core, api):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if not info.name.startswith("textgen_core.engine"):
                importlib.import_module(info.name)


@pytest.fixture
def ran(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The names of the scripts that stores looked up to run during the test."""
    seen: set[str] = set()
    original = scripts.Scripts.__getitem__

    def spy(self: scripts.Scripts, name: str) -> object:
        seen.add(name)
        return original(self, name)

    monkeypatch.setattr(scripts.Scripts, "__getitem__", spy)
    return seen


def job(**fields: object) -> JobRecord:
    return JobRecord.new(owner=OWNER, model="m", input=JobInput(prompt="hi"), params=SamplingParams(), **fields)


def test_a_store_binding_an_undefined_script_fails_when_it_is_built(redis_url: str) -> None:
    with pytest.raises(scripts.MissingScript, match="no-such-script"):
        scripts.Scripts(redis.Redis.from_url(redis_url), "no-such-script")
    bound = scripts.Scripts(redis.Redis.from_url(redis_url), next(iter(scripts.defined())))
    with pytest.raises(scripts.MissingScript, match="not bound"):
        bound["job.requeue"]


ROOT = Path(__file__).resolve().parents[2]
SCRIPTS_DIR = ROOT / "textgen_core" / "scripts"
# What only Lua says: a Redis command call, or a Lua function or local declared in a Python string.
LUA_MARKERS = re.compile(r"redis\.call\(|redis\.pcall\(|\blocal function\b|\bKEYS\[\d")


def lua_outside_the_scripts_package() -> list[str]:
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT)
        skipped = relative.parts[0] in ("tests", "build", "dist") or "site-packages" in relative.parts
        if skipped or any(part.startswith(".") for part in relative.parts) or path.is_relative_to(SCRIPTS_DIR):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if LUA_MARKERS.search(line):
                found.append(f"{relative}:{number}: {line.strip()}")
    return found


def test_no_lua_lives_outside_the_scripts_package() -> None:
    assert lua_outside_the_scripts_package() == []


def test_the_lua_scan_finds_a_script_written_outside_the_package(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "textgen_core" / "scripts").mkdir(parents=True)
    (tmp_path / "textgen_core" / "scripts" / "ok.py").write_text("X = \"redis.call('GET', KEYS[1])\"\n")
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "stray.py").write_text("Y = \"return redis.call('DEL', KEYS[1])\"\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "SCRIPTS_DIR", tmp_path / "textgen_core" / "scripts")
    assert [hit.split(":")[0] for hit in lua_outside_the_scripts_package()] == ["api/stray.py"]


def test_every_script_of_the_package_is_registered_by_its_family_module() -> None:
    """Each family module's public constants are names in the registry (what stores bind), and every
    registered script comes from one of them."""
    fragments = importlib.import_module("textgen_core.scripts.fragments")
    shared = {v for v in vars(fragments).values() if isinstance(v, str)}
    names: set[str] = set()
    for info in pkgutil.iter_modules(scripts.__path__):
        if info.name == "fragments":
            continue
        module = importlib.import_module(f"textgen_core.scripts.{info.name}")
        constants = {v for k, v in vars(module).items()
                     if k.isupper() and not k.startswith("_") and isinstance(v, str) and v not in shared}
        assert constants and constants <= set(scripts.defined()), info.name
        names |= constants
    assert names == set(scripts.defined())


def test_every_defined_script_compiles(redis_url: str) -> None:
    _import_all()
    client = redis.Redis.from_url(redis_url)
    assert {"job.claim", "job.requeue", "slots.acquire"} <= set(scripts.defined())
    for name, source in scripts.defined().items():
        sha = client.script_load(source)
        assert client.script_exists(sha) == [True], name


def test_every_defined_script_runs_through_its_store(redis_url: str, ran: set[str]) -> None:
    _import_all()
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    sync = redis.Redis.from_url(redis_url, decode_responses=True)
    _run_worker_side(sync, keys)
    asyncio.run(_run_api_side(redis_url, keys))
    assert ran == set(scripts.defined()), f"never run: {sorted(set(scripts.defined()) - ran)}"


def _run_worker_side(r: redis.Redis, keys: Keys) -> None:
    store = JobStore(r, keys, job_ttl=60, stream_ttl=60, stream_maxlen=100, lease_seconds=30)
    leases = JobLeases(r, keys, lease_seconds=30, ttl=60)
    record = job()
    r.hset(keys.job(record.id), mapping=encode_job(record))

    # Held by a task, claimed, handed back (the duplicate-item path), claimed again, finished.
    with leases.holding(record.id) as token:
        assert leases.renew() == 1
        assert store.claim(record.id, worker="w", attempt_token=token, max_attempts=3).owned
        assert store.requeue(record.id, token, refund_attempt=True)
        assert store.get(record.id).status is JobStatus.queued  # type: ignore[union-attr]
        assert store.get(record.id).attempts == 0  # type: ignore[union-attr]
    assert store.claim(record.id, worker="w", attempt_token="t2", max_attempts=3).owned
    assert store.finish(record, attempt_token="t2", status=JobStatus.succeeded, fields={"output": "ok"})
    assert store.get(record.id).output == "ok"  # type: ignore[union-attr]

    # A lease that lapsed: the reaper puts the running job back to queued.
    lapsed = job()
    r.hset(keys.job(lapsed.id), mapping=encode_job(lapsed))
    short = JobLeases(r, keys, lease_seconds=0.01, ttl=60)
    hasty = JobStore(r, keys, job_ttl=60, stream_ttl=60, stream_maxlen=100, lease_seconds=0.01)
    with short.holding(lapsed.id) as token:
        assert hasty.claim(lapsed.id, worker="w", attempt_token=token, max_attempts=3).owned
        short._held.clear()  # its holder is gone: nothing renews it
        time.sleep(0.05)
        reaped = leases.reap()
    assert [x.job_id for x in reaped] == [lapsed.id]
    assert store.get(lapsed.id).status is JobStatus.queued  # type: ignore[union-attr]

    # Deadlines: the claim refuses a job past its deadline; the sweeper expires a queued one, looks again
    # later at a running one, and forgets an ended one.
    late = job(deadline_at=time.time() - 1)
    r.hset(keys.job(late.id), mapping=encode_job(late))
    claim = store.claim(late.id, worker="w", attempt_token="t3", max_attempts=3)
    assert not claim.owned and claim.status is JobStatus.expired and claim.ended == "deadline"
    assert store.get(late.id).finish_reason == "deadline"  # type: ignore[union-attr]
    sweeper = DeadlineSweeper(r, keys, stream_ttl=60, recheck_seconds=30)
    waiting, running = job(deadline_at=time.time() - 1), job(deadline_at=time.time() - 1)
    for record_ in (waiting, running):
        r.hset(keys.job(record_.id), mapping=encode_job(record_))
    assert store.claim(running.id, worker="w", attempt_token="t4", max_attempts=3).status is JobStatus.expired
    r.hset(keys.job(running.id), "status", "running")  # as if claimed a moment before its deadline
    r.zadd(keys.deadlines, {waiting.id: time.time() - 1, running.id: time.time() - 1, record.id: time.time() - 1})
    assert [e.job_id for e in sweeper.sweep()] == [waiting.id]
    assert store.get(waiting.id).status is JobStatus.expired  # type: ignore[union-attr]
    assert r.zrange(keys.deadlines, 0, -1) == [running.id]  # looked at again later; the ended ones dropped
    assert r.zscore(keys.deadlines, running.id) > time.time() + 20

    # Batch chunks: taken over and done; one whose deadline passed is re-sent once, later re-sends spaced
    # out until a dispatcher takes it over; an ended batch's chunks are dropped.
    chunks = ChunkLeases(r, keys, lease_seconds=30, ttl=60)
    sent, lapsed_chunk, ended = Chunk("b1", "org/m|x", 0, 2), Chunk("b1", "org/m|x", 2, 4), Chunk("b2", "m", 0, 1)
    assert Chunk.parse(lapsed_chunk.member) == lapsed_chunk
    r.sadd(keys.active_batches, "b1")
    r.zadd(keys.dispatch, {sent.member: time.time() + 30, lapsed_chunk.member: time.time() - 1,
                           ended.member: time.time() - 1})
    assert chunks.take(sent) and chunks.renew() == 1
    chunks.done(sent)
    assert not chunks.take(sent)  # a copy of a dispatched chunk does nothing
    assert chunks.reap() == [lapsed_chunk] and chunks.reap() == []  # re-armed: reaped once
    assert r.zrange(keys.dispatch, 0, -1) == [lapsed_chunk.member]  # the ended batch's chunk dropped
    r.zadd(keys.dispatch, {lapsed_chunk.member: time.time() - 1})
    assert chunks.reap() == [lapsed_chunk]
    assert r.zscore(keys.dispatch, lapsed_chunk.member) > time.time() + 50  # the second re-send waits two leases
    assert chunks.take(lapsed_chunk) and not r.exists(keys.dispatch_resends)
    chunks.forget()
    r.srem(keys.active_batches, "b1")
    assert not chunks.take(lapsed_chunk) and r.zcard(keys.dispatch) == 0

    # Broker aging: a priority-2 message that waited one aging period moves up to priority 1's list.
    low = aging_lane_lists(keys, "m", "interactive")
    r.lpush(low[2], json.dumps({"headers": {"enqueued_at": time.time() - 15}, "properties": {"priority": 2}}))
    assert BrokerAging(r, keys, ["m"], aging_s=10).promote(time.time()) == 1
    assert (r.llen(low[1]), r.llen(low[2])) == (1, 0)
    r.delete(low[1])

    # The result cache's lead is released only by its holder.
    cache = ResultCache(r, keys, profiles={}, wait_seconds=0.1, lead_ttl=10)
    r.set(keys.cache_lead("d"), "job_a")
    cache.release_lead("d", "job_b")
    assert r.get(keys.cache_lead("d")) == "job_a"
    cache.release_lead("d", "job_a")
    assert r.get(keys.cache_lead("d")) is None

    # The outbox: flush takes a fresh entry once; the sweeper leases what stayed behind.
    class Emitter:
        def emit(self, **kwargs: object) -> str:
            return "sent"

    outbox = Outbox(r, keys, Emitter(), store, None, lease_seconds=30)  # type: ignore[arg-type]
    r.zadd(keys.webhook_outbox, {member("job.completed", record.id): time.time() - 10})
    assert outbox.flush("job.completed", record.id) == "sent"
    assert outbox.flush("job.completed", record.id) is None  # taken and queued once
    assert r.zcard(keys.webhook_outbox) == 0
    r.zadd(keys.webhook_outbox, {member("job.completed", record.id): time.time() - 10})
    assert outbox.sweep(grace_seconds=1) == 1 and r.zcard(keys.webhook_outbox) == 0


async def _run_api_side(url: str, keys: Keys) -> None:
    from api.app.slots import RequestSlots

    r = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        store = AsyncJobStore(r, keys, job_ttl=60, stream_ttl=60)
        queued = job()
        assert await store.create(queued, max_pending=1) == (True, 1)
        assert await store.create(job(), max_pending=1) == (False, 1)  # the cap
        assert await store.cancel(queued.id, OWNER) == "canceled"
        assert await r.get(keys.pending(OWNER)) is None  # its place is back
        withdrawn = job()
        await store.create(withdrawn)
        await store.delete(withdrawn.id)
        assert not await r.exists(keys.job(withdrawn.id)) and await r.get(keys.pending(OWNER)) is None
        hit = job()
        assert await store.create_finished(hit, fields={"output": "cached"}, history_append=[],
                                           history_max_turns=5, history_ttl=60)
        assert (await store.get(hit.id, OWNER)).status is JobStatus.succeeded  # type: ignore[union-attr]

        # A failed job is retried once: queued again with its attempt counter and stream reset.
        failed = job()
        await store.create(failed)
        await r.hset(keys.job(failed.id), mapping={"status": "failed", "attempts": "3", "error": '{"message":"x"}'})
        await r.hdel(keys.job(failed.id), "pending_key")
        await r.decr(keys.pending(OWNER))  # released as the failing script would
        pending = int(await r.get(keys.pending(OWNER)) or 0)
        await r.xadd(keys.tokens(failed.id), {"end": "failed"})
        letters = AsyncDeadLetters(r, keys, lease_seconds=30, ttl=60)
        assert await letters.retry(failed.id, "someone-else") == "missing"
        assert await letters.retry(failed.id, OWNER) == "retried"
        assert await letters.retry(failed.id, OWNER) == "queued"
        again = await store.get(failed.id, OWNER)
        assert again is not None and (again.status, again.attempts, again.error) == (JobStatus.queued, 0, None)
        assert not await r.exists(keys.tokens(failed.id)) and int(await r.get(keys.pending(OWNER))) == pending + 1
        # Listed as long as its record lives: indexed again at the retry, not left at its creation time
        # (which the index drops once a ttl has passed, while the retried record lives on).
        await r.zadd(keys.owner_jobs(OWNER), {failed.id: time.time() - 3600})
        await r.hset(keys.job(failed.id), "status", "failed")
        assert await letters.retry(failed.id, OWNER) == "retried"
        assert await r.zscore(keys.owner_jobs(OWNER), failed.id) == pytest.approx(time.time(), abs=5)
        index = AsyncJobIndex(r, keys, ttl=60)
        await index.add([job()])  # an add drops members older than the ttl
        listed, _, _ = await index.page(OWNER, 100, None, lambda j: True)
        assert failed.id in [j.id for j in listed]
        await store.cancel(failed.id, OWNER)
        item = job(batch_id="batch_x", custom_id="c")
        await r.hset(keys.job(item.id), mapping={**encode_job(item), "status": "failed"})
        assert await letters.retry(item.id, OWNER) == "batch_item"  # its batch counted it already

        batches = AsyncBatchStore(r, keys, ttl=60, stream_ttl=60)
        assert await batches.reserve(OWNER, 3, cap=4) == (True, 3)
        assert await batches.reserve(OWNER, 2, cap=4) == (False, 3)
        batch = BatchRecord(id="batch_t", owner=OWNER, model="m", total=3)
        await batches.create(batch)
        items = [job(batch_id=batch.id, custom_id=str(i), lane="bulk") for i in range(2)]
        await batches.add_items(batch.id, items)
        await record(r, keys, Chunk(batch.id, "m", 0, 2), lease_seconds=30, ttl=60)
        assert await r.zcard(keys.dispatch) == 1 and 0 < await r.ttl(keys.dispatch) <= 60
        await batches.start(batch.id)
        assert (await batches.get(batch.id, OWNER)).status.value == "in_progress"  # type: ignore[union-attr]
        await batches.request_cancel(batch.id, OWNER, chunk=10)
        assert (await batches.get(batch.id, OWNER)).status.value in ("cancelling", "canceled")  # type: ignore[union-attr]
        assert await r.get(keys.pending_batch_items(OWNER)) == "1"  # the place reserved for the item never written
        other = BatchRecord(id="batch_u", owner=OWNER, model="m", total=2)
        assert (await batches.reserve(OWNER, 2, cap=0))[0]
        await batches.create(other)
        await batches.add_items(other.id, [job(batch_id=other.id, custom_id="a", lane="bulk")])
        await batches.delete(other.id, OWNER, unwritten=1)
        await batches.delete(batch.id, OWNER, unwritten=1)
        assert await r.get(keys.pending_batch_items(OWNER)) is None

        slots = RequestSlots(r, keys, limit=1, lease_seconds=30)
        assert await slots.acquire(OWNER) is not None
        assert await slots.acquire(OWNER) is None
    finally:
        await r.aclose()
