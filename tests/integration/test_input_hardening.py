"""Hostile and unusual input: size, depth, numbers, unicode, prompt length in tokens."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import wait_job
from tests.integration.test_api_contract import assert_envelope

pytestmark = pytest.mark.integration

JSON = {"Content-Type": "application/json"}


def test_oversized_body_is_413(client: httpx.Client) -> None:
    huge = json.dumps({"prompt": "x" * (1024 * 1024 + 10)})
    error = assert_envelope(client.post("/v1/jobs", content=huge, headers=JSON), 413)
    assert error["code"] == "request_too_large"


def test_oversized_chunked_body_is_413(client: httpx.Client) -> None:
    def chunks():  # no Content-Length: the limit is enforced while reading
        yield b'{"prompt": "'
        for _ in range(300):
            yield b"y" * 4096
        yield b'"}'

    assert_envelope(client.post("/v1/jobs", content=chunks(), headers=JSON), 413)


@pytest.mark.parametrize("depth", [33, 100_000])
def test_deeply_nested_json_is_refused(client: httpx.Client, depth: int) -> None:
    body = '{"prompt": "hi", "metadata": {"a": ' + "[" * depth + "]" * depth + "}}"
    error = assert_envelope(client.post("/v1/jobs", content=body, headers=JSON), 400)
    assert error["code"] == "json_too_deep"


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ('{"prompt": "hi", "metadata": {"x": NaN}}', "invalid_number"),
        ('{"prompt": "hi", "temperature": Infinity}', "invalid_number"),
        ('{"prompt": "hi", "metadata": {"x": 1e999}}', "invalid_number"),
        ('{"prompt": "a\\ud800b"}', "invalid_unicode"),
        ('{"prompt": "hi", "metadata": {"\\udfff": 1}}', "invalid_unicode"),
    ],
)
def test_unstorable_json_is_422(client: httpx.Client, raw: str, code: str) -> None:
    assert assert_envelope(client.post("/v1/jobs", content=raw, headers=JSON), 422)["code"] == code


@pytest.mark.parametrize("raw", ['{"prompt": "hi", "max_tokens": ' + "9" * 5000 + "}", "[" * 50_000, "\xff\xfe"])
def test_unparseable_json_is_4xx(client: httpx.Client, raw: str) -> None:
    resp = client.post("/v1/jobs", content=raw.encode("latin-1"), headers=JSON)
    assert 400 <= resp.status_code < 500
    assert set(resp.json()["error"]) == {"message", "type", "code", "param"}


def test_unicode_and_control_characters_round_trip(client: httpx.Client) -> None:
    prompt = "Caf\u00e9 \u202eRTL\u202c na\u0303o \U0001f600 \u4f60\u597d \x00\x01\x1b[31m tab\tnew\nline"
    resp = client.post("/v1/jobs", json={"prompt": prompt, "max_tokens": 2, "temperature": 0,
                                         "metadata": {"\u00e9t\u00e9": "\U0001f31e"}})
    assert resp.status_code == 202, resp.text
    job = wait_job(client, resp.json()["id"])
    assert job["status"] == "succeeded"
    assert job["input"]["prompt"] == prompt
    assert job["metadata"] == {"\u00e9t\u00e9": "\U0001f31e"}


def test_prompt_longer_than_the_context_is_422_naming_the_maximum(client: httpx.Client) -> None:
    error = assert_envelope(client.post("/v1/jobs", json={"prompt": "7 " * 5000}), 422, "prompt")
    assert error["code"] == "context_length_exceeded"
    assert "8192" in error["message"] and "at most 8064 prompt tokens" in error["message"]
    messages = [{"role": "user", "content": "7 " * 2000}] * 3
    error = assert_envelope(client.post("/v1/jobs", json={"messages": messages, "max_tokens": 1000}), 422,
                            "messages")
    assert "at most 7192 prompt tokens" in error["message"]


def test_a_prompt_that_fits_only_without_a_big_max_tokens(client: httpx.Client) -> None:
    body = {"prompt": "7 " * 3700, "max_tokens": 1024}
    error = assert_envelope(client.post("/v1/jobs", json=body), 422, "prompt")
    assert "max_tokens=1024" in error["message"] and "at most 7168 prompt tokens" in error["message"]


def test_wrong_method_is_405_naming_every_allowed_method(client: httpx.Client) -> None:
    resp = client.request("PUT", "/v1/conversations/order-1")
    assert_envelope(resp, 405)
    assert resp.headers["Allow"] == "DELETE, GET"
