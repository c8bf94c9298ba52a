"""``GET /v1/jobs``: the caller's jobs, newest first, cursor paging, filters, and nothing of other keys."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from tests.conftest import IDLE_MODEL, Stack, wait_job
from textgen_cli.redis_server import start_redis
from textgen_core import job_index
from textgen_core.job_index import AsyncJobIndex, index_jobs
from textgen_core.jobs import JobInput, JobRecord, SamplingParams
from textgen_core.keys import Keys
from textgen_core.store import encode_job

pytestmark = pytest.mark.integration

ONE, TWO = "list-key-one", "list-key-two"


def submit(client: httpx.Client, **body: object) -> dict:
    resp = client.post("/v1/jobs", json={"max_tokens": 2, "temperature": 0, **body})
    assert resp.status_code == 202, resp.text
    return resp.json()


def all_pages(client: httpx.Client, limit: int, **filters: str) -> list[list[str]]:
    pages: list[list[str]] = []
    params: dict[str, str | int] = {"limit": limit, **filters}
    while True:
        body = client.get("/v1/jobs", params=params).json()
        assert body["object"] == "list"
        pages.append([job["id"] for job in body["data"]])
        if not body["has_more"]:
            return pages
        params["after"] = body["last_id"]


def test_jobs_list_newest_first_with_paging_filters_and_isolation(stack: Stack,
                                                                  start_api: Callable[..., str]) -> None:
    url = start_api("list-api", TEXTGEN_API_KEYS=f"{ONE},{TWO}")
    one = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ONE}"}, timeout=120)
    two = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TWO}"}, timeout=120)
    with one, two:
        assert one.get("/v1/jobs").json() == {"object": "list", "data": [], "first_id": None, "last_id": None,
                                              "has_more": False}
        done = [submit(one, prompt=f"Say {word}.") for word in ("yes", "no")]
        queued = [submit(one, prompt=f"Wait {i}.", model=IDLE_MODEL) for i in range(3)]  # no worker serves it
        other = submit(two, prompt="Mine alone.", model=IDLE_MODEL)
        batch = one.post("/v1/batches", json={"model": IDLE_MODEL, "items": [{"custom_id": c, "prompt": c}
                                                                             for c in ("a", "b")]})
        assert batch.status_code == 202, batch.text
        batch_id = batch.json()["id"]
        for job in done:
            assert wait_job(one, job["id"])["status"] == "succeeded"

        singles = [j["id"] for j in reversed(done + queued)]
        pages = all_pages(one, 2, lane="interactive")
        assert pages == [singles[0:2], singles[2:4], singles[4:5]]
        everything = [job for page in all_pages(one, 3) for job in page]
        assert everything[2:] == singles and len(everything) == 7  # the two batch items are the newest

        assert all_pages(one, 10, status="succeeded") == [[j["id"] for j in reversed(done)]]
        assert all_pages(one, 10, status="queued", lane="interactive") == [[j["id"] for j in reversed(queued)]]
        items = one.get("/v1/jobs", params={"batch_id": batch_id}).json()["data"]
        assert sorted(j["id"] for j in items) == sorted(everything[:2])
        assert {(j["lane"], j["batch_id"]) for j in items} == {("bulk", batch_id)}
        assert one.get("/v1/jobs", params={"lane": "bulk"}).json()["data"] == items

        # Key two sees its job alone, and cannot page from key one's.
        assert [j["id"] for j in two.get("/v1/jobs").json()["data"]] == [other["id"]]
        assert other["id"] not in everything
        assert two.get("/v1/jobs", params={"batch_id": batch_id}).json()["data"] == []
        refused = two.get("/v1/jobs", params={"after": singles[0]})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "after"
        bad = one.get("/v1/jobs", params={"status": "done"})
        assert bad.status_code == 422 and bad.json()["error"]["param"] == "status"
        assert one.get("/v1/jobs", params={"limit": 0}).status_code == 422

        for client, job in [(one, j) for j in queued] + [(two, other)]:
            assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
        assert one.post(f"/v1/batches/{batch_id}/cancel").status_code == 200
        canceled = all_pages(one, 10, status="canceled", lane="interactive")
        assert canceled == [[j["id"] for j in reversed(queued)]]
    owner = stack.redis().keys(f"{stack.keys.prefix}:jobs:owner:*")
    assert owner and all(stack.redis().ttl(key) > 0 for key in owner)


def test_a_page_reads_a_bounded_number_of_jobs_and_says_where_to_go_on(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A filter that matches little reads at most SCAN_MAX index entries per page; the cursor it
    returns then is the last job looked at, and paging on reaches every match."""
    monkeypatch.setattr(job_index, "SCAN_MAX", 4)
    url, proc = start_redis(tmp_path / "redis", appendonly=False)
    keys = Keys("listtest")

    async def scenario() -> list[tuple[list[str], bool, str | None]]:
        client = aioredis.Redis.from_url(url, decode_responses=True)
        jobs = [JobRecord.new(owner="o", model="m", lane="bulk" if i % 5 else "interactive",
                              input=JobInput(prompt=str(i)), params=SamplingParams()) for i in range(11)]
        for i, job in enumerate(jobs):
            job.timings.created_at = 1_000_000_000 + i  # oldest first
        async with client.pipeline(transaction=False) as pipe:
            for job in jobs:
                pipe.hset(keys.job(job.id), mapping=encode_job(job))
            index_jobs(pipe, keys, jobs, ttl=10**10)
            await pipe.execute()
        index = AsyncJobIndex(client, keys, ttl=10**10)
        pages, after = [], None
        while True:
            found, more, after = await index.page("o", 2, after, lambda j: j.lane == "interactive")
            pages.append(([j.id for j in found], more, after))
            if not more:
                break
        pages.append((["ids"], False, ",".join(j.id for j in jobs)))
        await client.aclose()
        return pages

    try:
        *pages, (_, _, ids) = asyncio.run(scenario())
    finally:
        proc.terminate()
        proc.wait(10)
    jobs = ids.split(",")
    # Newest first: 10, 9, ... 0; interactive are 0, 5 and 10. Each page reads 4 entries at most.
    assert pages == [([jobs[10]], True, jobs[7]), ([jobs[5]], True, jobs[3]), ([jobs[0]], False, jobs[0])]
