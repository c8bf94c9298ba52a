"""Signed webhooks on the real stack: the worker queues events, the webhook worker signs and
delivers them to a real HTTP receiver on 127.0.0.1, retries, and records every attempt."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
import redis
from standardwebhooks import WebhookVerificationError

from tests.conftest import (
    IDLE_MODEL,
    KEY_A,
    KEY_B,
    KEY_B_WEBHOOK_SECRET,
    WEBHOOK_RETRY_SCHEDULE,
    Stack,
    wait_job,
)
from tests.integration.receiver import Receiver, serve
from textgen_cli.redis_server import free_port
from textgen_core.settings import Settings
from textgen_core.webhook_events.emitter import make_delivery
from textgen_core.webhooks.delivery import Outcome, WebhookDeliverer
from textgen_core.webhooks.records import parse_deliveries

pytestmark = pytest.mark.integration

SHORT = {"temperature": 0, "max_tokens": 6}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from serve()


def secret_of(client: httpx.Client) -> str:
    return str(client.get("/v1/webhooks/secret").json()["secret"])


def submit(client: httpx.Client, **body: object) -> dict:
    resp = client.post("/v1/jobs", json=body)
    assert resp.status_code == 202, resp.text
    return resp.json()


def deliveries(client: httpx.Client, job_id: str, count: int, timeout: float = 60) -> list[dict]:
    """The job's recorded delivery attempts, once there are at least ``count``."""
    deadline = time.monotonic() + timeout
    while True:
        found = client.get(f"/v1/jobs/{job_id}").json()["webhook_deliveries"]
        if len(found) >= count or time.monotonic() > deadline:
            return list(found)
        time.sleep(0.1)


def test_a_completed_job_delivers_one_signed_job_completed(stack: Stack, client: httpx.Client,
                                                           receiver: Receiver) -> None:
    secret = secret_of(client)
    assert secret.startswith("whsec_")
    job = submit(client, prompt="Say hi.", webhook=receiver.url, **SHORT)
    assert job["webhook"] == receiver.url and job["webhook_events_filter"] == ["completed"]
    final = wait_job(client, job["id"])
    assert final["status"] == "succeeded"
    [request] = receiver.wait_for(1)
    payload = request.verify(secret)
    assert request.headers["webhook-id"].startswith("msg_")
    assert request.headers["webhook-signature"].startswith("v1,")
    assert payload["type"] == "job.completed"
    # The payload is the job exactly as GET returns it (deliveries aside, which grow after it was sent).
    as_got = client.get(f"/v1/jobs/{job['id']}").json()
    assert {k: v for k, v in payload.items() if k not in ("type", "webhook_deliveries")} == \
        {k: v for k, v in as_got.items() if k != "webhook_deliveries"}
    [attempt] = deliveries(client, job["id"], 1)
    assert attempt["event"] == "job.completed" and attempt["status_code"] == 204 and attempt["delivered"]
    assert attempt["webhook_id"] == request.headers["webhook-id"] and attempt["error"] is None
    time.sleep(1.5)
    assert len(receiver.requests) == 1, "one event, delivered once"
    metrics = httpx.get(stack.webhook_metrics_url).text
    assert 'textgen_webhook_delivery_attempts_total{event="job.completed",outcome="delivered"}' in metrics


def test_a_tampered_body_or_another_secret_fails_verification(client: httpx.Client, receiver: Receiver) -> None:
    secret = secret_of(client)
    job = submit(client, prompt="Say hi.", webhook=receiver.url, **SHORT)
    [request] = receiver.wait_for(1)
    assert request.verify(secret)["id"] == job["id"]
    tampered = request.body.replace('"status":"succeeded"', '"status":"failed"')
    assert tampered != request.body
    with pytest.raises(WebhookVerificationError):
        from standardwebhooks import Webhook

        Webhook(secret).verify(tampered, request.headers)
    with pytest.raises(WebhookVerificationError):
        request.verify(KEY_B_WEBHOOK_SECRET)


def test_a_500_is_retried_with_the_same_webhook_id(client: httpx.Client, receiver: Receiver) -> None:
    secret = secret_of(client)
    receiver.answer(500)
    job = submit(client, prompt="Say hi.", webhook=receiver.url, **SHORT)
    first, second = receiver.wait_for(2)
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.body == second.body
    assert second.verify(secret)["id"] == job["id"]
    attempts = deliveries(client, job["id"], 2)
    assert [(a["attempt"], a["status_code"], a["delivered"]) for a in attempts] == [(1, 500, False), (2, 204, True)]
    assert attempts[0]["error"] == "HTTP 500"


def test_retry_after_is_honoured(client: httpx.Client, receiver: Receiver) -> None:
    receiver.answer((429, {"Retry-After": "2"}))
    job = submit(client, prompt="Say hi.", webhook=receiver.url, **SHORT)
    first, second = receiver.wait_for(2)
    print(f"retry came {second.at - first.at:.2f}s after a 429 with Retry-After: 2")
    assert second.at - first.at >= 1.9  # never sooner than asked (the schedule alone says 0.5 s)
    assert [a["status_code"] for a in deliveries(client, job["id"], 2)] == [429, 204]


def test_a_dead_receiver_leaves_the_job_succeeded_with_failed_deliveries(client: httpx.Client) -> None:
    dead = f"http://127.0.0.1:{free_port()}/hooks"
    job = submit(client, prompt="Say hi.", webhook=dead, **SHORT)
    assert wait_job(client, job["id"])["status"] == "succeeded"
    expected = 1 + len(WEBHOOK_RETRY_SCHEDULE)
    attempts = deliveries(client, job["id"], expected)
    time.sleep(2)
    final = client.get(f"/v1/jobs/{job['id']}").json()
    assert final["status"] == "succeeded"
    assert len(final["webhook_deliveries"]) == expected == len(attempts), "retries stop when the schedule ends"
    for n, attempt in enumerate(final["webhook_deliveries"], start=1):
        assert attempt["attempt"] == n and not attempt["delivered"] and attempt["status_code"] is None
        assert "ConnectError" in attempt["error"]


def test_other_4xx_stop_and_410_disables_the_url(client: httpx.Client, receiver: Receiver) -> None:
    receiver.answer(400)
    job = submit(client, prompt="Say hi.", webhook=receiver.url, **SHORT)
    [attempt] = deliveries(client, job["id"], 1)
    assert attempt["status_code"] == 400 and attempt["error"].startswith("HTTP 400")
    gone_url = receiver.url + "/gone"
    receiver.answer(410)
    job = submit(client, prompt="Say hi.", webhook=gone_url, **SHORT)
    [attempt] = deliveries(client, job["id"], 1)
    assert attempt["status_code"] == 410
    time.sleep(1.5)
    assert len(receiver.requests) == 2, "neither a 400 nor a 410 is retried"
    refused = client.post("/v1/jobs", json={"prompt": "hi", "webhook": gone_url, **SHORT})
    assert refused.status_code == 422
    assert refused.json()["error"]["param"] == "webhook" and refused.json()["error"]["code"] == "webhook_disabled"
    # Only that URL, and only for this key.
    assert client.post("/v1/jobs", json={"prompt": "hi", "webhook": receiver.url, **SHORT}).status_code == 202
    with httpx.Client(base_url=str(client.base_url), headers={"X-API-Key": KEY_B}) as other:
        assert other.post("/v1/jobs", json={"prompt": "hi", "webhook": gone_url, **SHORT}).status_code == 202


def test_the_filter_is_honoured_start_output_completed(client: httpx.Client, receiver: Receiver) -> None:
    secret = secret_of(client)
    job = submit(client, prompt="Write a long story about a dragon who learns to bake bread.", max_tokens=48,
                 temperature=0.8, seed=3, webhook=receiver.url,
                 webhook_events_filter=["start", "output", "completed"])
    final = wait_job(client, job["id"])
    events = [r.verify(secret) for r in receiver.wait_for_event("job.completed")]
    types = [e["type"] for e in events]
    print(f"events: {types}; generation took {final['timings']['generation_seconds']}s")
    assert types[0] == "job.started" and events[0]["status"] == "running"
    assert types[-1] == "job.completed" and types.count("job.completed") == 1
    outputs = [e for e in events if e["type"] == "job.output"]
    assert outputs, "a generation longer than 500 ms sends output events"
    texts = [e["output"] for e in outputs]
    assert all(final["output"].startswith(t.rstrip()) or t.startswith(final["output"]) for t in texts)
    assert texts == sorted(texts, key=len), "each output event carries more of the text"
    # At most one output event per 500 ms of generation.
    assert len(outputs) <= final["timings"]["generation_seconds"] / 0.5 + 1


def test_a_queued_job_canceled_by_the_api_delivers_one_completed(client: httpx.Client, receiver: Receiver) -> None:
    secret = secret_of(client)
    job = submit(client, prompt="never runs", model=IDLE_MODEL, webhook=receiver.url)
    assert client.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "canceled"
    assert client.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "canceled"
    [request] = receiver.wait_for(1)
    payload = request.verify(secret)
    assert payload["type"] == "job.completed" and payload["status"] == "canceled"
    time.sleep(1.5)
    assert len(receiver.requests) == 1


def test_start_and_output_are_sent_only_when_asked(client: httpx.Client, receiver: Receiver) -> None:
    """A generation long enough for output events sends none with the default filter, and a
    filter of ``start`` alone sends ``job.started`` and nothing else."""
    long = {"prompt": "Write a long story about a dragon who learns to bake bread.", "max_tokens": 24,
            "temperature": 0.8, "seed": 3}
    default = submit(client, **long, webhook=receiver.url + "/default")
    started_only = submit(client, **long, webhook=receiver.url + "/start", webhook_events_filter=["start"])
    finals = [wait_job(client, default["id"], timeout=300), wait_job(client, started_only["id"], timeout=300)]
    assert [f["status"] for f in finals] == ["succeeded", "succeeded"], finals
    assert finals[0]["timings"]["generation_seconds"] > 0.5, "long enough that output events would be due"
    receiver.wait_for(2)
    time.sleep(2)
    got = {(r.path, r.verify(secret_of(client))["type"]) for r in receiver.requests}
    assert sorted(got) == [("/hooks/default", "job.completed"), ("/hooks/start", "job.started")]
    assert len(receiver.requests) == 2


def test_the_secret_is_per_key_stable_and_rotatable(client: httpx.Client, stack: Stack) -> None:
    first = client.get("/v1/webhooks/secret").json()
    assert first["source"] == "generated" and client.get("/v1/webhooks/secret").json() == first
    with stack.client(KEY_B) as other:
        configured = other.get("/v1/webhooks/secret").json()
        assert configured == {"object": "webhook_secret", "secret": KEY_B_WEBHOOK_SECRET, "source": "settings"}
        assert other.post("/v1/webhooks/secret/rotate").status_code == 409
    rotated = client.post("/v1/webhooks/secret/rotate").json()
    assert rotated["secret"] != first["secret"] and client.get("/v1/webhooks/secret").json() == rotated
    assert httpx.get(f"{stack.url}/v1/webhooks/secret").status_code == 401


@pytest.fixture(scope="module")
def strict_api(stack: Stack) -> str:
    """A second API on the same stack with the default guard (private addresses refused)."""
    return stack.start_api("api-strict", TEXTGEN_WEBHOOK_ALLOW_PRIVATE="false")


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/hooks", "http://localhost/hooks", "http://10.1.2.3/",
                                 "http://169.254.169.254/latest/meta-data/", "http://[::1]:8080/",
                                 "http://metadata.google.internal/", "ftp://example.com/hooks", "not a url"])
def test_private_and_non_http_urls_are_refused_unless_allowed(strict_api: str, url: str) -> None:
    resp = httpx.post(f"{strict_api}/v1/jobs", json={"prompt": "hi", "webhook": url},
                      headers={"Authorization": f"Bearer {KEY_A}"})
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["param"] == "webhook" and "webhook" in error["message"]


def test_a_private_url_is_refused_again_at_delivery(stack: Stack, receiver: Receiver) -> None:
    """DNS can change after submit: the webhook worker checks the address again before sending."""
    # Outside development, where loopback receivers are allowed without the setting.
    settings = Settings(_env_file=None, env="test", redis_url=stack.redis_url, key_prefix=stack.keys.prefix,
                        webhook_allow_private=False)
    client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    request = make_delivery(owner="someone", url=receiver.url, event="job.completed",
                            object_id=f"job_{time.monotonic_ns()}", payload={"id": "x"})
    with WebhookDeliverer(client, stack.keys, settings) as deliverer:
        result = deliverer.attempt(request)
    assert result.outcome is Outcome.refused and "non-public" in (result.delivery.error or "")
    assert receiver.requests == []
    [recorded] = parse_deliveries(client.lrange(stack.keys.webhook_deliveries(request.object_id), 0, -1))
    assert recorded.error == result.delivery.error


def test_a_receiver_slower_than_the_timeout_is_retried(stack: Stack, receiver: Receiver) -> None:
    settings = Settings(_env_file=None, redis_url=stack.redis_url, key_prefix=stack.keys.prefix,
                        webhook_allow_private=True, webhook_timeout_seconds=0.5)
    client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    receiver.stall_seconds = 3
    request = make_delivery(owner="someone", url=receiver.url, event="job.completed",
                            object_id=f"job_{time.monotonic_ns()}", payload={"id": "x"})
    with WebhookDeliverer(client, stack.keys, settings) as deliverer:
        result = deliverer.attempt(request)
    # It gave up at the timeout (a ReadTimeout), not when the receiver answered 3 s later.
    assert result.outcome is Outcome.retry and "ReadTimeout" in (result.delivery.error or "")
    assert result.delivery.status_code is None and not result.delivery.delivered
