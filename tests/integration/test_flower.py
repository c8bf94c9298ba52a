"""Flower, started as ``textgen flower`` runs it, sees the platform's tasks and asks for a login."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Stack, tail, wait_job
from textgen_cli.processes import flower_command
from textgen_cli.redis_server import free_port
from textgen_core.settings import Settings

pytestmark = pytest.mark.integration

AUTH = ("ops", "flower-test-pw")


@pytest.fixture
def flower(stack: Stack, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    settings = Settings(_env_file=None, flower_basic_auth=":".join(AUTH))
    log = tmp_path / "flower.log"
    proc = subprocess.Popen(flower_command(settings, "127.0.0.1", port),
                            env={**stack.env, "TEXTGEN_FLOWER_BASIC_AUTH": ":".join(AUTH)},
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthcheck", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"flower did not start:\n{tail(log)}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_flower_needs_a_login_and_counts_the_task_events_of_a_job(stack: Stack, flower: str) -> None:
    assert httpx.get(f"{flower}/", timeout=10).status_code == 401
    assert httpx.get(f"{flower}/", auth=AUTH, timeout=10).status_code == 200
    with stack.client() as client:
        resp = client.post("/v1/jobs", json={"prompt": "Say hi.", "max_tokens": 3, "temperature": 0})
        assert resp.status_code == 202
        job_id = resp.json()["id"]
        assert wait_job(client, job_id)["status"] == "succeeded"
    deadline = time.monotonic() + 30
    while True:
        task = httpx.get(f"{flower}/api/task/info/{job_id}", auth=AUTH, timeout=10)
        if task.status_code == 200 and task.json().get("state") == "SUCCESS":
            break
        assert time.monotonic() < deadline, f"flower never saw task {job_id}: {task.status_code} {task.text}"
        time.sleep(0.5)
    # Task events on (worker_send_task_events, task_send_sent_event): sent, received, started, succeeded.
    metrics = httpx.get(f"{flower}/metrics", timeout=10).text
    for event in ("task-sent", "task-received", "task-started", "task-succeeded"):
        assert f'type="{event}"' in metrics, event
