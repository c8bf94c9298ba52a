"""Auth, ownership, validation and the error envelope, against the running API."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from tests.conftest import IDLE_MODEL, KEY_A, KEY_B, Stack, wait_job
from textgen_core.settings import DEFAULT_MODEL_ID

pytestmark = pytest.mark.integration


def assert_envelope(resp: httpx.Response, status: int, param: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param, error
    return error


def test_health_and_ready_need_no_key(stack: Stack) -> None:
    assert httpx.get(f"{stack.url}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{stack.url}/ready").json()
    assert ready["redis"] is True
    assert "worker@test" in ready["workers"]
    # The idle model has no worker, so the platform is not ready for it.
    assert ready["models_missing"] == ["idle-model"]


def test_missing_and_wrong_keys_get_401(stack: Stack) -> None:
    body = {"prompt": "hi"}
    error = assert_envelope(httpx.post(f"{stack.url}/v1/jobs", json=body), 401)
    assert error["code"] == "invalid_api_key"
    assert_envelope(httpx.post(f"{stack.url}/v1/jobs", json=body, headers={"Authorization": "Bearer nope"}), 401)
    assert_envelope(httpx.post(f"{stack.url}/v1/jobs", json=body, headers={"X-API-Key": KEY_A + "x"}), 401)


def test_both_key_headers_work(stack: Stack) -> None:
    body = {"prompt": "hi", "max_tokens": 1}
    assert httpx.post(f"{stack.url}/v1/jobs", json=body, headers={"X-API-Key": KEY_A}).status_code == 202
    assert httpx.post(f"{stack.url}/v1/jobs", json=body,
                      headers={"Authorization": f"Bearer {KEY_B}"}).status_code == 202


def test_another_key_cannot_see_or_cancel_a_job(stack: Stack, client: httpx.Client) -> None:
    job = client.post("/v1/jobs", json={"prompt": "hi", "max_tokens": 2}).json()
    with stack.client(KEY_B) as other:
        assert_envelope(other.get(f"/v1/jobs/{job['id']}"), 404, "job_id")
        assert_envelope(other.post(f"/v1/jobs/{job['id']}/cancel"), 404, "job_id")
        assert_envelope(other.get(f"/v1/jobs/{job['id']}/stream"), 404, "job_id")
    assert wait_job(client, job["id"])["status"] == "succeeded"


@pytest.mark.parametrize("path", ["/v1/jobs/job_000000000000000000000000", "/v1/jobs/../x",
                                  "/v1/jobs/job_x/stream"])
def test_unknown_jobs_are_404(client: httpx.Client, path: str) -> None:
    assert_envelope(client.get(path), 404)


def test_unknown_job_cancel_and_conversation_are_404(client: httpx.Client) -> None:
    assert_envelope(client.post("/v1/jobs/job_nope/cancel"), 404, "job_id")
    assert_envelope(client.get("/v1/conversations/none-such"), 404, "conversation_id")
    assert_envelope(client.delete("/v1/conversations/none-such"), 404, "conversation_id")


def test_unknown_model_is_404(client: httpx.Client) -> None:
    error = assert_envelope(client.post("/v1/jobs", json={"prompt": "hi", "model": "llama3"}), 404, "model")
    assert error["code"] == "model_not_found"
    # The error names the models that are served, so the caller can correct the name at once.
    assert error["message"] == f"model 'llama3' not found; models served: {DEFAULT_MODEL_ID}, {IDLE_MODEL}"
    batch = client.post("/v1/batches", json={"model": "llama3", "items": [{"custom_id": "a", "prompt": "hi"}]})
    assert assert_envelope(batch, 404, "model")["message"] == error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x" * 32_001}, "prompt"),
        ({"prompt": "hi", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "hi", "max_tokens": 1025}, "max_tokens"),
        ({"prompt": "hi", "temperature": -0.1}, "temperature"),
        ({"prompt": "hi", "temperature": 2.01}, "temperature"),
        ({"prompt": "hi", "top_p": 0}, "top_p"),
        ({"prompt": "hi", "top_p": 1.5}, "top_p"),
        ({"prompt": "hi", "top_k": -1}, "top_k"),
        ({"prompt": "hi", "repetition_penalty": 0}, "repetition_penalty"),
        ({"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"prompt": "hi", "stop": [""]}, "stop"),
        ({"prompt": "hi", "seed": -1}, "seed"),
        ({"prompt": "hi", "mode": "poetry"}, "mode"),
        ({"prompt": "hi", "conversation_id": "has spaces"}, "conversation_id"),
        ({"prompt": "hi", "metadata": {str(i): i for i in range(17)}}, "metadata"),
        ({"prompt": "hi", "unexpected": 1}, "unexpected"),
        ({"prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}, None),
        ({}, None),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        ({"messages": [{"role": "system", "content": "only system"}]}, None),
        ({"prompt": 5}, "prompt"),
    ],
)
def test_validation_bounds(client: httpx.Client, body: dict, param: str | None) -> None:
    error = assert_envelope(client.post("/v1/jobs", json=body), 422, param)
    assert error["type"] == "invalid_request_error"


def test_malformed_json_is_422_not_500(client: httpx.Client) -> None:
    resp = client.post("/v1/jobs", content=b"{not json", headers={"Content-Type": "application/json"})
    assert_envelope(resp, 422)


def test_wait_is_capped_and_validated(client: httpx.Client) -> None:
    assert_envelope(client.get("/v1/jobs/job_x", params={"wait": -1}), 422, "wait")


def test_docs_list_every_endpoint(stack: Stack) -> None:
    spec = httpx.get(f"{stack.url}/openapi.json").json()
    paths = set(spec["paths"])
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel", "/v1/jobs/{job_id}/stream",
            "/v1/conversations/{conversation_id}", "/health", "/ready"} <= paths
    assert spec["components"]["schemas"]["JobCreate"].get("examples")


def test_importing_the_api_does_not_import_torch() -> None:
    code = (
        "import sys, pkgutil, importlib, api\n"
        "for m in pkgutil.walk_packages(api.__path__, 'api.'): importlib.import_module(m.name)\n"
        "import api.main\n"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cache_stats_are_for_operator_keys_only(stack: Stack) -> None:
    # The figures cover every key; the operator key (by default the first configured) reads them.
    assert stack.client(KEY_A).get("/v1/cache/stats").status_code == 200
    error = assert_envelope(stack.client(KEY_B).get("/v1/cache/stats"), 403)
    assert error["code"] == "operator_only" and error["type"] == "permission_error"
