"""A batch item whose message the broker lost still runs.

kombu's Redis transport takes a message off its list and records it as unacked in a second call, so a
worker SIGKILLed between the two loses the message; its item stays ``queued`` with no lease, which the
lease reaper never sees. Here the loss is made exact: the batch's dispatch is done by hand, sending
every item message but one, before any worker runs. The workers' reaper finds the item once the bulk
lists are empty (``textgen_core/orphans.py``) and sends it again.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from celery import Celery

import celeryconfig
from tests.conftest import launch_stack
from textgen_core import messages
from textgen_core.priorities import lane_steps
from textgen_core.queues import step_list
from textgen_core.settings import DEFAULT_MODEL_ID

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def test_a_batch_item_whose_message_was_lost_is_sent_again_and_the_batch_completes(tmp_path: Path) -> None:
    with launch_stack(tmp_path, [{"id": DEFAULT_MODEL_ID}], DEFAULT_MODEL_ID, worker=False) as st:
        r = st.redis()
        items = [{"custom_id": f"c{i}", "prompt": f"Name a fruit, number {i}."} for i in range(3)]
        with st.client() as api:
            resp = api.post("/v1/batches", json={"items": items, "max_tokens": 4, "temperature": 0})
            assert resp.status_code == 202, resp.text
            batch_id = resp.json()["id"]
            ids = r.lrange(st.keys.batch_jobs(batch_id), 0, -1)
            assert len(ids) == 3
            # The dispatch, by hand: its message and chunk taken away, every item message but the first sent.
            queue = st.keys.queue(DEFAULT_MODEL_ID, "bulk")
            r.delete(*[step_list(queue, step) for step in lane_steps("bulk")])
            r.delete(st.keys.dispatch)
            celery = Celery(broker=st.redis_url)
            celery.conf.broker_transport_options = celeryconfig.broker_transport_options
            for job_id in ids[1:]:
                celery.send_task(**messages.batch_item(st.keys, job_id, batch_id, DEFAULT_MODEL_ID).send_options())
            st.start_worker("worker")
            st.wait_for_worker("worker", timeout=600)
            deadline = time.monotonic() + 240
            while (batch := api.get(f"/v1/batches/{batch_id}").json())["status"] != "completed":
                assert time.monotonic() < deadline, batch
                time.sleep(0.5)
            assert batch["request_counts"]["completed"] == 3, batch
            lost = r.hgetall(st.keys.job(ids[0]))
            assert lost["status"] == "succeeded" and lost["attempts"] == "1"
            assert "message the broker lost" in (st.logs / "worker.log").read_text()
