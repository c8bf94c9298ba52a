"""What a refused request costs the API: keys are checked before any body is read, limits apply
per route before a body is buffered, and the event loop keeps answering meanwhile."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import KEY_A, Stack
from tests.integration.test_api_contract import assert_envelope

pytestmark = pytest.mark.integration

MB = 1024 * 1024
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def guarded(stack: Stack) -> Iterator[tuple[str, int]]:
    """An API process of its own (so its memory is this test's), with small upload limits."""
    url = stack.start_api("api-guard", TEXTGEN_BATCH_JSON_MAX_BYTES=str(64 * 1024),
                          TEXTGEN_BATCH_FILE_MAX_BYTES=str(256 * 1024))
    yield url, stack.procs["api-guard"].pid
    stack.stop("api-guard")


def _memory_kb(pid: int, field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of a process, in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def _head_only(url: str, path: str, headers: dict[str, str]) -> tuple[int, dict]:
    """Send a request's headers (declaring a body) and not one byte of the body; the answer."""
    host, port = url.removeprefix("http://").split(":")
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall("\r\n".join(lines).encode())
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    return int(head.split()[1]), json.loads(body)


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


@pytest.mark.parametrize("path", ["/v1/batches", "/v1/files", "/v1/jobs", "/v1/chat/completions"])
def test_no_key_is_401_before_the_body_is_sent(guarded: tuple[str, int], path: str) -> None:
    status, body = _head_only(guarded[0], path, {"Content-Type": "application/json",
                                                 "Content-Length": str(100 * MB)})
    assert status == 401 and body["error"]["code"] == "invalid_api_key"


def test_an_oversized_body_with_a_key_is_413_before_it_is_sent(guarded: tuple[str, int]) -> None:
    for path, size in (("/v1/jobs", 2 * MB), ("/v1/batches", 100 * MB)):
        status, body = _head_only(guarded[0], path, {"Content-Type": "application/json",
                                                     "Content-Length": str(size),
                                                     "Authorization": f"Bearer {KEY_A}"})
        assert status == 413, body
        assert set(body["error"]) == {"message", "type", "code", "param"}
        assert body["error"]["code"] == "request_too_large"


def test_a_large_unauthenticated_body_costs_almost_no_memory_and_health_answers(
        guarded: tuple[str, int]) -> None:
    url, pid = guarded
    healths: list[int] = []

    def body() -> Iterator[bytes]:  # 20 MB of JSON; /health is asked between the megabytes
        yield b'{"items": ['
        for _ in range(20):
            yield b"[" * (MB // 2) + b"]" * (MB // 2)
            healths.append(httpx.get(f"{url}/health", timeout=30).status_code)
        yield b"]}"

    httpx.get(f"{url}/health")
    before_peak = _memory_kb(pid, "VmHWM")
    for path in ("/v1/batches", "/v1/jobs"):
        healths.clear()
        resp = httpx.post(f"{url}{path}", content=body(), headers=JSON, timeout=120)
        assert assert_envelope(resp, 401)["code"] == "invalid_api_key"
        assert healths == [200] * 20
    grown_kb = _memory_kb(pid, "VmHWM") - before_peak
    assert grown_kb < 8 * 1024, f"the API's peak RSS grew by {grown_kb} kB for refused bodies"


def test_an_oversized_upload_is_413_while_streaming(guarded: tuple[str, int]) -> None:
    url, _ = guarded

    def multipart() -> Iterator[bytes]:  # no Content-Length: the limit holds while reading
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="in.jsonl"\r\n\r\n'
        line = json.dumps({"custom_id": "x", "prompt": "hi"}).encode() + b"\n"
        for _ in range(400):
            yield line * 32
        yield b"\r\n--b--\r\n"

    for path in ("/v1/batches", "/v1/files"):
        resp = httpx.post(f"{url}{path}", content=multipart(), timeout=120,
                          headers={"Content-Type": "multipart/form-data; boundary=b",
                                   "Authorization": f"Bearer {KEY_A}"})
        assert assert_envelope(resp, 413)["code"] == "request_too_large"
    # The API is still well: an upload within the limit is taken.
    small = httpx.post(f"{url}/v1/files", files={"file": ("in.jsonl", b'{"a": 1}\n')}, data={"purpose": "batch"},
                       headers={"Authorization": f"Bearer {KEY_A}"})
    assert small.status_code == 200, small.text


def test_inline_json_batches_have_their_own_limit(guarded: tuple[str, int]) -> None:
    items = [{"custom_id": f"i{i}", "prompt": "x" * 200} for i in range(400)]  # about 90 kB
    resp = httpx.post(f"{guarded[0]}/v1/batches", json={"items": items}, headers={"Authorization": f"Bearer {KEY_A}"})
    assert assert_envelope(resp, 413)["code"] == "request_too_large"


def test_a_large_body_is_parsed_off_the_event_loop_and_reaches_the_route(client: httpx.Client) -> None:
    # About 120 kB: past the size parsed on the loop. The route still sees it (and counts its tokens).
    messages = [{"role": "user", "content": "7 " * 15_000}] * 4
    error = assert_envelope(client.post("/v1/jobs", json={"messages": messages}), 422, "messages")
    assert error["code"] == "context_length_exceeded"
    deep = '{"prompt": "' + "x" * 100_000 + '", "metadata": {"a": ' + "[" * 40 + "]" * 40 + "}}"
    assert assert_envelope(client.post("/v1/jobs", content=deep, headers=JSON), 400)["code"] == "json_too_deep"


def test_an_empty_batch_body_is_400(client: httpx.Client) -> None:
    assert assert_envelope(client.post("/v1/batches", headers=JSON), 400)["code"] == "invalid_json"


def test_a_client_that_leaves_mid_body_leaves_no_trace(guarded: tuple[str, int], stack: Stack) -> None:
    url = guarded[0]
    host, port = url.removeprefix("http://").split(":")
    before = (stack.logs / "api-guard.log").read_text()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"POST /v1/jobs HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY_A}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"prompt\": ".encode())
    time.sleep(1)  # let the API notice the disconnect
    assert httpx.get(f"{url}/health").status_code == 200
    assert "Traceback" not in (stack.logs / "api-guard.log").read_text().removeprefix(before)
