"""Hostile and unusual input: size, depth, numbers, unicode, prompt length in tokens."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import KEY_A, KEY_B, Stack, wait_job
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


DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
def test_a_batch_body_that_is_not_json_is_400_saying_to_send_json(client: httpx.Client, content_type: str) -> None:
    for raw in ('{"items": ' + DEEP + "}", '{"items": [{"custom_id": "a", "prompt": "hi", "temperature": NaN}]}'):
        error = assert_envelope(client.post("/v1/batches", content=raw, headers={"Content-Type": content_type}), 400)
        assert error["code"] == "unsupported_content_type"
        assert "Content-Type: application/json" in error["message"] and "multipart/form-data" in error["message"]


def test_a_deep_json_batch_body_is_400(client: httpx.Client) -> None:
    error = assert_envelope(client.post("/v1/batches", content='{"items": ' + DEEP + "}", headers=JSON), 400)
    assert error["code"] == "json_too_deep"


@pytest.mark.parametrize(("line", "expected"), [
    ('{"custom_id": "b", "prompt": "hi", "metadata": ' + DEEP + "}", "nested deeper than 32"),
    ('{"custom_id": "b", "prompt": "hi", "temperature": NaN}', "NaN is not a valid JSON number"),
])
def test_a_bad_jsonl_line_is_400_naming_it(client: httpx.Client, line: str, expected: str) -> None:
    content = (json.dumps({"custom_id": "a", "prompt": "hi"}) + "\n" + line + "\n").encode()
    resp = client.post("/v1/batches", files={"file": ("items.jsonl", content)})
    error = assert_envelope(resp, 400)
    assert error["code"] == "invalid_batch_input" and error["message"].startswith("line 2: ")
    assert expected in error["message"]
    # The same line in an uploaded file, as an OpenAI batch reads it.
    request = json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
                          "body": {"messages": [{"role": "user", "content": "hi"}]}})
    uploaded = client.post("/v1/files", files={"file": ("in.jsonl", f"{request}\n{line}\n".encode())},
                           data={"purpose": "batch"}).json()
    resp = client.post("/v1/batches", json={"input_file_id": uploaded["id"], "endpoint": "/v1/chat/completions",
                                            "completion_window": "24h"})
    error = assert_envelope(resp, 400)
    assert error["message"].startswith("line 2: ") and expected in error["message"]
    # The connection is still good (a RecursionError used to reset it).
    assert client.get("/v1/batches", params={"limit": 1}).status_code == 200


def test_a_form_encoded_job_is_400_saying_to_send_json(client: httpx.Client) -> None:
    resp = client.post("/v1/jobs", data={"prompt": "hi"})
    error = assert_envelope(resp, 400)
    assert error["code"] == "unsupported_content_type"
    assert "Content-Type: application/json" in error["message"] and "application/x-www-form-urlencoded" in \
        error["message"]


def test_malformed_json_names_line_and_column_not_a_byte_offset(client: httpx.Client) -> None:
    error = assert_envelope(client.post("/v1/jobs", content=b'{"prompt": "hi",\n "max_tokens": }', headers=JSON),
                            422)
    assert error["param"] is None and error["code"] == "invalid_json"
    assert "line 2, column 16" in error["message"]


@pytest.mark.parametrize(("body", "param"), [
    ({"prompt": "hi", "max_tokens": True}, "max_tokens"),
    ({"prompt": "hi", "seed": False}, "seed"),
    ({"prompt": "hi", "temperature": True}, "temperature"),
    ({"prompt": "hi", "cache": "yes"}, "cache"),
])
def test_booleans_are_not_numbers_and_flags_are_booleans(client: httpx.Client, body: dict, param: str) -> None:
    assert_envelope(client.post("/v1/jobs", json=body), 422, param)


def test_two_different_keys_are_401(stack: Stack) -> None:
    body = {"prompt": "hi", "max_tokens": 1}
    both = {"Authorization": f"Bearer {KEY_A}", "X-API-Key": KEY_B}
    for path in ("/v1/jobs", "/v1/models"):
        resp = httpx.request("POST" if path == "/v1/jobs" else "GET", f"{stack.url}{path}", headers=both,
                             **({"json": body} if path == "/v1/jobs" else {}))
        error = assert_envelope(resp, 401)
        assert error["code"] == "invalid_api_key" and "two different API keys" in error["message"]
    same = {"Authorization": f"Bearer {KEY_A}", "X-API-Key": KEY_A}
    assert httpx.post(f"{stack.url}/v1/jobs", json=body, headers=same).status_code == 202


def test_a_succeeded_job_with_no_text_shows_an_empty_string(client: httpx.Client) -> None:
    body = {"prompt": "Name a colour.", "temperature": 0, "max_tokens": 1}
    first = wait_job(client, client.post("/v1/jobs", json=body).json()["id"])
    assert first["status"] == "succeeded" and first["output"]
    # Stopping at the very first token leaves no text.
    empty = wait_job(client, client.post("/v1/jobs", json={**body, "stop": [first["output"]]}).json()["id"])
    assert empty["status"] == "succeeded", empty
    assert empty["output"] == ""
