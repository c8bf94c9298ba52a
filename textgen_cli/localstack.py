"""A whole platform on one machine (private Redis, workers, API) for benchmarks and tests.

Each stack has its own redis-server on a free loopback port and its own key prefix, so any
number can run side by side without seeing each other's jobs.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from textgen_cli.processes import api_command, child_env, worker_command
from textgen_cli.redis_server import free_port, start_redis
from textgen_core.keys import Keys
from textgen_core.settings import DEFAULT_MODEL_ID, Settings


def tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def wait_http(url: str, log: Path, timeout: float = 60, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``url`` until it answers 200; on time-out, or as soon as ``proc`` (the server) exits,
    raise with the tail of ``log``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server for {url} exited with status {proc.returncode}:\n{tail(log)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not up:\n{tail(log)}")
        time.sleep(0.1)


@dataclass
class LocalStack:
    root: Path
    api_keys: list[str] = field(default_factory=lambda: ["bench-key"])
    models: list[dict[str, Any]] = field(default_factory=lambda: [{"id": DEFAULT_MODEL_ID}])
    worker_models: list[str] = field(default_factory=lambda: [DEFAULT_MODEL_ID])
    extra_env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    url: str = ""
    redis_url: str = ""
    env: dict[str, str] = field(default_factory=dict)
    keys: Keys = field(default_factory=lambda: Keys("textgen"))

    def start(self, *, workers: int = 1, api: bool = True, redis_appendonly: bool = True,
              worker_timeout: float = 300) -> LocalStack:
        self.root.mkdir(parents=True, exist_ok=True)
        self.redis_url, self.procs["redis"] = start_redis(self.root / "redis", appendonly=redis_appendonly)
        prefix = f"tg{uuid.uuid4().hex[:8]}"
        self.keys = Keys(prefix)
        self.env = child_env(
            TEXTGEN_ENV="test",
            TEXTGEN_REDIS_URL=self.redis_url,
            TEXTGEN_KEY_PREFIX=prefix,
            TEXTGEN_API_KEYS=",".join(self.api_keys),
            TEXTGEN_MODELS=json.dumps(self.models),
            TEXTGEN_WORKER_MODELS=",".join(self.worker_models),
            **{"TEXTGEN_HEARTBEAT_SECONDS": "1", **self.extra_env},  # extra_env may override
        )
        if api:
            port = free_port()
            self.url = f"http://127.0.0.1:{port}"
            self._spawn("api", api_command("127.0.0.1", port), self.env)
        for i in range(workers):
            self.start_worker(f"worker{i}")
        for i in range(workers):
            self.wait_for_worker(f"worker{i}", worker_timeout)
        if api:
            self._wait_http("/health")
        return self

    def settings(self) -> Settings:
        return Settings(_env_file=None, models=self.models, worker_models=self.worker_models)

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.root / f"{name}.log").open("ab")
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def start_worker(self, name: str, concurrency: int | None = None, **env: str) -> subprocess.Popen[bytes]:
        cmd = worker_command(self.settings(), f"{name}@local", concurrency, loglevel="INFO")
        return self._spawn(name, cmd, {**self.env, **env})

    def wait_for_worker(self, name: str, timeout: float = 300) -> None:
        client = self.redis()
        deadline = time.monotonic() + timeout
        while not client.exists(self.keys.worker(f"{name}@local")):
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{name} exited:\n{tail(self.root / f'{name}.log')}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not up:\n{tail(self.root / f'{name}.log')}")
            time.sleep(0.2)

    def _wait_http(self, path: str, timeout: float = 60) -> None:
        wait_http(self.url + path, self.root / "api.log", timeout)

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, decode_responses=True)

    def client(self, key: str | None = None, timeout: float = 300) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key or self.api_keys[0]}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def restart_redis(self, down_seconds: float = 0.0) -> None:
        """Stop Redis (SIGTERM: it flushes its append-only file) and start it again on the same port
        and data folder, after ``down_seconds`` without it."""
        self.stop_process("redis")
        time.sleep(down_seconds)
        port = int(self.redis_url.rsplit(":", 1)[1].split("/")[0])
        self.redis_url, self.procs["redis"] = start_redis(self.root / "redis", port)

    def stop_process(self, name: str, timeout: float = 30) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self, name: str) -> None:
        """SIGKILL a process, as the OOM killer would."""
        proc = self.procs.pop(name)
        proc.kill()
        proc.wait(30)

    def stop(self) -> None:
        for name in [n for n in reversed(list(self.procs)) if n != "redis"] + ["redis"]:
            self.stop_process(name)

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
