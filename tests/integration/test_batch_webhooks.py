"""Batch webhooks on the real stack: ``batch.completed`` (and throttled ``batch.progress``) from
JSON, CSV and OpenAI-style batches to a real HTTP receiver on 127.0.0.1, signed, recorded on
the batch, and refused at submit for a private URL unless allowed."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import IDLE_MODEL, KEY_A, Stack
from tests.integration.receiver import Receiver, serve
from textgen_core.webhook_events.outbox import webhook_id_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

FAST = {"temperature": 0, "max_tokens": 8}
# The stack sends batch.progress at most once a second (TEXTGEN_WEBHOOK_BATCH_PROGRESS_SECONDS).
PROGRESS_SECONDS = 1.0


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from serve()


def secret_of(client: httpx.Client) -> str:
    return str(client.get("/v1/webhooks/secret").json()["secret"])


def submitted(resp: httpx.Response) -> dict:
    assert resp.status_code == 202, resp.text
    return dict(resp.json())


def events_of(receiver: Receiver, secret: str, batch_id: str) -> list[tuple[str, dict]]:
    """(webhook-id, verified payload) of every request about ``batch_id``, once batch.completed came."""
    receiver.wait_for_event("batch.completed", timeout=300)
    out = [(r.headers["webhook-id"], r.verify(secret)) for r in receiver.requests]
    return [(wid, p) for wid, p in out if p["id"] == batch_id]


def without_deliveries(data: dict) -> dict:
    return {k: v for k, v in data.items() if k not in ("type", "webhook_deliveries")}


def recorded(client: httpx.Client, batch_id: str, count: int, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = client.get(f"/v1/batches/{batch_id}").json()["webhook_deliveries"]
        if len(found) >= count or time.monotonic() > deadline:
            return list(found)
        time.sleep(0.1)


def test_a_batch_delivers_batch_completed_as_get_returns_it_and_throttled_progress(
        client: httpx.Client, receiver: Receiver) -> None:
    secret = secret_of(client)
    items = [{"custom_id": f"p-{i}", "prompt": f"Name a colour, number {i}."} for i in range(6)]
    batch = submitted(client.post("/v1/batches", json={"items": items, **FAST, "webhook": receiver.url,
                                                       "webhook_events_filter": ["progress", "completed"]}))
    assert batch["webhook"] == receiver.url and batch["webhook_events_filter"] == ["progress", "completed"]
    events = events_of(receiver, secret, batch["id"])
    time.sleep(1.5)
    assert len([e for e in receiver.requests if '"batch.completed"' in e.body]) == 1, "one batch.completed"
    types = [p["type"] for _, p in events]
    print(f"events: {types}")
    assert types[-1] == "batch.completed" and types.count("batch.completed") == 1
    completed_id, done = events[-1]
    assert completed_id == webhook_id_for("batch.completed", batch["id"])
    assert done["status"] == "completed" and done["request_counts"]["completed"] == 6
    as_got = client.get(f"/v1/batches/{batch['id']}").json()
    assert without_deliveries(done) == without_deliveries(as_got), "the payload is the batch as GET returns it"
    progress = [p for _, p in events if p["type"] == "batch.progress"]
    assert progress, "the first item to end sends batch.progress"
    assert all(p["status"] == "in_progress" and p["request_counts"]["completed"] < 6 for p in progress)
    assert len({wid for wid, _ in events}) == len(events), "each event has its own webhook-id"
    took = done["finished_at"] - done["started_at"]
    assert len(progress) <= took / PROGRESS_SECONDS + 1, f"{len(progress)} progress events in {took:.1f}s"
    attempts = recorded(client, batch["id"], len(events))
    assert [a["event"] for a in attempts].count("batch.completed") == 1
    assert all(a["delivered"] and a["status_code"] == 204 for a in attempts)


def test_a_csv_upload_takes_the_webhook_as_form_fields(client: httpx.Client, receiver: Receiver) -> None:
    secret = secret_of(client)
    text = "custom_id,name,category\nsku-1,Merino wool beanie,Accessories\nsku-2,Bamboo board,Kitchen\n"
    batch = submitted(client.post("/v1/batches", files={"file": ("products.csv", text, "text/csv")},
                                  data={"mode": "ecommerce", "max_tokens": "8", "temperature": "0",
                                        "webhook": receiver.url, "webhook_events_filter": "completed"}))
    assert batch["webhook"] == receiver.url and batch["webhook_events_filter"] == ["completed"]
    [(_, done)] = events_of(receiver, secret, batch["id"])
    assert done["type"] == "batch.completed" and done["mode"] == "ecommerce"
    assert done["request_counts"] == {"total": 2, "completed": 2, "failed": 0, "canceled": 0, "expired": 0}
    bad = client.post("/v1/batches", files={"file": ("products.csv", text, "text/csv")},
                      data={"webhook": receiver.url, "webhook_events_filter": "completed,started"})
    assert bad.status_code == 422 and bad.json()["error"]["param"].startswith("webhook_events_filter")


def test_an_openai_style_batch_takes_the_webhook_in_the_body(client: httpx.Client, receiver: Receiver) -> None:
    secret = secret_of(client)
    line = {"custom_id": "req-1", "method": "POST", "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 6}}
    uploaded = client.post("/v1/files", files={"file": ("requests.jsonl", json.dumps(line).encode())},
                           data={"purpose": "batch"})
    assert uploaded.status_code == 200, uploaded.text
    batch = submitted(client.post("/v1/batches", json={
        "input_file_id": uploaded.json()["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h",
        "webhook": receiver.url}))
    [(_, done)] = events_of(receiver, secret, batch["id"])
    assert done["type"] == "batch.completed" and done["status"] == "completed"
    assert done["output_file_id"] == f"file-{batch['id']}-output"


def test_a_canceled_batch_delivers_one_batch_completed(client: httpx.Client, receiver: Receiver) -> None:
    """Items of a model no worker serves stay queued; the cancel ends them and settles the batch."""
    secret = secret_of(client)
    items = [{"custom_id": f"c-{i}", "prompt": "never runs"} for i in range(3)]
    batch = submitted(client.post("/v1/batches", json={"items": items, "model": IDLE_MODEL,
                                                       "webhook": receiver.url}))
    assert client.post(f"/v1/batches/{batch['id']}/cancel").json()["status"] == "canceled"
    [(_, done)] = events_of(receiver, secret, batch["id"])
    assert done["type"] == "batch.completed" and done["status"] == "canceled"
    assert done["request_counts"]["canceled"] == 3
    time.sleep(1.5)
    assert len(receiver.requests) == 1


def test_a_batch_without_a_webhook_sends_nothing(stack: Stack, client: httpx.Client, receiver: Receiver) -> None:
    batch = submitted(client.post("/v1/batches", json={"items": [{"custom_id": "a", "prompt": "Hi."}], **FAST}))
    deadline = time.monotonic() + 300
    while client.get(f"/v1/batches/{batch['id']}").json()["status"] != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert stack.redis().zcard(stack.keys.webhook_outbox) == 0
    assert client.get(f"/v1/batches/{batch['id']}").json()["webhook_deliveries"] == []


@pytest.fixture(scope="module")
def strict_api(stack: Stack) -> str:
    """A second API on the same stack with the default guard (private addresses refused)."""
    return stack.start_api("api-strict-batches", TEXTGEN_WEBHOOK_ALLOW_PRIVATE="false")


def test_a_private_batch_webhook_is_refused_in_every_form_unless_allowed(
        stack: Stack, strict_api: str, receiver: Receiver) -> None:
    headers = {"Authorization": f"Bearer {KEY_A}"}
    private = "http://127.0.0.1:9/hooks"
    with httpx.Client(base_url=strict_api, headers=headers, timeout=30) as strict:
        uploaded = strict.post("/v1/files", files={"file": ("r.jsonl", json.dumps({
            "custom_id": "r", "method": "POST", "url": "/v1/completions",
            "body": {"prompt": "hi", "max_tokens": 4}}).encode())}, data={"purpose": "batch"}).json()
        before = len(strict.get("/v1/batches", params={"limit": 100}).json()["data"])
        answers = [
            strict.post("/v1/batches", json={"items": [{"custom_id": "a", "prompt": "hi"}], "webhook": private}),
            strict.post("/v1/batches", files={"file": ("a.csv", "custom_id,prompt\na,hi\n", "text/csv")},
                        data={"webhook": private}),
            strict.post("/v1/batches", json={"input_file_id": uploaded["id"], "endpoint": "/v1/completions",
                                             "webhook": "http://169.254.169.254/latest/meta-data/"}),
            strict.post("/v1/batches", json={"items": [{"custom_id": "a", "prompt": "hi"}],
                                             "webhook": "ftp://example.com/hooks"}),
        ]
        for resp in answers:
            assert resp.status_code == 422, resp.text
            error = resp.json()["error"]
            assert error["param"] == "webhook" and "webhook" in error["message"]
        assert len(strict.get("/v1/batches", params={"limit": 100}).json()["data"]) == before, "nothing accepted"
    with stack.client() as allowed:  # the stack allows private receivers (TEXTGEN_WEBHOOK_ALLOW_PRIVATE=true)
        submitted(allowed.post("/v1/batches", json={"items": [{"custom_id": "a", "prompt": "hi"}], **FAST,
                                                    "webhook": receiver.url}))
