"""Regression tests for defects found by attacking the API surface on the real stack.

Each test states what a client should get; it fails while the defect is there.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import IDLE_MODEL, KEY_A, Stack, launch_stack
from textgen_cli.redis_server import start_redis
from textgen_core.settings import DEFAULT_MODEL_ID

pytestmark = pytest.mark.integration


def _assert_error(r: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    if param is not None:
        assert error["param"] == param, error
    return error


@pytest.mark.parametrize(("field", "value"), [
    ("background", 1),
    ("store", "yes"),
    ("stream", "false"),
    ("parallel_tool_calls", "true"),
])
def test_response_flags_must_be_json_booleans(stack: Stack, field: str, value: object) -> None:
    """/v1/jobs and the completion routes refuse "true" or 1 for a flag; /v1/responses took them
    (``"store": "no"`` silently deleted the answer, ``"background": 1`` ran it in the background)."""
    body = {"model": IDLE_MODEL, "input": "x", "max_output_tokens": 1, "background": True, field: value}
    with stack.client() as c:
        r = c.post("/v1/responses", json=body)
        if r.status_code == 200:  # the defect: it was accepted; do not leave it queued
            c.post(f"/v1/responses/{r.json()['id']}/cancel")
        _assert_error(r, 400, field)


@pytest.mark.parametrize("header", ["99999999999999999999-0", "1-99999999999999999999"])
def test_a_last_event_id_past_the_stream_id_range_is_a_400(stack: Stack, header: str) -> None:
    """The id pattern takes 20 digits, more than Redis stream ids hold (2**64 - 1): the stream
    answered 200 with an ``error`` event "stream interrupted" instead of refusing the id."""
    with stack.client() as c:
        job = c.post("/v1/jobs", json={"model": IDLE_MODEL, "prompt": "x", "max_tokens": 1}).json()
        try:
            r = c.get(f"/v1/jobs/{job['id']}/stream", headers={"Last-Event-ID": header})
            _assert_error(r, 400, "Last-Event-ID")
            r = c.get(f"/v1/jobs/{job['id']}/stream", params={"last_event_id": header})
            _assert_error(r, 400, "last_event_id")
        finally:
            c.post(f"/v1/jobs/{job['id']}/cancel")


BUDGET = 100


def test_concurrent_batches_stay_within_the_token_budget(start_api: Callable[..., str]) -> None:
    """A batch was checked against the token budget and charged only once accepted; a charge that
    no longer fits is dropped by the limiter, so batches sent at once were all accepted: three of
    60 tokens under a budget of 100."""
    url = start_api("api-review-budget", TEXTGEN_BATCH_TOKENS_PER_DAY=str(BUDGET),
                    TEXTGEN_RATE_LIMIT_REQUESTS_PER_MINUTE="0")
    items = [{"custom_id": c, "prompt": c, "max_tokens": 30} for c in ("a", "b")]  # 60 tokens a batch

    def submit(_: int) -> httpx.Response:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY_A}"}, timeout=120) as c:
            return c.post("/v1/batches", json={"model": IDLE_MODEL, "items": items})

    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(submit, range(3)))
    accepted = [r.json()["id"] for r in answers if r.status_code == 202]
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY_A}"}, timeout=120) as c:
        for batch_id in accepted:
            c.post(f"/v1/batches/{batch_id}/cancel")
    for r in answers:
        assert r.status_code in (202, 429), r.text
    assert len(accepted) * 60 <= BUDGET, f"{len(accepted)} batches of 60 tokens accepted under a budget of {BUDGET}"


def test_textgen_jobs_prints_a_response_id_whole_at_80_columns(stack: Stack) -> None:
    """Responses are listed as jobs, and their ids (``resp_`` + 24 hex digits) are one character
    longer than a job's: the id column is sized for job ids, so at 80 columns a response id was cut
    with an ellipsis as soon as the prompt column had text to fill and could not be pasted into other commands."""
    with stack.client() as c:
        prompt = "Name three fruits and say why each one is good for you."
        response = c.post("/v1/responses", json={"model": IDLE_MODEL, "background": True, "input": prompt}).json()
        try:
            env = {**os.environ, "TEXTGEN_URL": stack.url, "TEXTGEN_API_KEY": KEY_A, "COLUMNS": "80", "NO_COLOR": "1"}
            done = subprocess.run([str(Path(sys.executable).with_name("textgen")), "jobs", "--limit", "1"], env=env,
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr
            assert f" {response['id']} " in done.stdout, done.stdout
        finally:
            c.post(f"/v1/responses/{response['id']}/cancel")


def test_a_batch_refused_when_redis_restarts_mid_submit_leaves_nothing_behind(tmp_path: Path) -> None:
    """Redis restarting while a batch's items are written: the client is told 503 "retry shortly",
    yet the batch stayed in Redis as "validating" with the chunks written so far, their dispatch
    messages stayed queued (that work runs, and runs again when the client retries), and the places
    reserved for all its items among the key's unfinished jobs were never given back (with the
    default cap the key is then refused every job). The cleanup ran while Redis was still down."""
    with launch_stack(tmp_path, [{"id": DEFAULT_MODEL_ID}], DEFAULT_MODEL_ID, worker=False,
                      TEXTGEN_BATCH_CHUNK_SIZE="50",
                      TEXTGEN_MAX_QUEUED_JOBS_PER_KEY="100000", TEXTGEN_RATE_LIMIT_TOKENS_PER_MINUTE="0") as st:
        r = st.redis()
        port = int(st.redis_url.rsplit(":", 1)[1].split("/")[0])
        items = [{"custom_id": str(i), "prompt": "p", "max_tokens": 1} for i in range(20_000)]
        answer: list[httpx.Response] = []

        def submit() -> None:
            with st.client(timeout=240) as c:
                answer.append(c.post("/v1/batches", json={"items": items}))

        with ThreadPoolExecutor(1) as pool:
            sent = pool.submit(submit)
            deadline = time.monotonic() + 120
            batch_id = None
            while batch_id is None and time.monotonic() < deadline:
                found = [k for k in r.scan_iter(st.keys.batch("batch_*")) if r.type(k) == "hash"]
                batch_id = found[0].rsplit(":", 1)[1] if found else None
                time.sleep(0.02)
            assert batch_id is not None, "the batch was never written"
            while r.llen(st.keys.batch_jobs(batch_id)) < 500 and time.monotonic() < deadline:
                time.sleep(0.02)
            st.kill("redis")
            time.sleep(2)
            _, st.procs["redis"] = start_redis(tmp_path / "redis", port)
            sent.result(240)
        r = st.redis()
        status = answer[0].status_code
        if status == 202:  # it got through after all: then it is whole
            assert int(r.llen(st.keys.batch_jobs(batch_id))) == len(items)
            return
        _assert_error(answer[0], 503)
        with st.client() as c:
            deadline = time.monotonic() + 30
            # The API's pooled connections to the old Redis fail once each; the refused batch is removed
            # in the background once Redis answers again.
            while ((got := c.get(f"/v1/batches/{batch_id}")).status_code == 503
                   or got.status_code == 200 and got.json()["status"] == "validating") and time.monotonic() < deadline:
                time.sleep(0.5)
            _assert_error(got, 404)
            assert c.get("/v1/jobs", params={"batch_id": batch_id, "limit": 1}).json()["data"] == []
        pending = {k: int(v) for k in r.scan_iter(st.keys.pending("*")) if (v := r.get(k)) is not None}
        assert all(v == 0 for v in pending.values()), f"unfinished-jobs counts left reserved: {pending}"
