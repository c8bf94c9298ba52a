"""``textgen up`` given what a careless user types: bad hosts and ports, signals at awkward moments.

Each test is a regression test for a defect found by running the real command; they reuse the
helpers of ``test_up.py`` (the real command, its real children)."""

from __future__ import annotations

import http.server
import subprocess
import threading
from pathlib import Path

import pytest

from tests.integration.test_up import Up, _NotFound, start_up
from textgen_cli.redis_server import ensure_redis

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
