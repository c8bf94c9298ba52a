"""``textgen up``: Redis (found or bundled), a worker, the webhook worker and the API on one machine,
kept running by a supervisor until Ctrl-C or SIGTERM.

On a terminal the children log human-readable lines to files under the data folder and the
terminal shows the supervisor's few lines and one ready message; elsewhere (a service, a
container, a pipe) every child logs JSON lines to this process's stderr, as before."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import urlparse

import httpx
import redis

from textgen_cli.processes import (
    INSTANCE_HEADER,
    VllmEnvironmentMissing,
    api_command,
    child_env,
    supervised_popen_kwargs,
    webhook_worker_command,
    webhook_worker_name,
    worker_command,
    worker_name,
)
from textgen_cli.redis_server import RedisStartFailed, ensure_redis, free_port, port_free, reachable, start_redis
from textgen_cli.supervisor import CrashLoop, Supervisor
from textgen_core.keys import Keys
from textgen_core.settings import Settings, get_settings


@dataclass
class UpOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    data_root: Path = Path(".textgen")
    log_files: bool | None = None  # None: to files on a terminal, to stderr otherwise
    max_restarts: int = 5
    restart_window: float = 120.0
    ready_timeout: float = 600.0


class StartFailed(RuntimeError):
    """textgen up cannot come up; the message says why and what to do."""


def say(message: str, style: str = "") -> None:
    """One supervisor line on stderr, coloured on a terminal."""
    if style and sys.stderr.isatty():
        message = f"\033[{style}m{message}\033[0m"
    print(f"textgen up: {message}", file=sys.stderr, flush=True)


def url_host(host: str) -> str:
    """``host`` as it stands in a URL that reaches it: a wildcard means loopback, IPv6 goes in brackets."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"[{host}]" if ":" in host else host


def busy_port_message(host: str, port: int) -> str:
    other = next((p for p in range(port + 10, port + 200, 10) if port_free(host, p)), port + 10)
    return (f"port {port} on {host} is already in use (another textgen up, or another program). "
            f"Pick another port: make up PORT={other}  or  .venv/bin/textgen up --port {other}")


def check_own_api(base: str, token: str) -> bool:
    """Whether this start's API answers ready at ``base``; False while it is not there or not ready.

    Raises ``StartFailed`` when something else answers: its readiness is not ours."""
    try:
        resp = httpx.get(f"{base}/ready", timeout=5)
    except (httpx.ConnectError, httpx.TimeoutException):
        return False
    except httpx.HTTPError as exc:
        raise StartFailed(f"{base} answers, but not as a textgen API ({type(exc).__name__})") from exc
    if resp.headers.get(INSTANCE_HEADER) != token:
        raise StartFailed(f"{base} is answered by another server (HTTP {resp.status_code}), not by this "
                          f"textgen's API")
    return resp.status_code == 200


def run_up(opts: UpOptions) -> int:
    """Run the platform until interrupted; the exit status (0 after Ctrl-C / SIGTERM)."""
    settings = get_settings()
    try:
        socket.getaddrinfo(opts.host, opts.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        say(f"cannot listen on {opts.host!r}: it is not an address of this machine ({exc}); "
            "use --host 127.0.0.1, or 0.0.0.0 for every interface", "31")
        return 1
    if not port_free(opts.host, opts.port):
        say(busy_port_message(opts.host, opts.port), "31")
        return 1
    try:  # before anything starts: a vLLM model whose environment is missing stops us here
        worker_cmd = worker_command(settings, worker_name(None))
    except VllmEnvironmentMissing as exc:
        say(str(exc), "31")
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    to_files = sys.stderr.isatty() if opts.log_files is None else opts.log_files
    log_dir = opts.data_root / f"logs-{opts.port}" if to_files else None
    sup = Supervisor(lambda m: say(m, "33"), max_deaths=opts.max_restarts, window=opts.restart_window)
    token = secrets.token_hex(8)
    base = f"http://{url_host(opts.host)}:{opts.port}"
    try:
        say("starting (the first start converts the model once)...")
        redis_url, redis_dir = _start_redis(sup, settings, opts.data_root)
        # Worker metrics bind where the API does.
        overrides = {"TEXTGEN_REDIS_URL": redis_url, "TEXTGEN_WORKER_METRICS_HOST": opts.host}
        if to_files and "TEXTGEN_LOG_FORMAT" not in os.environ:
            overrides["TEXTGEN_LOG_FORMAT"] = "text"  # read by people, not by a log shipper
        env = child_env(**overrides)
        commands = {
            "worker": worker_cmd,
            "webhook-worker": webhook_worker_command(settings, webhook_worker_name()),
            "api": api_command(opts.host, opts.port, settings.log_level, instance=token),
        }
        probes = {"worker": heartbeat_probe(redis_url, Keys(settings.key_prefix).worker(worker_name(None)))}
        for name, cmd in commands.items():
            log = log_dir / f"{name}.log" if log_dir else None
            sup.add(name, _spawner(cmd, env, log), log=log, alive=probes.get(name),
                    hang_seconds=max(60.0, 6 * settings.heartbeat_seconds))
        _wait_ready(sup, base, token, opts.ready_timeout, log_dir)
        _print_ready(settings, base, redis_url, redis_dir, log_dir)
        found = FoundRedis(redis_url, opts.data_root) if redis_dir is None else None
        while True:
            sup.check()
            if found is not None and found.gone():
                _adopt_redis(sup, found)
                found = None
            time.sleep(0.5)
    except (CrashLoop, StartFailed, RedisStartFailed) as exc:
        say(str(exc), "31")
        return 1
    except KeyboardInterrupt:
        say("stopping...")
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        sup.stop()


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _spawner(cmd: list[str], env: dict[str, str], log: Path | None) -> Callable[[], subprocess.Popen[bytes]]:
    def spawn() -> subprocess.Popen[bytes]:
        out: IO[bytes] | None = None
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            out = log.open("ab")
        try:
            return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT if out else None,
                                    **supervised_popen_kwargs())
        finally:
            if out is not None:
                out.close()  # the child holds its own copy
    return spawn


def _start_redis(sup: Supervisor, settings: Settings, data_root: Path) -> tuple[str, Path | None]:
    """The configured Redis if it answers; else a bundled one, supervised (same port and data on restart)."""
    url, proc, data_dir = ensure_redis(settings.redis_url, data_root, supervised_popen_kwargs())
    if proc is None or data_dir is None:
        return url, None
    port = urlparse(url).port or free_port()
    sup.add("redis", lambda: start_redis(data_dir, port, popen_kwargs=supervised_popen_kwargs())[1], proc=proc,
            log=data_dir / "redis.log", last=True)
    say(f"no Redis at {settings.redis_url}: started the bundled one at {url}")
    return url, data_dir


def heartbeat_probe(redis_url: str, key: str) -> Callable[[], bool]:
    """Whether the worker's heartbeat is in Redis; a Redis that does not answer says nothing about it."""
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=1, socket_timeout=1)

    def alive() -> bool:
        try:
            return bool(client.exists(key))
        except redis.RedisError:
            return True
        finally:  # hold no connection: Redis closing it on shutdown would leave its port in TIME_WAIT
            client.connection_pool.disconnect()
    return alive


@dataclass
class FoundRedis:
    """A Redis on this machine that another process started (another ``textgen up``, say). When it
    goes away and its port is free, this stack starts the bundled Redis there, with the data folder a
    bundled Redis on that port uses, so the stack comes back instead of answering 503 for good."""

    url: str
    data_root: Path
    down_since: float | None = None
    GRACE_SECONDS = 5.0

    def gone(self) -> bool:
        host, port = urlparse(self.url).hostname, urlparse(self.url).port or 6379
        if host not in ("127.0.0.1", "localhost") or reachable(self.url):
            self.down_since = None
            return False
        now = time.monotonic()
        self.down_since = self.down_since or now
        return now - self.down_since > self.GRACE_SECONDS and port_free("127.0.0.1", port)


def _adopt_redis(sup: Supervisor, found: FoundRedis) -> None:
    port = urlparse(found.url).port or 6379
    data_dir = found.data_root / f"redis-{port}"

    def spawn() -> subprocess.Popen[bytes]:
        return start_redis(data_dir, port, popen_kwargs=supervised_popen_kwargs())[1]

    sup.add("redis", spawn, log=data_dir / "redis.log", last=True)
    say(f"the Redis at {found.url} went away: started the bundled one on its port (data in {data_dir}/)", "33")


def _wait_ready(sup: Supervisor, base: str, token: str, timeout: float, log_dir: Path | None) -> None:
    deadline = time.monotonic() + timeout
    while not check_own_api(base, token):
        sup.check()
        if time.monotonic() > deadline:
            where = f" (logs in {log_dir})" if log_dir else ""
            raise StartFailed(f"not ready after {timeout:.0f} s{where}")
        time.sleep(0.5)


def _print_ready(settings: Settings, base: str, redis_url: str, redis_dir: Path | None, log_dir: Path | None) -> None:
    data = (f"{redis_dir}/ (bundled Redis at {redis_url}, append-only file)" if redis_dir
            else f"in the Redis at {redis_url} (found running, started outside this textgen up)")
    logs = f"{log_dir}/ (api, worker, webhook-worker)" if log_dir else "on this process's stderr"
    key = settings.api_keys[0]
    lines = [
        f"textgen is up at {base}",
        f"  playground  {base}/",
        f"  API docs    {base}/docs",
        f"  metrics     {base}/metrics",
        f"  data        {data}",
        f"  logs        {logs}",
        f"  try         curl -s {base}/v1/jobs -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' "
        "-d '{\"prompt\": \"Write a haiku about the sea.\", \"max_tokens\": 48}'",
        f"              curl -s '{base}/v1/jobs/<id>?wait=30' -H 'Authorization: Bearer {key}'",
        "Ctrl-C stops everything.",
    ]
    print("\n".join(lines), file=sys.stderr, flush=True)
