"""Aging on the real stack: a priority-2 job that waited two aging periods on the broker is taken
before a newer priority-0 job when a slot of the busy worker comes free."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from unittest import mock

import httpx
import pytest

from tests.conftest import KEY_A, Stack, launch_stack, wait_job
from textgen_core.settings import DEFAULT_MODEL_ID

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

MODEL = DEFAULT_MODEL_ID
AGING_SECONDS = 2
SHORT = {"prompt": "Say hi.", "max_tokens": 4, "temperature": 0}
LONG = {"prompt": "Write a very long and detailed essay about the history of lighthouses, with many sections.",
        "max_tokens": 300, "temperature": 0.8, "seed": 7}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A worker with two slots (one batch row, one row of headroom); waiting jobs age fast."""
    root = tmp_path_factory.mktemp("aging")
    with mock.patch.dict(os.environ, {"TEXTGEN_INTERACTIVE_HEADROOM": "1"}), \
            launch_stack(root, [{"id": MODEL, "max_batch": 1}], MODEL, TEXTGEN_INTERACTIVE_HEADROOM="1",
                         TEXTGEN_PRIORITY_AGING_SECONDS=str(AGING_SECONDS),
                         TEXTGEN_PRIORITY_CEILINGS=f'{{"{KEY_A}": 0}}') as st:
        yield st


def _job(client: httpx.Client, **body: object) -> dict:
    resp = client.post("/v1/jobs", json=body)
    assert resp.status_code == 202, resp.text
    return resp.json()


def test_an_aged_priority_2_job_runs_before_a_newer_priority_0_job(stack: Stack) -> None:
    with stack.client(KEY_A) as a:
        busy = [_job(a, **{**LONG, "max_tokens": 200, "seed": 1}), _job(a, **LONG)]
        deadline = time.monotonic() + 300
        while any(a.get(f"/v1/jobs/{j['id']}").json()["status"] == "queued" for j in busy):
            assert time.monotonic() < deadline, "the long jobs never started"
            time.sleep(0.1)
        old = _job(a, **SHORT, priority=2)
        time.sleep(2 * AGING_SECONDS + 2)  # two aging periods and a few promotion passes
        new = _job(a, **SHORT, priority=0)
        still = [a.get(f"/v1/jobs/{j['id']}").json()["status"] for j in busy]
        assert still == ["running", "running"], "a long job ended before the short jobs were both queued"
        old_done, new_done = wait_job(a, old["id"], timeout=600), wait_job(a, new["id"], timeout=600)
        for j in busy:
            wait_job(a, j["id"], timeout=600)
    assert old_done["status"] == new_done["status"] == "succeeded"
    assert old_done["timings"]["started_at"] < new_done["timings"]["started_at"]
