"""No lost completion event: a process killed (SIGKILL) right after the Lua call that ended a job
or batch, before it queued the event, still gets its ``job.completed``/``batch.completed``
delivered, by the webhook worker's outbox sweeper, under the event's one webhook-id."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import IDLE_MODEL, Stack
from tests.integration.receiver import Receiver, serve
from textgen_core.jobs import JobStatus
from textgen_core.store import JobStore
from textgen_core.webhook_events.outbox import member, webhook_id_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

# Claims a job, ends it with the real finish script, and dies by SIGKILL in the store's
# on_terminal hook: the exact moment between the terminal transition and queueing the event.
DIE_AFTER_FINISH = textwrap.dedent("""
    import os, signal, sys
    import redis
    from textgen_core.jobs import JobStatus
    from textgen_core.keys import Keys
    from textgen_core.store import JobStore

    url, prefix, job_id = sys.argv[1:4]
    store = JobStore(redis.Redis.from_url(url, decode_responses=True), Keys(prefix), job_ttl=3600,
                     stream_ttl=600, stream_maxlen=1000)
    store.on_terminal = lambda _: os.kill(os.getpid(), signal.SIGKILL)
    assert store.claim(job_id, worker="doomed", attempt_token="t1", max_attempts=3).owned
    store.finish(store.get(job_id), attempt_token="t1", status=JobStatus.succeeded,
                 fields={"output": "written by a process that died", "finish_reason": "stop"})
    print("not reached")
""")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from serve()


def die_after_finishing(stack: Stack, job_id: str) -> None:
    run = subprocess.run([sys.executable, "-c", DIE_AFTER_FINISH, stack.redis_url, stack.keys.prefix, job_id],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == -signal.SIGKILL, run.stdout + run.stderr
    assert "not reached" not in run.stdout


def test_a_process_killed_after_finishing_a_job_loses_no_job_completed(
        stack: Stack, client: httpx.Client, receiver: Receiver) -> None:
    secret = client.get("/v1/webhooks/secret").json()["secret"]
    # A model no worker serves: the job waits, queued, for the process below to take it.
    job = client.post("/v1/jobs", json={"prompt": "hi", "model": IDLE_MODEL, "webhook": receiver.url}).json()
    r = stack.redis()
    die_after_finishing(stack, job["id"])
    ended_at = time.time()
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "succeeded"
    [request] = receiver.wait_for(1, timeout=60)
    print(f"job.completed arrived {request.at - ended_at:.1f}s after the process died (grace 2 s)")
    payload = request.verify(secret)
    assert payload["type"] == "job.completed" and payload["id"] == job["id"]
    assert payload["output"] == "written by a process that died"
    assert request.headers["webhook-id"] == webhook_id_for("job.completed", job["id"])
    deadline = time.monotonic() + 30
    while not (got := client.get(f"/v1/jobs/{job['id']}").json())["webhook_deliveries"]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert got["webhook_deliveries"][0]["delivered"] and got["status"] == "succeeded"
    assert r.zscore(stack.keys.webhook_outbox, member("job.completed", job["id"])) is None, "the entry is gone"
    metrics = httpx.get(stack.webhook_metrics_url).text
    assert "textgen_webhook_outbox_resent_total" in metrics
    resent = [line for line in metrics.splitlines() if line.startswith("textgen_webhook_outbox_resent_total")]
    assert float(resent[0].split()[-1]) >= 1

    # A sweeper that died after queueing but before removing the entry sends it again: same
    # webhook-id, same body, so a receiver that deduplicates on webhook-id acts once.
    r.zadd(stack.keys.webhook_outbox, {member("job.completed", job["id"]): time.time() - 60})
    first, again = receiver.wait_for(2, timeout=60)
    assert again.headers["webhook-id"] == first.headers["webhook-id"]
    assert again.verify(secret)["id"] == job["id"]


def test_a_batch_settled_by_a_killed_process_still_delivers_batch_completed(
        stack: Stack, client: httpx.Client, receiver: Receiver) -> None:
    secret = client.get("/v1/webhooks/secret").json()["secret"]
    batch = client.post("/v1/batches", json={"items": [{"custom_id": "only", "prompt": "hi"}], "model": IDLE_MODEL,
                                             "webhook": receiver.url}).json()
    [item_id] = stack.redis().lrange(stack.keys.batch_jobs(batch["id"]), 0, -1)
    die_after_finishing(stack, item_id)
    assert client.get(f"/v1/batches/{batch['id']}").json()["status"] == "completed"
    [request] = receiver.wait_for(1, timeout=60)
    payload = request.verify(secret)
    assert payload["type"] == "batch.completed" and payload["id"] == batch["id"]
    assert payload["request_counts"]["completed"] == 1
    assert request.headers["webhook-id"] == webhook_id_for("batch.completed", batch["id"])
    time.sleep(1.5)
    assert len(receiver.requests) == 1


def test_a_retried_job_ends_with_a_job_completed_of_its_own_webhook_id(
        stack: Stack, client: httpx.Client, receiver: Receiver) -> None:
    """Receivers drop a webhook-id they have seen (the outbox relies on it): the end of a retried job
    is a new event, and must not carry the webhook-id of the failure it was retried from."""
    secret = client.get("/v1/webhooks/secret").json()["secret"]
    job = client.post("/v1/jobs", json={"prompt": "hi", "model": IDLE_MODEL, "webhook": receiver.url}).json()
    store = JobStore(stack.redis(), stack.keys, job_ttl=3600, stream_ttl=600, stream_maxlen=1000)
    # The claim of a job that used up its attempts (the worker's own script) makes it a dead letter.
    assert store.claim(job["id"], worker="gone", attempt_token="t1", max_attempts=0).status is JobStatus.failed
    [failed] = receiver.wait_for(1, timeout=60)
    assert failed.verify(secret)["status"] == "failed"
    assert failed.headers["webhook-id"] == webhook_id_for("job.completed", job["id"])

    assert client.post(f"/v1/jobs/{job['id']}/retry").json()["status"] == "queued"
    assert store.claim(job["id"], worker="second", attempt_token="t2", max_attempts=3).owned
    assert store.finish(store.get(job["id"]), attempt_token="t2", status=JobStatus.succeeded,
                        fields={"output": "the second attempt", "finish_reason": "stop"})
    requests = receiver.wait_for(2, timeout=60)
    succeeded = requests[-1]
    assert succeeded.verify(secret)["output"] == "the second attempt"
    assert succeeded.headers["webhook-id"] != failed.headers["webhook-id"]
