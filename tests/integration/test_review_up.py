"""``textgen up`` given what a careless user types: bad hosts and ports, signals at awkward moments.

Each test is a regression test for a defect found by running the real command; they reuse the
helpers of ``test_up.py`` (the real command, its real children)."""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.test_up import Up, _NotFound, start_up
from textgen_cli.redis_server import ensure_redis, free_port
from textgen_core.settings import DEFAULT_MODEL_ID

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def finished(up: Up, timeout: float) -> str:
    """What ``up`` printed once it exited; fails (and stops it) when it is still running after ``timeout``."""
    try:
        up.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        up.stop()
        up.reader.join(5)  # type: ignore[union-attr]
        raise AssertionError(f"textgen up still running after {timeout} s:\n{up.text()}") from None
    up.reader.join(5)  # type: ignore[union-attr]
    return up.text()


def test_a_host_that_is_not_an_address_is_not_called_a_busy_port(tmp_path: Path) -> None:
    up = start_up(tmp_path / ".textgen", "--host", "not-an-address")
    text = finished(up, 120)
    assert up.proc.returncode != 0
    assert "already in use" not in text, text
    assert "not-an-address" in text, text


def test_a_port_out_of_range_gets_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    up = start_up(tmp_path / ".textgen", port=99999)
    text = finished(up, 120)
    assert up.proc.returncode != 0
    assert "Traceback" not in text and "OverflowError" not in text, text
    assert "99999" in text, text


def test_port_zero_is_refused_rather_than_waiting_for_an_api_on_port_zero(tmp_path: Path) -> None:
    """uvicorn on port 0 listens on a random port; the readiness check asks port 0 until its timeout."""
    up = start_up(tmp_path / ".textgen", "--port", "0")  # the last --port wins
    text = finished(up, 120)
    assert up.proc.returncode != 0
    assert "textgen is up at http://127.0.0.1:0" not in text


def test_an_ipv6_loopback_host_comes_up_without_a_traceback(tmp_path: Path) -> None:
    up = start_up(tmp_path / ".textgen", "--host", "::1")
    try:
        up.wait_for("Ctrl-C stops everything.", timeout=600)
        text = up.text()
    finally:
        up.stop()
    assert "Traceback" not in text and "InvalidURL" not in text, text
    assert f"http://[::1]:{up.port}" in text, text


def test_two_bundled_redis_servers_never_share_one_data_folder(tmp_path: Path) -> None:
    """The configured Redis port is held by something that is not Redis: each ``textgen up`` then starts
    its bundled Redis on a free port, and both write their append-only files into ``redis-<configured port>``."""
    holder = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    threading.Thread(target=holder.serve_forever, daemon=True).start()
    url = f"redis://127.0.0.1:{holder.server_address[1]}/0"
    started: list[subprocess.Popen[bytes]] = []
    try:
        first_url, first, first_dir = ensure_redis(url, tmp_path)
        assert first is not None
        started.append(first)
        second_url, second, second_dir = ensure_redis(url, tmp_path)
        if second is not None:
            started.append(second)
        assert second is None or first_dir != second_dir, (
            f"two redis-servers ({first_url}, {second_url}) write to {first_dir}")
    finally:
        holder.shutdown()
        for proc in started:
            proc.kill()
            proc.wait()


class _ModelsOnly(http.server.BaseHTTPRequestHandler):
    """Answers ``/v1/models`` as the API does: enough for ``textgen chat`` to start."""

    def do_GET(self) -> None:  # noqa: N802 - the http.server hook's name
        body = json.dumps({"object": "list", "data": [{"id": DEFAULT_MODEL_ID, "object": "model"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


def test_chat_survives_the_api_going_away_between_turns() -> None:
    """``textgen up`` restarts a dead API on its port; meanwhile a chat's next turn meets a refused
    connection, and the chat should say so and keep going, not end in a traceback."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ModelsOnly)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    proc = subprocess.Popen([sys.executable, "-m", "textgen_cli.main", "chat", "--url", url, "--api-key", "k"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdin is not None and proc.stdout is not None
    banner = proc.stdout.readline().decode()
    assert "textgen chat with" in banner, banner
    server.shutdown()
    server.server_close()  # the API is gone: connections are refused
    try:
        out, _ = proc.communicate(b"hello\n/exit\n", timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = out.decode(errors="replace")
    assert "Traceback" not in text and "ConnectError" not in text, text
    assert "cannot reach the API" in text, text
    assert proc.returncode == 0, text


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # closed again once the socket is


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "textgen_cli.main", *args], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL, cwd=cwd)


def test_submit_without_a_running_api_says_how_to_start_one() -> None:
    done = cli("submit", "hi", "--url", closed_port_url(), "--api-key", "k")
    text = done.stdout + done.stderr
    assert done.returncode == 1
    assert "Traceback" not in text and "ConnectError" not in text, text
    assert "cannot reach the API" in text, text


def test_batch_without_a_running_api_says_how_to_start_one(tmp_path: Path) -> None:
    (tmp_path / "items.csv").write_text("prompt\nSay hi.\n")
    done = cli("batch", "items.csv", "--url", closed_port_url(), "--api-key", "k", cwd=tmp_path)
    text = done.stdout + done.stderr
    assert done.returncode != 0
    assert "Traceback" not in text and "ConnectError" not in text, text
    assert "cannot reach the API" in text, text


def test_status_against_a_server_that_is_not_textgen_says_so() -> None:
    """A wrong ``--url`` (here a plain web server answering HTML) is a user's mistake, not a crash."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        done = cli("status", "--url", f"http://127.0.0.1:{server.server_address[1]}", "--api-key", "k")
    finally:
        server.shutdown()
    text = done.stdout + done.stderr
    assert done.returncode == 1
    assert "Traceback" not in text and "JSONDecodeError" not in text, text


def ready(up: Up) -> bool:
    try:
        return httpx.get(f"{up.url}/ready", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_second_stack_on_the_first_ones_redis_comes_back_when_the_first_stops(tmp_path: Path) -> None:
    """The second stack of docs/operations.md, from the same checkout, finds the first one's Redis.
    Ctrl-C on the first stops that Redis; the second then answers 503 for good and its supervisor says nothing."""
    shared = {"TEXTGEN_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "TEXTGEN_KEY_PREFIX": "upshared"}
    first = start_up(tmp_path / "a" / ".textgen", **shared)
    second: Up | None = None
    try:
        first.wait_for("Ctrl-C stops everything.")
        second = start_up(tmp_path / "b" / ".textgen", **shared)
        second.wait_for("Ctrl-C stops everything.")
        first.stop()
        deadline = time.monotonic() + 180
        while not ready(second):
            assert time.monotonic() < deadline, f"the second stack never came back:\n{second.text()[-3000:]}"
            time.sleep(1)
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_a_stopped_worker_is_noticed_and_replaced(tmp_path: Path) -> None:
    """A worker that hangs (SIGSTOP, as a wedged process) is alive to ``poll()``: the supervisor never
    restarted it, and the stack stayed not ready with jobs queued until someone intervened. Its
    missing heartbeat now gets it killed and restarted, and the stack serves jobs again."""
    up = start_up(tmp_path / ".textgen")
    stopped: int | None = None
    try:
        up.wait_for("Ctrl-C stops everything.")
        stopped = up.children()["worker"]
        os.kill(stopped, signal.SIGSTOP)
        up.wait_for("worker is running but has not shown it is alive", timeout=240)
        up.wait_for("worker restarted (pid", timeout=60)
        with up.client() as api:
            deadline = time.monotonic() + 300
            while not ready(up):
                assert time.monotonic() < deadline, f"no worker came back:\n{up.text()[-3000:]}"
                time.sleep(1)
            job = api.post("/v1/jobs", json={"prompt": "Say hi.", "max_tokens": 4, "temperature": 0}).json()["id"]
            while (record := api.get(f"/v1/jobs/{job}", params={"wait": 30}).json())["status"] != "succeeded":
                assert time.monotonic() < deadline, f"job still {record['status']} after the worker was replaced"
    finally:
        if stopped is not None:
            try:
                os.kill(stopped, signal.SIGCONT)
            except ProcessLookupError:
                pass
        up.stop()


def test_a_bundled_redis_that_cannot_start_ends_with_a_message_not_a_traceback(tmp_path: Path) -> None:
    """A damaged append-only file (a full disk, a crash mid-write): redis-server refuses to start."""
    port = free_port()
    data = tmp_path / ".textgen"
    (data / f"redis-{port}").mkdir(parents=True)
    (data / f"redis-{port}" / "appendonly.aof").write_bytes(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\ngarbage")
    up = start_up(data, TEXTGEN_REDIS_URL=f"redis://127.0.0.1:{port}/0")
    text = finished(up, 120)
    assert up.proc.returncode == 1
    assert "Traceback" not in text and "RuntimeError" not in text, text
    assert "textgen up: bundled redis-server did not start" in text, text
