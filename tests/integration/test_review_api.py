"""Regression tests for defects found by attacking the API surface on the real stack.

Each test states what a client should get; it fails while the defect is there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import IDLE_MODEL, KEY_A, Stack

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
    """A batch is checked against the tokens-per-minute budget and charged only once accepted; a
    charge that no longer fits is dropped by the limiter, so batches sent at once were all
    accepted: three of 60 tokens under a budget of 100."""
    url = start_api("api-review-budget", TEXTGEN_RATE_LIMIT_TOKENS_PER_MINUTE=str(BUDGET),
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
