"""The example receiver in examples/ against the real stack: it verifies and deduplicates."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import Stack
from textgen_cli.redis_server import free_port
from textgen_core.webhooks.events import make_delivery
from textgen_core.webhooks.signing import signed_headers

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "webhook_receiver.py"


def wait_line(log: Path, text: str, timeout: float = 120) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = log.read_text().splitlines()
        if any(text in line for line in lines):
            return lines
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not printed by the receiver:\n{log.read_text()}")


def test_the_example_receiver_verifies_and_deduplicates(stack: Stack, client: httpx.Client,
                                                        tmp_path: Path) -> None:
    secret = client.get("/v1/webhooks/secret").json()["secret"]
    port = free_port()
    log = tmp_path / "receiver.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, str(EXAMPLE), "--port", str(port), "--secret", secret],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_line(log, "listening on")
        url = f"http://127.0.0.1:{port}/"
        job = client.post("/v1/jobs", json={"prompt": "Say hi.", "max_tokens": 6, "temperature": 0,
                                            "webhook": url}).json()
        wait_line(log, f"job.completed {job['id']} succeeded")
        # A retry (same webhook-id) is acknowledged but not handled twice; a forged body is refused.
        request = make_delivery(owner="-", url=url, event="job.completed", object_id="job_x",
                                payload={"id": "job_x", "status": "succeeded"})
        headers = signed_headers(secret, request.webhook_id, request.body)
        assert httpx.post(url, content=request.body, headers=headers).status_code == 204
        assert httpx.post(url, content=request.body, headers=headers).status_code == 204
        forged = request.body.replace("succeeded", "failed")
        assert httpx.post(url, content=forged, headers=headers).status_code == 400
        lines = wait_line(log, "rejected")
        assert sum("job.completed job_x" in line for line in lines) == 1
        assert f"duplicate {request.webhook_id}" in lines
    finally:
        proc.terminate()
        proc.wait(10)


