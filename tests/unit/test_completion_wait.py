"""How a non-streaming completion waits for its jobs: it reads a job when the job's end event
comes, and all of them again every ``RECHECK_SECONDS``, so a missed event costs seconds, never a
hang. The hub is the real one, fed its events by hand; the job store is a fake that counts reads."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from api.app.events import EventHub
from api.openai import completion_session
from api.openai.completion_session import ClientGone, CompletionSession
from textgen_core.jobs import JobInput, JobRecord, JobStatus, SamplingParams


def _job() -> JobRecord:
    return JobRecord.new(owner="o", model="m", input=JobInput(prompt="p"), params=SamplingParams())


class _Store:
    """Jobs by id; ``reads`` counts the reads of each."""

    def __init__(self, jobs: list[JobRecord]):
        self.jobs = {job.id: job for job in jobs}
        self.reads = dict.fromkeys(self.jobs, 0)

    async def get(self, job_id: str, owner: str) -> JobRecord | None:
        self.reads[job_id] += 1
        return self.jobs[job_id]

    def end(self, job_id: str) -> None:
        self.jobs[job_id].status = JobStatus.succeeded


class _Request:
    def __init__(self, gone: bool = False):
        self.gone = gone

    async def is_disconnected(self) -> bool:
        return self.gone


def _session(jobs: list[JobRecord]) -> tuple[CompletionSession, EventHub, _Store]:
    hub, store = EventHub(client=None, channel="events"), _Store(jobs)  # type: ignore[arg-type]
    state = SimpleNamespace(hub=hub, store=store)
    session = CompletionSession(state=state, owner="o", kind="chat", model="m", jobs=jobs,  # type: ignore[arg-type]
                                per_prompt=1, include_usage=False, slots=None, slot="s")  # type: ignore[arg-type]
    return session, hub, store


def test_a_job_is_read_again_only_when_its_own_event_comes() -> None:
    jobs = [_job() for _ in range(3)]
    session, hub, store = _session(jobs)

    async def scenario() -> list[JobRecord]:
        waiting = asyncio.create_task(session.collect(_Request()))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        for job in jobs:
            store.end(job.id)
            hub._wake(job.id)
            await asyncio.sleep(0.05)
        return await asyncio.wait_for(waiting, 5)

    records = asyncio.run(scenario())
    assert [r.id for r in records] == [j.id for j in jobs]
    assert store.reads == {job.id: 2 for job in jobs}, "read once on entry, once at its own event"
    assert not hub._waiters, "the watch is gone with the request"


def test_an_end_without_an_event_is_found_by_the_recheck(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(completion_session, "RECHECK_SECONDS", 0.3)
    [job] = jobs = [_job()]
    session, _, store = _session(jobs)

    async def scenario() -> list[JobRecord]:
        waiting = asyncio.create_task(session.collect(_Request()))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        store.end(job.id)  # and no event: it was missed
        return await asyncio.wait_for(waiting, 5)

    assert [r.status for r in asyncio.run(scenario())] == [JobStatus.succeeded]
    assert store.reads[job.id] == 2


def test_a_reconnected_hub_has_every_watched_job_read() -> None:
    jobs = [_job() for _ in range(2)]
    session, hub, store = _session(jobs)

    async def scenario() -> list[JobRecord]:
        waiting = asyncio.create_task(session.collect(_Request()))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        for job in jobs:
            store.end(job.id)
        hub._wake_all()  # what the listener does after a reconnect
        return await asyncio.wait_for(waiting, 5)

    assert len(asyncio.run(scenario())) == 2
    assert store.reads == {job.id: 2 for job in jobs}


def test_a_client_that_left_ends_the_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(completion_session, "DISCONNECT_CHECK_SECONDS", 0.05)
    session, _, _ = _session([_job()])
    with pytest.raises(ClientGone):
        asyncio.run(asyncio.wait_for(session.collect(_Request(gone=True)), 5))  # type: ignore[arg-type]
