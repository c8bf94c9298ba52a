"""Priorities on the real stack: ceilings per key, the backlog gauges while jobs wait, and a
priority-0 job overtaking a waiting priority-2 job on a busy worker."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from unittest import mock

import httpx
import pytest

from tests.conftest import KEY_A, KEY_B, Stack, launch_stack, wait_job
from tests.integration.test_metrics import scrape, value
from textgen_cli.redis_server import free_port
from textgen_core.settings import DEFAULT_MODEL_ID

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

MODEL = DEFAULT_MODEL_ID
SHORT = {"prompt": "Say hi.", "max_tokens": 4, "temperature": 0}
# Long enough to keep a worker slot busy while the test queues more (the model rarely stops this early).
LONG = {"prompt": "Write a very long and detailed essay about the history of lighthouses, with many sections.",
        "max_tokens": 160, "temperature": 0.8, "seed": 7}


class Prio:
    def __init__(self, stack: Stack):
        self.stack = stack
        self.worker_port = free_port()


@pytest.fixture(scope="module")
def prio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prio]:
    """A worker with two slots (one batch row and one row of headroom), started by the first test; KEY_A
    may use priority 0, KEY_B has the default ceiling (1). Aging is slow, so it changes no order here."""
    root = tmp_path_factory.mktemp("priorities")
    with launch_stack(root, [{"id": MODEL, "max_batch": 1}], MODEL, worker=False,
                      TEXTGEN_INTERACTIVE_HEADROOM="1", TEXTGEN_PRIORITY_AGING_SECONDS="3600",
                      TEXTGEN_PRIORITY_CEILINGS=json.dumps({KEY_A: 0})) as stack:
        yield Prio(stack)


def _job(client: httpx.Client, **body: object) -> dict:
    resp = client.post("/v1/jobs", json=body)
    assert resp.status_code == 202, resp.text
    return resp.json()


def _refused(resp: httpx.Response) -> None:
    assert resp.status_code == 403, resp.text
    error = resp.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("permission_error", "priority_not_allowed", "priority")
    assert "ceiling" in error["message"]


def test_ceilings_refuse_a_better_priority_than_the_key_may_use_on_every_endpoint(prio: Prio) -> None:
    with prio.stack.client(KEY_B) as b:
        _refused(b.post("/v1/jobs", json={**SHORT, "priority": 0}))
        _refused(b.post("/v1/responses", json={"input": "hi", "priority": 0, "background": True}))
        _refused(b.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                      "priority": 0}))
        _refused(b.post("/v1/batches", json={"items": [{"custom_id": "a", "prompt": "hi"}], "priority": 0}))
        bad = b.post("/v1/jobs", json={**SHORT, "priority": 3})
        assert bad.status_code == 422 and bad.json()["error"]["param"] == "priority", bad.text
        assert b.get("/v1/jobs").json()["data"] == []  # nothing refused was stored
        assert _job(b, **SHORT, priority=1)["priority"] == 1
    with prio.stack.client(KEY_A) as a:
        assert _job(a, **SHORT, priority=0)["priority"] == 0
        assert _job(a, **SHORT)["priority"] == 1  # the default


def test_gauges_report_depth_and_oldest_age_per_lane_and_priority_then_the_worker_takes_p0_first(prio: Prio) -> None:
    stack = prio.stack
    metrics = f"{stack.url}/metrics"
    with stack.client(KEY_A) as a:
        low = _job(a, **SHORT, priority=2)
        high = _job(a, **SHORT, priority=0)
        items = [{"custom_id": "a", "prompt": "one"}, {"custom_id": "b", "prompt": "two"}]
        batch = a.post("/v1/batches", json={"items": items, "max_tokens": 2, "priority": 2})
        assert batch.status_code == 202 and batch.json()["priority"] == 2, batch.text
        time.sleep(1.5)
        queued = scrape(metrics)
        interactive = stack.keys.queue(MODEL, "interactive")

        def depth(lane: str, priority: int) -> float:
            return value(queued, "textgen_queue_priority_depth", lane=lane, priority=str(priority))

        # Waiting: the first test's jobs (p1 from each key, one p0) and this test's p2 and p0; the batch's
        # chunk message waits at bulk priority 2 (its items are sent when a worker dispatches it).
        assert [depth("interactive", p) for p in (0, 1, 2)] == [2, 2, 1]
        assert [depth("bulk", p) for p in (0, 1, 2)] == [0, 0, 1]
        oldest = value(queued, "textgen_queue_oldest_age_seconds", queue=interactive, priority="2")
        assert 1.0 <= oldest < 300, oldest
        assert value(queued, "textgen_queue_oldest_age_seconds", lane="bulk", priority="0") == 0
        assert value(queued, "textgen_jobs_submitted_total", lane="interactive", priority="0") == 2
        assert value(queued, "textgen_jobs_submitted_total", lane="bulk", priority="2") == 2

        # Its Celery slots are counted from the settings of this process: one row plus one of headroom.
        with mock.patch.dict(os.environ, {"TEXTGEN_INTERACTIVE_HEADROOM": "1"}):
            stack.start_worker("worker", TEXTGEN_WORKER_METRICS_PORT=str(prio.worker_port))
        stack.wait_for_worker("worker")
        done = {job["id"]: wait_job(a, job["id"], timeout=600) for job in (low, high)}
        assert all(j["status"] == "succeeded" for j in done.values()), done
        assert done[high["id"]]["timings"]["started_at"] < done[low["id"]]["timings"]["started_at"]
        deadline = time.monotonic() + 300
        while a.get(f"/v1/batches/{batch.json()['id']}").json()["status"] != "completed":
            assert time.monotonic() < deadline, "the priority-2 batch never completed"
            time.sleep(0.5)
    drained = scrape(metrics)
    assert value(drained, "textgen_queue_priority_depth") == 0
    assert value(drained, "textgen_queue_oldest_age_seconds") == 0
    worker = scrape(f"http://127.0.0.1:{prio.worker_port}/metrics")
    assert value(worker, "textgen_jobs_started_total", queue=interactive, priority="0") == 2
    assert value(worker, "textgen_jobs_started_total", queue=stack.keys.queue(MODEL, "bulk"), priority="2") == 2


def test_a_priority_0_job_overtakes_a_waiting_priority_2_job_on_a_busy_worker(prio: Prio) -> None:
    with prio.stack.client(KEY_A) as a:
        # Both of the worker's slots, freed one after the other (a slot freed alone takes one message).
        busy = [_job(a, **{**LONG, "max_tokens": 60, "seed": 1}), _job(a, **LONG)]
        deadline = time.monotonic() + 300
        while any(a.get(f"/v1/jobs/{j['id']}").json()["status"] == "queued" for j in busy):
            assert time.monotonic() < deadline, "the long jobs never started"
            time.sleep(0.1)
        low = _job(a, **SHORT, priority=2)
        high = _job(a, **SHORT, priority=0)
        still = [a.get(f"/v1/jobs/{j['id']}").json()["status"] for j in busy]
        assert still == ["running", "running"], "a long job ended before both short jobs were queued"
        assert a.get(f"/v1/jobs/{low['id']}").json()["status"] == "queued"
        high_done, low_done = wait_job(a, high["id"], timeout=600), wait_job(a, low["id"], timeout=600)
        for j in busy:
            wait_job(a, j["id"], timeout=600)
    assert high_done["status"] == low_done["status"] == "succeeded"
    assert high_done["timings"]["started_at"] < low_done["timings"]["started_at"]
    assert high_done["timings"]["finished_at"] < low_done["timings"]["finished_at"]
