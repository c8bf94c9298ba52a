"""A batch chunk whose dispatching worker is SIGKILLed mid-dispatch is sent again by a reaper
within about a lease, and another worker finishes every item exactly once; without the chunk's
lease the unsent items would wait for the broker's visibility timeout (an hour).

To make the kill land mid-dispatch, the first worker pauses before each item message it sends
(``TEXTGEN_TEST_DISPATCH_ITEM_DELAY_SECONDS``, a setting for this test only): a chunk of ITEMS
items takes it ITEMS x DELAY seconds to send, long enough to start a second worker meanwhile.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import Stack, launch_stack
from textgen_core.dispatch import Chunk
from textgen_core.settings import DEFAULT_MODEL_ID

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

MAX_BATCH = 8
ITEMS = 12
DELAY = 20.0  # seconds before each item message: the dispatch takes 240 s
BOUND = 600  # every item done this long after the kill, far below the hour of a redelivery


def item_records(st: Stack, batch_id: str) -> dict[str, dict[str, str]]:
    r = st.redis()
    return {job_id: r.hgetall(st.keys.job(job_id)) for job_id in r.lrange(st.keys.batch_jobs(batch_id), 0, -1)}


def test_a_chunk_whose_dispatcher_was_killed_is_sent_again_and_each_item_runs_once(tmp_path: Path) -> None:
    with launch_stack(tmp_path, [{"id": DEFAULT_MODEL_ID, "max_batch": MAX_BATCH}], DEFAULT_MODEL_ID,
                      worker=False) as st:
        r = st.redis()
        st.start_worker("slow", TEXTGEN_TEST_DISPATCH_ITEM_DELAY_SECONDS=str(DELAY))
        st.wait_for_worker("slow", timeout=900)
        items = [{"custom_id": f"item-{i}", "prompt": f"Name a colour, number {i}."} for i in range(ITEMS)]
        started = time.monotonic()  # the dispatch cannot start before the batch is sent
        with st.client() as api:
            resp = api.post("/v1/batches", json={"items": items, "max_tokens": 4, "temperature": 0})
            assert resp.status_code == 202, resp.text
            batch_id = resp.json()["id"]
            chunk = Chunk(batch_id, DEFAULT_MODEL_ID, 0, ITEMS).member
            st.start_worker("fresh")
            st.wait_for_worker("fresh", timeout=900)
            while not any(rec.get("status") == "succeeded" for rec in item_records(st, batch_id).values()):
                assert time.monotonic() - started < (ITEMS - 2) * DELAY, "no item done while the chunk was sent"
                time.sleep(0.2)
            st.kill("slow")
            killed = time.monotonic()
            deadline_at_kill = r.zscore(st.keys.dispatch, chunk)  # renewed by its heartbeat until now
            # At most one item message per DELAY since the batch was sent: some were never sent.
            assert killed - started < (ITEMS - 1) * DELAY, "the second worker took too long to start"
            done_at_kill = {job_id: rec["worker"] for job_id, rec in item_records(st, batch_id).items()
                            if rec["status"] == "succeeded"}
            redispatched = None
            while (batch := api.get(f"/v1/batches/{batch_id}").json())["status"] != "completed":
                assert time.monotonic() - killed < BOUND, (batch, item_records(st, batch_id))
                if redispatched is None and r.zscore(st.keys.dispatch, chunk) != deadline_at_kill:
                    redispatched = time.monotonic() - killed  # re-armed by a reaper (or already done)
                time.sleep(0.1)
            finished = time.monotonic() - killed
            rows = [json.loads(line) for line in api.get(f"/v1/batches/{batch_id}/results").text.splitlines()
                    if line]
        records = item_records(st, batch_id)
        leftover = r.exists(st.keys.dispatch)
    print(f"\nchunk dispatcher SIGKILLed with {len(done_at_kill)}/{ITEMS} items done; chunk re-sent "
          f"{redispatched or -1:.1f} s after the kill, every item done after {finished:.1f} s "
          f"(lease 10 s, reaper every 1 s here)")
    assert deadline_at_kill is not None and redispatched is not None  # held while sent, then re-sent
    assert batch["request_counts"] == {"total": ITEMS, "completed": ITEMS, "failed": 0, "canceled": 0, "expired": 0}
    assert Counter(row["custom_id"] for row in rows) == Counter(item["custom_id"] for item in items)
    assert all(rec["status"] == "succeeded" for rec in records.values())
    # The re-sent chunk sent every item message again; those already done did nothing.
    for job_id, worker in done_at_kill.items():
        assert (records[job_id]["worker"], records[job_id]["attempts"]) == (worker, "1"), records[job_id]
    # Only the items the killed worker was running ran again.
    reruns = [rec for rec in records.values() if int(rec["attempts"]) > 1]
    assert len(reruns) <= MAX_BATCH and all(rec["worker"] == "fresh@test" for rec in reruns), reruns
    assert not leftover  # the chunk's entry went once it was dispatched
