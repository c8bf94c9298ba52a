"""Idempotency-Key on job creation: a retry never makes a second job."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import IDLE_MODEL, KEY_B, Stack, wait_job

pytestmark = pytest.mark.integration

BODY = {"prompt": "Say hi.", "max_tokens": 2, "temperature": 0}


def post(client: httpx.Client, key: str, body: dict) -> httpx.Response:
    return client.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})


def test_repeat_returns_the_original_job(client: httpx.Client) -> None:
    key = str(uuid.uuid4())
    first = post(client, key, BODY)
    assert first.status_code == 202, first.text
    assert "Idempotent-Replayed" not in first.headers
    again = post(client, key, BODY)
    assert again.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Location"] == first.headers["Location"]
    assert wait_job(client, first.json()["id"])["status"] == "succeeded"
    # Still the same job after it ran; a new key makes a new job.
    assert post(client, key, BODY).json()["id"] == first.json()["id"]
    assert post(client, str(uuid.uuid4()), BODY).json()["id"] != first.json()["id"]


def test_same_key_with_another_body_is_a_conflict(client: httpx.Client) -> None:
    key = str(uuid.uuid4())
    first = post(client, key, {**BODY, "model": IDLE_MODEL})
    assert first.status_code == 202
    conflict = post(client, key, {**BODY, "model": IDLE_MODEL, "max_tokens": 3})
    assert conflict.status_code == 409
    error = conflict.json()["error"]
    assert error["code"] == "idempotency_key_reused" and error["param"] == "Idempotency-Key"
    client.post(f"/v1/jobs/{first.json()['id']}/cancel")


def test_same_key_with_another_cancel_after_is_a_conflict(client: httpx.Client) -> None:
    """The header sets the job's deadline as the body field does: another deadline is another request."""
    key = str(uuid.uuid4())
    body = {**BODY, "model": IDLE_MODEL}
    first = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": key, "Cancel-After": "1h"})
    assert first.status_code == 202, first.text
    again = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": key, "Cancel-After": "1h"})
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    for headers in ({"Cancel-After": "5s"}, {}):
        conflict = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": key, **headers})
        assert conflict.status_code == 409, conflict.text
        assert conflict.json()["error"]["code"] == "idempotency_key_reused"
    client.post(f"/v1/jobs/{first.json()['id']}/cancel")


def test_keys_are_per_api_key(stack: Stack, client: httpx.Client) -> None:
    key = str(uuid.uuid4())
    body = {**BODY, "model": IDLE_MODEL}
    mine = post(client, key, body).json()
    with stack.client(KEY_B) as other:
        theirs = post(other, key, body)
        assert theirs.status_code == 202 and theirs.json()["id"] != mine["id"]
        other.post(f"/v1/jobs/{theirs.json()['id']}/cancel")
    client.post(f"/v1/jobs/{mine['id']}/cancel")


def test_concurrent_repeats_make_one_job(stack: Stack, client: httpx.Client) -> None:
    key = str(uuid.uuid4())
    body = {**BODY, "model": IDLE_MODEL}
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: stack.client().post("/v1/jobs", json=body,
                                                                 headers={"Idempotency-Key": key}), range(8)))
    created = {r.json()["id"] for r in responses if r.status_code == 202}
    assert len(created) == 1
    for r in responses:
        assert r.status_code in (202, 409), r.text
        if r.status_code == 409:
            assert r.json()["error"]["code"] == "idempotency_key_in_use" and r.headers["Retry-After"]
    client.post(f"/v1/jobs/{created.pop()}/cancel")


def test_a_refused_first_request_frees_the_key(client: httpx.Client) -> None:
    key = str(uuid.uuid4())
    assert post(client, key, {**BODY, "model": "no-such-model"}).status_code == 404
    ok = post(client, key, {**BODY, "model": IDLE_MODEL})
    assert ok.status_code == 202
    client.post(f"/v1/jobs/{ok.json()['id']}/cancel")


@pytest.mark.parametrize("bad", ["", "x" * 256, "has space", "tab\tkey"])
def test_malformed_keys_are_422(client: httpx.Client, bad: str) -> None:
    resp = client.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": bad})
    assert resp.status_code == 422
    assert resp.json()["error"]["param"] == "Idempotency-Key"


def _replayed(first: httpx.Response, again: httpx.Response) -> None:
    assert first.status_code == again.status_code and first.status_code in (200, 202), first.text
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]


def test_batches_json_honour_the_key(client: httpx.Client) -> None:
    """Regression: two POSTs with one key made two batches."""
    key = str(uuid.uuid4())
    body = {"model": IDLE_MODEL, "max_tokens": 2, "items": [{"custom_id": "a", "prompt": "waits"}]}
    first = client.post("/v1/batches", json=body, headers={"Idempotency-Key": key})
    again = client.post("/v1/batches", json=body, headers={"Idempotency-Key": key})
    _replayed(first, again)
    assert again.headers["Location"] == first.headers["Location"]
    other = client.post("/v1/batches", json={**body, "max_tokens": 3}, headers={"Idempotency-Key": key})
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"
    assert len([b for b in client.get("/v1/batches", params={"limit": 100}).json()["data"]
                if b["id"] == first.json()["id"]]) == 1
    client.post(f"/v1/batches/{first.json()['id']}/cancel")


def test_batch_uploads_and_files_honour_the_key(client: httpx.Client) -> None:
    """A multipart body differs on every send (its boundary): the upload's fields and file decide."""
    key = str(uuid.uuid4())
    csv = "custom_id,prompt\nr1,waits\n"

    def upload(text: str) -> httpx.Response:
        return client.post("/v1/batches", files={"file": ("in.csv", text, "text/csv")},
                           data={"model": IDLE_MODEL, "max_tokens": "2"}, headers={"Idempotency-Key": key})

    first, again = upload(csv), upload(csv)
    _replayed(first, again)
    assert upload(csv + "r2,waits too\n").status_code == 409
    client.post(f"/v1/batches/{first.json()['id']}/cancel")

    line = {"custom_id": "q1", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": IDLE_MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "waits"}]}}
    file_key = str(uuid.uuid4())
    files = [client.post("/v1/files", files={"file": ("req.jsonl", json.dumps(line))}, data={"purpose": "batch"},
                         headers={"Idempotency-Key": file_key}) for _ in range(2)]
    _replayed(*files)
    batch_key = str(uuid.uuid4())
    body = {"input_file_id": files[0].json()["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    batches = [client.post("/v1/batches", json=body, headers={"Idempotency-Key": batch_key}) for _ in range(2)]
    _replayed(*batches)
    client.post(f"/v1/batches/{batches[0].json()['id']}/cancel")
