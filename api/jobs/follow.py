"""Following several jobs' token streams at once, as one sequence of events.

Workers append ``d`` (text) entries to ``Keys.tokens(job_id)`` and one ``end`` entry when the
job ends. One blocking XREAD over all the streams yields each job's deltas in order, then its
final record. Idle ticks are yielded too, so a caller can notice a client that went away.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from api.app.state import AppState
from textgen_core.jobs import JobRecord

BLOCK_MS = 1000  # a blocking read must end well inside the Redis socket timeout (api_redis_socket_timeout_seconds)
QUIET_CHECKS_EVERY = 5  # idle ticks between checks for jobs that ended without a stream end


@dataclass(frozen=True)
class Delta:
    index: int
    text: str


@dataclass(frozen=True)
class Ended:
    index: int
    job: JobRecord | None  # None: the record is gone (expired or deleted)


@dataclass(frozen=True)
class Idle:
    """Nothing arrived for a while."""


FollowEvent = Delta | Ended | Idle


async def follow(state: AppState, job_ids: list[str], owner: str) -> AsyncIterator[FollowEvent]:
    """Every delta of every job in order, each job's ``Ended`` once, and ``Idle`` ticks."""
    index = {state.keys.tokens(job_id): i for i, job_id in enumerate(job_ids)}
    last = dict.fromkeys(index, "0-0")
    idle = 0
    while last:
        batches = await state.redis.xread(dict(last), count=256, block=BLOCK_MS)
        if not batches:
            idle += 1
            if idle % QUIET_CHECKS_EVERY == 0:
                for key in list(last):
                    async for event in _ended_without_stream(state, key, index[key], last, job_ids, owner):
                        yield event
            yield Idle()
            continue
        for key, entries in batches:
            for entry_id, fields in entries:
                last[key] = entry_id
                if "d" in fields:
                    yield Delta(index[key], fields["d"])
                elif "end" in fields:
                    del last[key]
                    yield Ended(index[key], await state.store.get(job_ids[index[key]], owner))
                    break


async def _ended_without_stream(state: AppState, key: str, i: int, last: dict[str, str], job_ids: list[str],
                                owner: str) -> AsyncIterator[FollowEvent]:
    """A job can end without an ``end`` entry (it failed at claim time after too many attempts)."""
    job = await state.store.get(job_ids[i], owner)
    if job is not None and not job.status.terminal:
        return
    # Drain what the stream still holds so no text is lost, then close it.
    rest = await state.redis.xread({key: last[key]}, count=10_000)
    for _, entries in rest or []:
        for _, fields in entries:
            if "d" in fields:
                yield Delta(i, fields["d"])
    del last[key]
    yield Ended(i, job)
