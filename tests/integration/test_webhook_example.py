"""The example receiver in examples/ against the real stack: it verifies and deduplicates."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Stack, launch_stack
from textgen_cli.redis_server import free_port
from textgen_core.settings import DEFAULT_MODEL_ID
from textgen_core.webhook_events.emitter import make_delivery
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




ROOT = EXAMPLE.parents[1]
WEBHOOKS_DOC = ROOT / "docs" / "webhooks.md"
DEV_KEY = "tg-dev-key"


def documented_webhook_commands() -> list[str]:
    """The ``$`` commands of the webhook example in docs/webhooks.md (continuation lines joined), in order."""
    section = WEBHOOKS_DOC.read_text().split("Delivery rules:", 1)[0]
    commands: list[str] = []
    for block in section.split("```console")[1:]:
        for line in block.split("```", 1)[0].splitlines():
            if line.startswith("$ "):
                commands.append(line[2:])
            elif commands and (commands[-1].endswith("\\") or commands[-1].count("'") % 2):
                commands[-1] += "\n" + line
    return commands


@pytest.fixture(scope="module")
def dev_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack with ``make up``'s defaults: development, the dev key, no TEXTGEN_WEBHOOK_ALLOW_PRIVATE."""
    root = tmp_path_factory.mktemp("devstack")
    with launch_stack(root, [{"id": DEFAULT_MODEL_ID, "max_batch": 4}], DEFAULT_MODEL_ID) as st:
        # The API and the webhook worker are the processes that check receivers: restart both as make up runs them.
        st.stop("webhooks")
        st.stop("api")
        st.env = {**st.env, "TEXTGEN_ENV": "development", "TEXTGEN_API_KEYS": DEV_KEY,
                  "TEXTGEN_WEBHOOK_ALLOW_PRIVATE": "false", "TEXTGEN_WEBHOOK_SECRETS": "{}"}
        st.start_webhook_worker("webhooks-dev")
        st.url = st.start_api("api-dev")
        yield st


def test_the_documented_webhook_example_runs_as_printed_under_make_up_defaults(dev_stack: Stack,
                                                                               tmp_path: Path) -> None:
    secret_cmd, receiver_cmd, submit_cmd, read_cmd = documented_webhook_commands()
    printed_secret = receiver_cmd.split("--secret ", 1)[1].split()[0]
    port = free_port()

    def as_here(command: str) -> str:  # the doc's ports are this stack's; the rest stays as printed
        return command.replace("localhost:8000", dev_stack.url.removeprefix("http://")).replace(
            "9000", str(port)).replace(".venv/bin/python", sys.executable)

    def shell(command: str) -> str:
        done = subprocess.run(["bash", "-c", as_here(command)], capture_output=True, text=True, timeout=60,
                              cwd=ROOT)
        assert done.returncode == 0, done.stderr
        return done.stdout

    secret = json.loads(shell(secret_cmd))["secret"]
    log = tmp_path / "receiver.log"
    with log.open("w") as out:
        proc = subprocess.Popen(["bash", "-c", "exec " + as_here(receiver_cmd).replace(printed_secret, secret)
                                 .removesuffix("&").strip()], stdout=out, stderr=subprocess.STDOUT,
                                cwd=ROOT)
    try:
        wait_line(log, "listening on")
        job = json.loads(shell(submit_cmd))
        assert job["status"] == "queued", job
        wait_line(log, f"job.started {job['id']} running")
        wait_line(log, f"job.completed {job['id']} succeeded")
        expected = [("job.started", True), ("job.completed", True)]
        deadline = time.monotonic() + 30
        while True:  # the attempt is recorded once the receiver's answer is back
            record = json.loads(shell(read_cmd.replace("job_1b8c2770b2e04d091e469a42", job["id"])))
            delivered = [(d["event"], d["delivered"]) for d in record["webhook_deliveries"]]
            if delivered == expected or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert delivered == expected
    finally:
        proc.terminate()
        proc.wait(10)
    # Loopback is all that development allows: other private addresses are refused, naming the setting.
    with dev_stack.client(DEV_KEY) as client:
        refused = client.post("/v1/jobs", json={"prompt": "hi", "webhook": "http://10.1.2.3/"})
    assert refused.status_code == 422
    assert "TEXTGEN_WEBHOOK_ALLOW_PRIVATE=true" in refused.json()["error"]["message"]
    api_log = (dev_stack.logs / "api-dev.log").read_text()
    assert api_log.count("webhooks to loopback receivers (localhost) are allowed") == 1
