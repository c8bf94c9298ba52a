"""Scale out on one Redis: two worker processes (two hostnames) and two API processes share the
queues and the job store. Both workers take work; one SIGKILLed mid-batch loses nothing and
completes no item twice; the API that survives serves what the other accepted.

Small for CI (120 items of 4 tokens); ``bench/chaos.py`` runs the same under repeated kills and a
Redis restart with thousands of items.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.conftest import KEY_A, Stack, launch_stack, wait_job
from textgen_core.settings import DEFAULT_MODEL_ID

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

MAX_BATCH = 8
ITEMS = 120
JOBS = 10


def item_records(st: Stack, batch_id: str) -> list[dict[str, str]]:
    r = st.redis()
    return [r.hgetall(st.keys.job(job_id)) for job_id in r.lrange(st.keys.batch_jobs(batch_id), 0, -1)]


def test_two_workers_and_two_apis_share_the_work_and_a_kill_loses_nothing(tmp_path: Path) -> None:
    with launch_stack(tmp_path, [{"id": DEFAULT_MODEL_ID, "max_batch": MAX_BATCH}], DEFAULT_MODEL_ID,
                      worker=False) as st:
        for name in ("alpha", "bravo"):
            st.start_worker(name)
        for name in ("alpha", "bravo"):
            st.wait_for_worker(name, timeout=900)  # two model loads at once on a shared CPU
        second_api = st.start_api("api2")
        with st.client() as first:
            items = [{"custom_id": f"item-{i}", "prompt": f"Name a colour, number {i}."} for i in range(ITEMS)]
            resp = first.post("/v1/batches", json={"items": items, "max_tokens": 4, "temperature": 0})
            assert resp.status_code == 202, resp.text
            batch_id = resp.json()["id"]
            jobs = []
            for i in range(JOBS):
                resp = first.post("/v1/jobs", json={"prompt": f"Count to {i}.", "max_tokens": 4, "temperature": 0})
                assert resp.status_code == 202, resp.text
                jobs.append(resp.json()["id"])
        # Both workers have finished items before one of them dies.
        deadline = time.monotonic() + 900
        while {r.get("worker") for r in item_records(st, batch_id) if r.get("status") == "succeeded"} < {
                "alpha@test", "bravo@test"}:
            assert time.monotonic() < deadline, "both workers never finished an item"
            time.sleep(0.2)
        done_at_kill = sum(r["status"] == "succeeded" for r in item_records(st, batch_id))
        st.kill("alpha")
        st.kill("api")  # the API that accepted everything goes too
        with httpx.Client(base_url=second_api, headers={"Authorization": f"Bearer {KEY_A}"}, timeout=120) as api:
            deadline = time.monotonic() + 1500  # generous: a shared CPU may run a few items a minute
            while (batch := api.get(f"/v1/batches/{batch_id}").json())["status"] != "completed":
                assert time.monotonic() < deadline, batch
                time.sleep(0.5)
            rows = [line for line in api.get(f"/v1/batches/{batch_id}/results").text.splitlines() if line]
            job_states = [wait_job(api, job_id)["status"] for job_id in jobs]
        records = item_records(st, batch_id)  # read while Redis is up
    print(f"\n{done_at_kill}/{ITEMS} items done when a worker and an API were killed; "
          f"final counts {batch['request_counts']}")
    assert batch["request_counts"] == {"total": ITEMS, "completed": ITEMS, "failed": 0, "canceled": 0, "expired": 0}
    ids = Counter(__import__("json").loads(row)["custom_id"] for row in rows)
    assert ids == Counter(item["custom_id"] for item in items)  # each custom_id exactly once
    assert job_states == ["succeeded"] * JOBS
    assert all(r["status"] == "succeeded" for r in records)
    workers = Counter(r["worker"] for r in records)
    assert workers["alpha@test"] > 0 and workers["bravo@test"] > 0, workers
    # Only the items the killed worker was running started again: at most one engine's worth of rows.
    reruns = [r for r in records if int(r["attempts"]) > 1]
    assert len(reruns) <= MAX_BATCH, [(r["id"], r["attempts"], r["worker"]) for r in reruns]
    assert all(r["worker"] == "bravo@test" for r in reruns)
