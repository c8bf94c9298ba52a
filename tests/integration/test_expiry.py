"""Expiry: after a mixed workload (jobs, a stream, a conversation, a batch, a webhook, an
idempotent submit, an OpenAI completion) every key of ours in Redis has a TTL, or is one of the
few that ``textgen_core.keys.WITHOUT_TTL`` names with the owner that deletes it."""

from __future__ import annotations

import fnmatch
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import KEY_A, Stack, wait_job
from tests.integration.receiver import Receiver, serve
from textgen_core.settings import Settings

pytestmark = pytest.mark.integration

SHORT = {"temperature": 0, "max_tokens": 8}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from serve()


def accepted(resp: httpx.Response) -> dict:
    assert resp.status_code in (200, 202), resp.text
    return dict(resp.json())


def run_mixed_workload(client: httpx.Client, receiver: Receiver) -> list[str]:
    """Every kind of work the platform keeps state for; returns the job ids."""
    first = accepted(client.post("/v1/jobs", json={"prompt": "Hi, I am Ada.", "conversation_id": "expiry-1",
                                                     **SHORT}))
    assert wait_job(client, first["id"])["status"] == "succeeded"
    second = accepted(client.post("/v1/jobs", json={"prompt": "What is my name?", "conversation_id": "expiry-1",
                                                      **SHORT}))
    with client.stream("GET", f"/v1/jobs/{second['id']}/stream") as events:
        assert "event: done" in "".join(events.iter_text())
    hooked = accepted(client.post("/v1/jobs", json={"prompt": "Say yes.", "webhook": receiver.url, **SHORT},
                                  headers={"Idempotency-Key": "expiry-hooked"}))
    assert wait_job(client, hooked["id"])["status"] == "succeeded"
    receiver.wait_for_event("job.completed")
    batch = accepted(client.post("/v1/batches", json={"items": [{"custom_id": f"e-{i}", "prompt": f"Count to {i}."}
                                                                for i in (1, 2)], **SHORT}))
    deadline = time.monotonic() + 300
    while client.get(f"/v1/batches/{batch['id']}").json()["status"] != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert client.get(f"/v1/batches/{batch['id']}/results").status_code == 200
    chat = accepted(client.post("/v1/chat/completions", json={
        "model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}))
    assert chat["choices"][0]["message"]["content"] is not None
    return [first["id"], second["id"], hooked["id"]]


def test_every_key_has_a_ttl_or_a_named_owner(stack: Stack, client: httpx.Client, receiver: Receiver) -> None:
    job_ids = run_mixed_workload(client, receiver)
    time.sleep(2)  # webhook bookkeeping after the delivery
    r = stack.redis()
    owned = stack.keys.without_ttl()
    settings = Settings(_env_file=None)
    kinds: Counter[str] = Counter()
    forever: list[str] = []
    for key in r.scan_iter(match=f"{stack.keys.prefix}*", count=500):
        ttl = r.ttl(key)
        kind = key.removeprefix(stack.keys.prefix).strip(":.").split(":")[0]
        if ttl == -1:
            owner = next((o for pattern, o in owned.items() if fnmatch.fnmatchcase(key, pattern)), None)
            kinds[f"{kind} (owner)"] += 1
            if owner is None:
                forever.append(key)
        elif ttl >= 0:
            kinds[f"{kind} (ttl)"] += 1
    print(f"\nkeys after the workload: {dict(sorted(kinds.items()))}")
    assert forever == [], f"keys without a TTL and without an owner in textgen_core.keys.WITHOUT_TTL: {forever}"
    # The records expire per the settings.
    for job_id in job_ids:
        assert settings.job_ttl_seconds - 600 < r.ttl(stack.keys.job(job_id)) <= settings.job_ttl_seconds
        assert 0 < r.ttl(stack.keys.tokens(job_id)) <= settings.stream_ttl_seconds
    owner = settings.owner_id(KEY_A)
    assert 0 < r.ttl(stack.keys.history(owner, "expiry-1")) <= settings.history_ttl_seconds
