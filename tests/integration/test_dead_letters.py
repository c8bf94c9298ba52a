"""Dead letters on the real stack: a job that used up its attempts (it "killed" its worker, here with
SIGKILL) is listed under ``GET /v1/jobs?status=failed`` and counted per queue in the worker's
metrics; ``POST /v1/jobs/{id}/retry`` runs it again under the same id, once however many retries
arrive together, and only for the key that owns it.

The stack here allows one attempt per job and starts its workers itself.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import KEY_B, Stack, launch_stack, wait_job
from textgen_cli.redis_server import free_port
from textgen_core.jobs import JobStatus
from textgen_core.settings import DEFAULT_MODEL_ID
from textgen_core.store import JobStore

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]

LONG = {"prompt": "Write a very long and detailed essay about the history of lighthouses, with many sections.",
        "max_tokens": 64, "temperature": 0.8, "seed": 7}


@pytest.fixture(scope="module")
def letters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("dead-letters")
    with launch_stack(root, [{"id": DEFAULT_MODEL_ID, "max_batch": 4}], DEFAULT_MODEL_ID, worker=False,
                      TEXTGEN_MAX_ATTEMPTS="1") as st:
        yield st


def wait_running(st: Stack, job_id: str, timeout: float = 240) -> dict[str, str]:
    r = st.redis()
    deadline = time.monotonic() + timeout
    while True:
        job = r.hgetall(st.keys.job(job_id))
        if job.get("status") == "running" and r.xlen(st.keys.tokens(job_id)) >= 1:
            return job
        assert time.monotonic() < deadline, f"job not running: {job}"
        time.sleep(0.05)


def worker_samples(port: int) -> dict[tuple[str, str, str], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    return {(s.name, s.labels.get("queue", ""), s.labels.get("reason", "")): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_a_job_that_used_up_its_attempts_is_listed_and_retried_once_to_success(letters: Stack) -> None:
    api = letters.client()
    letters.start_worker("gen1")
    letters.wait_for_worker("gen1")
    ok = api.post("/v1/jobs", json={"prompt": "Say hi.", "max_tokens": 4}).json()["id"]
    assert wait_job(api, ok)["status"] == "succeeded"
    job_id = api.post("/v1/jobs", json=LONG).json()["id"]
    wait_running(letters, job_id)
    letters.kill("gen1")  # the job "kills" its worker: its one attempt is used up
    port = free_port()
    # The supervisor restarts it; its reaper hands the job back, and the claim gives up on it.
    letters.start_worker("gen2", TEXTGEN_WORKER_METRICS_PORT=str(port))
    failed = wait_job(api, job_id, timeout=300)
    assert failed["status"] == "failed" and failed["error"]["type"] == "max_attempts_exceeded", failed

    # Listed as a dead letter, with cursor paging, for its key only.
    page = api.get("/v1/jobs", params={"status": "failed", "limit": 1}).json()
    assert [j["id"] for j in page["data"]] == [job_id]
    assert ok not in [j["id"] for j in page["data"]]
    more = api.get("/v1/jobs", params={"status": "failed", "limit": 1, "after": page["last_id"]}).json()
    assert more["data"] == [] and more["has_more"] is False
    with letters.client(KEY_B) as other:
        assert other.get("/v1/jobs", params={"status": "failed"}).json()["data"] == []
        resp = other.post(f"/v1/jobs/{job_id}/retry")
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "job_not_found"
    queue = letters.keys.queue(DEFAULT_MODEL_ID, "interactive")
    letters.wait_for_worker("gen2")
    assert worker_samples(port)[("textgen_dead_letters_total", queue, "max_attempts")] == 1

    # Two retries at once: one new attempt; the other is told the job is no longer failed.
    with ThreadPoolExecutor(2) as pool:
        replies = list(pool.map(lambda _: api.post(f"/v1/jobs/{job_id}/retry"), range(2)))
    assert sorted(r.status_code for r in replies) == [200, 409], [r.text for r in replies]
    retried = next(r.json() for r in replies if r.status_code == 200)
    assert retried["id"] == job_id and retried["status"] == "queued"
    assert retried["error"] is None and retried["attempts"] == 0 and retried["output"] is None
    refused = next(r.json() for r in replies if r.status_code == 409)
    assert refused["error"]["code"] == "job_not_failed"

    done = wait_job(api, job_id, timeout=600)  # a loaded CPU may take seconds per token
    assert done["status"] == "succeeded" and done["attempts"] == 1 and done["output"], done
    assert done["worker"] == "gen2@test" and done["error"] is None
    streamed = letters.redis().xrange(letters.keys.tokens(job_id))
    assert "".join(f.get("d", "") for _, f in streamed) == done["output"]  # this attempt's text only
    assert [f["end"] for _, f in streamed if "end" in f] == ["succeeded"]
    assert api.get("/v1/jobs", params={"status": "failed"}).json()["data"] == []
    resp = api.post(f"/v1/jobs/{job_id}/retry")
    assert resp.status_code == 409 and "succeeded" in resp.json()["error"]["message"]
    api_metrics = httpx.get(f"{letters.url}/metrics").text
    assert f'textgen_jobs_retried_total{{model="{DEFAULT_MODEL_ID}",queue="{queue}"}} 1.0' in api_metrics
    # Its place among the key's unfinished jobs was taken again by the retry and given back at the end.
    assert list(letters.redis().scan_iter(match=f"{letters.keys.prefix}:pending:*")) == []


def test_a_retry_takes_from_the_token_budget_and_meets_the_unfinished_jobs_cap(tmp_path: Path) -> None:
    """A retry is new work: it must not carry a key past its unfinished-jobs cap or its tokens per
    minute, which a new job with the same body would meet. No worker runs: jobs stay queued."""
    with launch_stack(tmp_path, [{"id": DEFAULT_MODEL_ID}], DEFAULT_MODEL_ID, worker=False,
                      TEXTGEN_MAX_QUEUED_JOBS_PER_KEY="2", TEXTGEN_RATE_LIMIT_TOKENS_PER_MINUTE="16") as st, \
            st.client() as api:
        def submit() -> str:
            resp = api.post("/v1/jobs", json={"prompt": "Say hi.", "max_tokens": 4})
            assert resp.status_code == 202, resp.text
            return resp.json()["id"]

        dead = submit()
        # The claim of a job that used up its attempts (the worker's own script) makes it a dead letter.
        store = JobStore(st.redis(), st.keys, job_ttl=3600, stream_ttl=3600, stream_maxlen=100, lease_seconds=10)
        assert store.claim(dead, worker="gone@test", attempt_token="t", max_attempts=0).status is JobStatus.failed
        second, third = submit(), submit()  # 12 of the 16 tokens; the cap of 2 unfinished jobs is reached

        resp = api.post(f"/v1/jobs/{dead}/retry")
        assert resp.status_code == 429 and resp.json()["error"]["code"] == "too_many_queued_jobs", resp.text
        assert api.get(f"/v1/jobs/{dead}").json()["status"] == "failed"

        assert api.post(f"/v1/jobs/{third}/cancel").json()["status"] == "canceled"
        resp = api.post(f"/v1/jobs/{dead}/retry")  # the refusal gave its tokens back: 16 of 16 now
        assert resp.status_code == 200 and resp.json()["status"] == "queued", resp.text

        assert api.post(f"/v1/jobs/{second}/cancel").json()["status"] == "canceled"
        resp = api.post("/v1/jobs", json={"prompt": "Say hi.", "max_tokens": 4})
        assert resp.status_code == 429 and resp.json()["error"]["code"] == "rate_limit_exceeded", resp.text
