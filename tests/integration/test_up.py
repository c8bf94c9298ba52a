"""``textgen up`` as a user runs it: the real command, its real children (bundled Redis, a Celery
worker with the model, the webhook worker, the API), driven from outside with signals.

One stack runs under a pseudo-terminal (as in a terminal: concise output, logs in files); the
others write to a pipe (as under a service manager: JSON lines on stderr). Recovery figures are
printed (``-s``), never asserted.
"""

from __future__ import annotations

import http.server
import json
import os
import pty
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis

from textgen_cli.processes import INSTANCE_HEADER
from textgen_cli.redis_server import free_port
from textgen_cli.up import StartFailed, check_own_api
from textgen_core.keys import Keys
from textgen_core.settings import DEFAULT_MODEL_ID

pytestmark = [pytest.mark.integration, pytest.mark.timeout(2400)]

KEY = "test-key-up"
LONG = {"prompt": "Write a very long and detailed essay about the history of lighthouses, with many sections.",
        "max_tokens": 48, "temperature": 0.8, "seed": 7}


@dataclass
class Up:
    """A running ``textgen up`` and what it printed so far."""

    proc: subprocess.Popen[bytes]
    port: int
    redis_url: str
    keys: Keys
    data_root: Path
    output: bytearray = field(default_factory=bytearray)
    reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def text(self) -> str:
        return self.output.decode(errors="replace")

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120)

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, decode_responses=True)

    def children(self) -> dict[str, int]:
        """The supervisor's live children by role, from /proc."""
        found: dict[str, int] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[1]) != self.proc.pid or fields[0] == "Z":
                continue
            for role, mark in (("webhook-worker", "workers.webhook_app"), ("worker", "workers.app"),
                               ("api", "api.main:app"), ("redis", "redis-server")):
                if mark in cmdline:
                    found[role] = int(entry.name)
                    break
        return found

    def wait_for(self, text: str, timeout: float = 1200) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.text():
            if self.proc.poll() is not None:
                time.sleep(0.5)  # the reader's last bytes
                if text in self.text():
                    return
                raise AssertionError(f"textgen up exited ({self.proc.returncode}) before {text!r}:\n{self.text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} after {timeout} s:\n{self.text()}")
            time.sleep(0.2)

    def stop(self, sig: signal.Signals = signal.SIGINT) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def up_env(redis_port: int, **env: str) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("TEXTGEN_")},
        "TEXTGEN_ENV": "test",
        "TEXTGEN_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "TEXTGEN_KEY_PREFIX": f"up{uuid.uuid4().hex[:8]}",
        "TEXTGEN_API_KEYS": KEY,
        "TEXTGEN_MODELS": json.dumps([{"id": DEFAULT_MODEL_ID, "max_batch": 8}]),
        "TEXTGEN_WORKER_MODELS": DEFAULT_MODEL_ID,
        "TEXTGEN_LOG_LEVEL": "INFO",
        "TEXTGEN_HEARTBEAT_SECONDS": "1",
        "TEXTGEN_LEASE_SECONDS": "10",
        "TEXTGEN_LEASE_REAP_SECONDS": "1",
        "TEXTGEN_WORKER_METRICS_PORT": "0",
        "TEXTGEN_CACHE_ENABLED": "false",
        **env,
    }


def start_up(data_root: Path, *args: str, tty: bool = False, port: int | None = None, cwd: Path | None = None,
             **env: str) -> Up:
    """``textgen up`` on fresh ports, under a pseudo-terminal (``tty``) or with its output on a pipe."""
    port = port or free_port()
    redis_port = free_port()
    full_env = up_env(redis_port, **env)
    cmd = [sys.executable, "-m", "textgen_cli.main", "up", "--port", str(port), "--data-dir", str(data_root), *args]
    if tty:
        master, slave = pty.openpty()
        proc = subprocess.Popen(cmd, env=full_env, stdin=slave, stdout=slave, stderr=slave, cwd=cwd)
        os.close(slave)
        source = master
    else:
        proc = subprocess.Popen(cmd, env=full_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, cwd=cwd)
        assert proc.stdout is not None
        source = proc.stdout.fileno()
    up = Up(proc, port, f"redis://127.0.0.1:{redis_port}/0", Keys(full_env["TEXTGEN_KEY_PREFIX"]), data_root)

    def read() -> None:
        while True:
            try:
                chunk = os.read(source, 65536)
            except OSError:  # the pty's other end closed
                break
            if not chunk:
                break
            up.output.extend(chunk)
    up.reader = threading.Thread(target=read, daemon=True)
    up.reader.start()
    return up


@pytest.fixture(scope="module")
def terminal_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    up = start_up(tmp_path_factory.mktemp("up") / ".textgen", tty=True)
    try:
        up.wait_for("Ctrl-C stops everything.")
        yield up
    finally:
        up.stop()


def wait_job(client: httpx.Client, job_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        resp = client.get(f"/v1/jobs/{job_id}", params={"wait": 20})
        if resp.status_code == 503 and time.monotonic() < deadline:  # Redis coming back
            time.sleep(0.5)
            continue
        job = resp.json()
        if job["status"] not in ("queued", "running") or time.monotonic() > deadline:
            return dict(job)
        time.sleep(0.1)


class HealthWatch:
    """Polls ``/health`` in the background and counts the times it did not answer 200."""

    def __init__(self, url: str) -> None:
        self.url, self.ok, self.failed = url, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                good = httpx.get(f"{self.url}/health", timeout=10).status_code == 200
            except httpx.HTTPError:
                good = False
            self.ok, self.failed = self.ok + good, self.failed + (not good)
            self._stop.wait(0.2)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)


def test_on_a_terminal_the_start_is_concise_and_the_ready_message_says_where_things_are(terminal_up: Up) -> None:
    text = terminal_up.text()
    before, _, ready = text.partition("textgen is up at ")
    assert len(before.strip().splitlines()) <= 3, before  # "starting...", "started the bundled Redis"
    for banner in ("-------------- ", "[config]", ".> transport:", "[queues]"):
        assert banner not in text
    assert not any(line.lstrip().startswith("{") for line in text.splitlines())  # no JSON on a terminal
    url = terminal_up.url
    for expected in (f"{url}/", f"{url}/docs", f"{url}/metrics", f"redis-{urlport(terminal_up.redis_url)}/",
                     f"logs-{terminal_up.port}/", "Ctrl-C stops everything."):
        assert expected in ready
    logs = terminal_up.data_root / f"logs-{terminal_up.port}"
    worker_log = (logs / "worker.log").read_text()
    assert "celery@" not in worker_log and "-------------- " not in worker_log  # no banner in the files either
    assert not worker_log.lstrip().startswith("{")  # human-readable lines
    assert (logs / "api.log").exists() and (logs / "webhook-worker.log").exists()
    assert (terminal_up.data_root / f"redis-{urlport(terminal_up.redis_url)}" / "appendonly.aof").exists() or any(
        (terminal_up.data_root / f"redis-{urlport(terminal_up.redis_url)}").glob("appendonly*"))


def urlport(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def worker_started_at(up: Up) -> float:
    r = up.redis()
    for key in r.scan_iter(match=up.keys.workers_pattern()):
        raw = r.get(key)
        if raw and not json.loads(raw)["name"].startswith("textgen-webhooks"):
            return float(json.loads(raw)["started_at"])
    return 0.0


def test_a_sigkilled_worker_is_restarted_the_api_stays_up_and_the_job_succeeds(terminal_up: Up) -> None:
    with terminal_up.client() as api:
        resp = api.post("/v1/jobs", json=LONG)
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["id"]
        deadline = time.monotonic() + 120
        while api.get(f"/v1/jobs/{job_id}").json()["status"] != "running":
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.1)
        old_pid = terminal_up.children()["worker"]
        watch = HealthWatch(terminal_up.url)
        killed_at_wall, killed_at = time.time(), time.monotonic()
        os.kill(old_pid, signal.SIGKILL)
        deadline = time.monotonic() + 300
        while worker_started_at(terminal_up) <= killed_at_wall:
            assert time.monotonic() < deadline, terminal_up.text()
            time.sleep(0.2)
        worker_ready_s = time.monotonic() - killed_at
        job = wait_job(api, job_id)
        job_done_s = time.monotonic() - killed_at
        watch.stop()
    assert job["status"] == "succeeded", job
    assert terminal_up.children()["worker"] != old_pid
    assert watch.failed == 0 and watch.ok > 0, (watch.ok, watch.failed)
    assert "worker exited (killed by SIGKILL); restarting it in" in terminal_up.text()
    assert "worker restarted (pid" in terminal_up.text()
    print(f"\nworker SIGKILLed mid-job: new worker ready after {worker_ready_s:.1f} s, "
          f"the job succeeded {job_done_s:.1f} s after the kill (attempts {job.get('attempts')}); "
          f"/health answered {watch.ok} times, failed {watch.failed}")


def test_a_sigkilled_api_comes_back_on_the_same_port(terminal_up: Up) -> None:
    token = httpx.get(f"{terminal_up.url}/health").headers[INSTANCE_HEADER]
    old_pid = terminal_up.children()["api"]
    killed_at = time.monotonic()
    os.kill(old_pid, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while True:
        try:
            resp = httpx.get(f"{terminal_up.url}/ready", timeout=5)
            if resp.status_code == 200 and terminal_up.children().get("api", old_pid) != old_pid:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, terminal_up.text()
        time.sleep(0.1)
    print(f"\nAPI SIGKILLed: ready again on port {terminal_up.port} after {time.monotonic() - killed_at:.1f} s")
    assert resp.headers[INSTANCE_HEADER] == token  # this stack's API, not another server
    assert "api exited (killed by SIGKILL)" in terminal_up.text()


def test_the_readiness_check_tells_its_own_api_from_another_server(terminal_up: Up) -> None:
    token = httpx.get(f"{terminal_up.url}/health").headers[INSTANCE_HEADER]
    assert check_own_api(terminal_up.url, token) is True
    with pytest.raises(StartFailed, match="another server"):
        check_own_api(terminal_up.url, "not-this-start")
    assert check_own_api(f"http://127.0.0.1:{free_port()}", token) is False  # nothing there yet


def test_a_busy_port_held_by_another_textgen_fails_fast_with_the_fix(terminal_up: Up, tmp_path: Path) -> None:
    started = time.monotonic()
    other = start_up(tmp_path / ".textgen", port=terminal_up.port)
    assert other.proc.wait(120) == 1
    elapsed = time.monotonic() - started
    other.reader.join(5)  # type: ignore[union-attr]
    text = other.text()
    assert f"port {terminal_up.port} on 127.0.0.1 is already in use" in text
    assert "make up PORT=" in text and ".venv/bin/textgen up --port " in text
    assert "textgen is up" not in text
    assert not (tmp_path / ".textgen").exists()  # nothing started
    print(f"\nbusy port (another textgen): exit 1 after {elapsed:.1f} s")


class _NotFound(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the http.server hook's name
        self.send_error(404)

    def log_message(self, *_: object) -> None:
        pass


def test_a_busy_port_held_by_an_unrelated_server_fails_fast(tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        with pytest.raises(StartFailed, match="another server"):
            check_own_api(f"http://127.0.0.1:{port}", "any")
        started = time.monotonic()
        other = start_up(tmp_path / ".textgen", port=port)
        assert other.proc.wait(120) == 1
        elapsed = time.monotonic() - started
        other.reader.join(5)  # type: ignore[union-attr]
        text = other.text()
    finally:
        server.shutdown()
    assert f"port {port} on 127.0.0.1 is already in use" in text
    assert "make up PORT=" in text and ".venv/bin/textgen up --port " in text
    print(f"\nbusy port (an unrelated server): exit 1 after {elapsed:.1f} s")


def test_two_stacks_on_different_ports_keep_their_own_data(terminal_up: Up) -> None:
    """A second stack from the same data folder, on other ports, as a service (JSON logs on stderr)."""
    with terminal_up.client() as api:
        first = api.post("/v1/jobs", json={"prompt": "Say hi.", "max_tokens": 4, "temperature": 0}).json()["id"]
        assert wait_job(api, first)["status"] == "succeeded"
    time.sleep(1.5)  # the AOF is written every second: the first stack's job is on disk
    second = start_up(terminal_up.data_root)
    try:
        second.wait_for("Ctrl-C stops everything.")
        with second.client() as api:
            assert api.get(f"/v1/jobs/{first}").status_code == 404
            other = api.post("/v1/jobs", json={"prompt": "Say bye.", "max_tokens": 4, "temperature": 0}).json()["id"]
            assert wait_job(api, other)["status"] == "succeeded"
        with terminal_up.client() as api:
            assert api.get(f"/v1/jobs/{other}").status_code == 404
        children = second.children()
    finally:
        second.stop(signal.SIGTERM)  # as a service manager stops it
    assert second.proc.returncode == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in children.values())
    second.reader.join(5)  # type: ignore[union-attr]
    text = second.text()
    assert f"{terminal_up.data_root}/redis-{urlport(second.redis_url)}/" in text
    assert f"redis-{urlport(terminal_up.redis_url)}" not in text
    # Not a terminal: the children's JSON lines on stderr, still no Celery banner.
    lines = [line for line in text.splitlines() if line.startswith("{")]
    assert {json.loads(line).get("service") for line in lines} >= {"api", "worker"}
    assert "-------------- " not in text and "[config]" not in text


def test_a_killed_bundled_redis_is_restarted_with_its_data(terminal_up: Up) -> None:
    with terminal_up.client() as api:
        before = api.post("/v1/jobs", json={"prompt": "Say hi.", "max_tokens": 4, "temperature": 0}).json()["id"]
        assert wait_job(api, before)["status"] == "succeeded"
        time.sleep(1.5)  # on disk: the AOF is written every second
        old_pid = terminal_up.children()["redis"]
        killed_at = time.monotonic()
        os.kill(old_pid, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while terminal_up.children().get("redis", old_pid) == old_pid:
            assert time.monotonic() < deadline, terminal_up.text()
            time.sleep(0.1)
        while True:
            try:
                if terminal_up.redis().ping():
                    break
            except redis.RedisError:
                assert time.monotonic() < deadline, terminal_up.text()
                time.sleep(0.1)
        back_s = time.monotonic() - killed_at
        assert wait_job(api, before)["status"] == "succeeded"  # from the append-only file
        deadline = time.monotonic() + 120
        while (resp := api.post("/v1/jobs", json={"prompt": "Say bye.", "max_tokens": 4})).status_code == 503:
            assert time.monotonic() < deadline
            time.sleep(0.5)
        assert resp.status_code == 202, resp.text
        assert wait_job(api, resp.json()["id"])["status"] == "succeeded"  # the worker reconnected
        done_s = time.monotonic() - killed_at
    assert "redis exited (killed by SIGKILL); restarting it in" in terminal_up.text()
    print(f"\nbundled Redis SIGKILLed: back on its port after {back_s:.1f} s, a new job done {done_s:.1f} s "
          "after the kill")


def test_sigint_stops_every_child(terminal_up: Up) -> None:
    children = terminal_up.children()
    assert set(children) == {"redis", "worker", "webhook-worker", "api"}
    terminal_up.proc.send_signal(signal.SIGINT)
    assert terminal_up.proc.wait(120) == 0
    for role, pid in children.items():
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2], role
    assert "stopping..." in terminal_up.text()


def test_a_child_that_exits_at_once_ends_up_with_the_crash_loop_message(tmp_path: Path) -> None:
    """An API that cannot even be imported (here: a broken ``api`` package first on the path, as a
    bad edit would leave it) exits at once every time: textgen up gives up, it does not spin."""
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "__init__.py").write_text('raise SystemExit("api: broken on purpose")\n')
    up = start_up(tmp_path / ".textgen", "--max-restarts", "3", "--restart-window", "600", cwd=tmp_path)
    code = up.proc.wait(600)
    up.reader.join(5)  # type: ignore[union-attr]
    text = up.text()
    assert code == 1, text
    assert "api died 3 times in 600 s (last: exit code 1); giving up" in text, text
    assert text.count("api exited (exit code 1); restarting it in") == 2
    assert "textgen is up" not in text
    with socket.socket() as s:  # its Redis is gone with it
        s.bind(("127.0.0.1", urlport(up.redis_url)))
