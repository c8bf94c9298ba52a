"""Deadlines on the real stack: a job not started by its deadline ends ``expired`` without running, even
behind a busy worker; one running is stopped with its text so far; a batch whose completion window
passes ends ``expired`` with its unfinished items counted.

The stack here has one worker with one batch row (and so two task slots): two long jobs keep it busy.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.conftest import IDLE_MODEL, KEY_A, Stack, launch_stack, wait_job
from textgen_core.settings import DEFAULT_MODEL_ID

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

# Runs for minutes on a CPU unless stopped: it keeps the worker busy. (A "never stop" prompt met
# end-of-text within 12-70 tokens in bf16; counting to 1000 runs to max_tokens, greedy or sampled.)
LONG = {"prompt": "List the numbers from 1 to 1000, separated by commas.", "max_tokens": 1024,
        "temperature": 0.8, "seed": 3}


@pytest.fixture(scope="module")
def busy_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("deadlines")
    models = [{"id": DEFAULT_MODEL_ID, "max_batch": 1},
              {"id": IDLE_MODEL, "source": "local", "location": str(root / "nowhere")}]
    # The worker's task slots are counted from the settings this process reads: 1 row + 1 headroom.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TEXTGEN_INTERACTIVE_HEADROOM", "1")
        with launch_stack(root, models, DEFAULT_MODEL_ID, TEXTGEN_INTERACTIVE_HEADROOM="1",
                          TEXTGEN_DEADLINE_SWEEP_SECONDS="0.5") as st:
            yield st


@pytest.fixture
def api(busy_stack: Stack) -> Iterator[httpx.Client]:
    with busy_stack.client() as c:
        yield c


def submit(api: httpx.Client, headers: dict[str, str] | None = None, **body: object) -> dict:
    resp = api.post("/v1/jobs", json=body, headers=headers or {})
    assert resp.status_code == 202, resp.text
    return resp.json()


def wait_status(st: Stack, job_id: str, status: str, timeout: float = 240, deltas: int = 0) -> dict[str, str]:
    r = st.redis()
    deadline = time.monotonic() + timeout
    while True:
        job = r.hgetall(st.keys.job(job_id))
        if job.get("status") == status and r.xlen(st.keys.tokens(job_id)) >= deltas:
            return job
        assert time.monotonic() < deadline, f"job not {status}: {job}"
        time.sleep(0.05)


def test_a_queued_job_behind_a_busy_worker_expires_at_its_deadline_without_running(
        busy_stack: Stack, api: httpx.Client) -> None:
    blockers = [submit(api, **LONG)["id"] for _ in range(2)]  # both of the worker's task slots
    try:
        for job_id in blockers:
            wait_status(busy_stack, job_id, "running")
        job = submit(api, headers={"Cancel-After": "2s"}, prompt="Say hi.", max_tokens=8)
        assert job["status"] == "queued" and job["deadline_at"] == pytest.approx(job["timings"]["created_at"] + 2)
        ended = wait_job(api, job["id"], timeout=30)
        late = ended["timings"]["finished_at"] - ended["deadline_at"]
        print(f"\nexpired {late:.2f} s after its deadline")
        assert ended["status"] == "expired", ended
        assert ended["finish_reason"] == "deadline" and ended["error"]["type"] == "deadline_exceeded"
        assert ended["timings"]["started_at"] is None and ended["attempts"] == 0 and ended["worker"] is None
        assert late < 5  # the sweeper, not the worker that is busy for minutes yet
        for job_id in blockers:  # the worker was busy with both when the sweeper expired the job
            blocker = api.get(f"/v1/jobs/{job_id}").json()  # (a sampled one may since have met end-of-text)
            assert blocker["status"] == "running" or (
                blocker["status"] == "succeeded"
                and blocker["timings"]["finished_at"] > ended["timings"]["finished_at"]), blocker
        events = api.get(f"/v1/jobs/{job['id']}/stream").text
        assert "event: done" in events and '"status":"expired"' in events
    finally:
        for job_id in blockers:
            api.post(f"/v1/jobs/{job_id}/cancel")
    for job_id in blockers:
        assert wait_job(api, job_id)["status"] in ("canceled", "succeeded")
    time.sleep(2)  # its message, taken now that a slot is free, finds it ended and runs nothing
    again = api.get(f"/v1/jobs/{job['id']}").json()
    assert again["status"] == "expired" and again["attempts"] == 0


def test_a_job_no_worker_serves_still_expires_at_its_deadline(busy_stack: Stack, api: httpx.Client) -> None:
    job = submit(api, model=IDLE_MODEL, prompt="Say hi.", deadline_seconds=1)
    ended = wait_job(api, job["id"], timeout=20)
    assert ended["status"] == "expired" and ended["finish_reason"] == "deadline"
    assert busy_stack.redis().zscore(busy_stack.keys.deadlines, job["id"]) is None  # swept out
    listed = api.get("/v1/jobs", params={"status": "expired", "limit": 100}).json()
    assert job["id"] in [j["id"] for j in listed["data"]]


def test_a_running_job_is_stopped_at_its_deadline_with_its_text_so_far(busy_stack: Stack, api: httpx.Client) -> None:
    # A sampled long job usually runs for minutes, but it may meet an end-of-text token before
    # its deadline; such a run proves nothing about deadlines, so another seed is tried.
    for seed in (3, 11, 29, 41):
        job = submit(api, **{**LONG, "seed": seed}, deadline_seconds=8)
        wait_status(busy_stack, job["id"], "running", deltas=1, timeout=60)
        ended = wait_job(api, job["id"], timeout=60)
        if ended["status"] != "succeeded":
            break
        assert ended["timings"]["finished_at"] < ended["deadline_at"], ended  # it ended by itself, in time
    assert ended["status"] == "expired", ended
    assert ended["finish_reason"] == "deadline" and ended["error"] is None
    assert ended["output"] and ended["usage"]["completion_tokens"] > 0  # the text it had
    assert ended["timings"]["finished_at"] - ended["deadline_at"] < 10  # at its next step, not at the end
    assert ended["usage"]["completion_tokens"] < LONG["max_tokens"]
    streamed = busy_stack.redis().xrange(busy_stack.keys.tokens(job["id"]))
    assert "".join(f.get("d", "") for _, f in streamed) == ended["output"]
    assert streamed[-1][1] == {"end": "expired"}


def test_bad_deadlines_are_refused_in_the_error_envelope(api: httpx.Client) -> None:
    resp = api.post("/v1/jobs", json={"prompt": "hi"}, headers={"Cancel-After": "soonish"})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "Cancel-After"
    resp = api.post("/v1/jobs", json={"prompt": "hi", "deadline_seconds": 0})
    assert resp.status_code == 422 and resp.json()["error"]["param"] == "deadline_seconds"
    for flag in (True, False):  # JSON true is not one second
        resp = api.post("/v1/jobs", json={"prompt": "hi", "deadline_seconds": flag})
        assert resp.status_code == 422 and resp.json()["error"]["param"] == "deadline_seconds", resp.text
        resp = api.post("/v1/batches", json={"items": [{"custom_id": "a", "prompt": "hi"}], "deadline_seconds": flag})
        assert resp.status_code == 422 and resp.json()["error"]["param"] == "deadline_seconds", resp.text
    resp = api.post("/v1/batches", json={"items": [{"custom_id": "a", "prompt": "hi"}], "completion_window": "1y"})
    assert resp.status_code == 422 and resp.json()["error"]["param"] == "completion_window"
    # Digits of other scripts are not durations (Python's float() would read "٢٤" as 24).
    for window in ("\u0662\u0664h", "\uff11\uff10m", "\u0969\u0966"):
        resp = api.post("/v1/batches", json={"items": [{"custom_id": "a", "prompt": "hi"}],
                                             "completion_window": window})
        assert resp.status_code == 422 and resp.json()["error"]["param"] == "completion_window", resp.text
    assert api.get("/v1/jobs", params={"limit": 1}).status_code == 200


def test_a_batch_whose_completion_window_passes_ends_expired_with_its_items_counted(
        busy_stack: Stack, api: httpx.Client) -> None:
    # One row at a time: some of the six are still running or waiting when the window ends (a sampled
    # item may also end by itself early, so how many expire varies).
    items = [{"custom_id": f"item-{i}", "prompt": LONG["prompt"]} for i in range(6)]
    resp = api.post("/v1/batches", json={"items": items, "max_tokens": 1024, "temperature": 0.8,
                                         "completion_window": "6s"})
    assert resp.status_code == 202, resp.text
    batch = resp.json()
    assert batch["completion_window"] == "6s" and batch["expires_at"] == batch["created_at"] + 6
    deadline = time.monotonic() + 90
    while batch["status"] not in ("completed", "failed", "canceled", "expired") and time.monotonic() < deadline:
        time.sleep(0.5)
        batch = api.get(f"/v1/batches/{batch['id']}").json()
    counts = batch["request_counts"]
    assert batch["status"] == "expired", batch
    assert counts["expired"] >= 1 and counts["completed"] + counts["failed"] + counts["expired"] == 6, counts
    assert batch["expired_at"] is not None and batch["expired_at"] >= batch["expires_at"]
    items_now = api.get("/v1/jobs", params={"batch_id": batch["id"], "limit": 10}).json()["data"]
    assert {j["status"] for j in items_now} <= {"succeeded", "expired"}
    results = api.get(f"/v1/batches/{batch['id']}/results").text.splitlines()
    assert len(results) == 6


def test_an_openai_batch_with_a_short_window_expires_and_lists_its_items_as_batch_expired(
        busy_stack: Stack) -> None:
    lines = [json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                         "body": {"model": IDLE_MODEL, "max_tokens": 4,
                                  "messages": [{"role": "user", "content": "Name a fruit."}]}}) for i in range(3)]
    with openai.OpenAI(base_url=f"{busy_stack.url}/v1", api_key=KEY_A, max_retries=0, timeout=60) as sdk:
        uploaded = sdk.files.create(file=("short.jsonl", "\n".join(lines).encode()), purpose="batch")
        batch = sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                   completion_window="2s")  # type: ignore[arg-type]
        assert batch.completion_window == "2s" and batch.expires_at == batch.created_at + 2
        deadline = time.monotonic() + 60
        while batch.status not in ("completed", "failed", "cancelled", "expired") and time.monotonic() < deadline:
            time.sleep(0.5)
            batch = sdk.batches.retrieve(batch.id)
        assert batch.status == "expired" and batch.expired_at is not None
        assert batch.request_counts is not None and batch.request_counts.total == 3
        assert batch.request_counts.completed == 0 and batch.request_counts.model_extra["expired"] == 3
        assert batch.error_file_id is not None
        errors = [json.loads(x) for x in sdk.files.content(batch.error_file_id).text.splitlines()]
        assert sorted(e["custom_id"] for e in errors) == ["r0", "r1", "r2"]
        assert {e["error"]["code"] for e in errors} == {"batch_expired"}


def test_a_background_response_past_its_deadline_reads_incomplete(busy_stack: Stack) -> None:
    with openai.OpenAI(base_url=f"{busy_stack.url}/v1", api_key=KEY_A, max_retries=0, timeout=60) as sdk:
        created = sdk.responses.create(model=IDLE_MODEL, input="Say hi.", background=True,
                                       extra_headers={"Cancel-After": "1s"})
        assert created.status == "queued"
        deadline = time.monotonic() + 30
        response = created
        while response.status in ("queued", "in_progress") and time.monotonic() < deadline:
            time.sleep(0.5)
            response = sdk.responses.retrieve(created.id)
        assert response.status == "incomplete" and response.error is None
        assert response.incomplete_details is not None and response.incomplete_details.reason == "deadline"
        assert response.output_text == ""
