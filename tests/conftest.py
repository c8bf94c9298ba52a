"""Shared fixtures. Integration tests run the real stack: a private redis-server (the bundled
one), a real Celery worker process with the real model, and the real API under uvicorn."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis

from textgen_cli.localstack import tail, wait_http
from textgen_cli.processes import api_command, child_env, webhook_worker_command, worker_command
from textgen_cli.redis_server import free_port, start_redis
from textgen_core.keys import Keys
from textgen_core.settings import DEFAULT_MODEL_ID, Settings

KEY_A = "test-key-alpha"
KEY_B = "test-key-bravo"
# A model that is configured but that no worker serves: its jobs stay queued.
IDLE_MODEL = "idle-model"
# KEY_B's webhook secret comes from the settings; KEY_A's is generated.
KEY_B_WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
# Webhook retries in the tests: two, half a second apart (plus jitter).
WEBHOOK_RETRY_SCHEDULE = [0.5, 0.5]


def pytest_configure(config: pytest.Config) -> None:
    """As a worker does: in-process engines' threads run the kernels, and this one never makes an
    OpenMP team that would slow theirs (``device.own_parallelism``)."""
    if importlib.util.find_spec("torch"):
        from textgen_core.engine.device import own_parallelism

        own_parallelism()


@dataclass
class Stack:
    url: str
    redis_url: str
    keys: Keys
    env: dict[str, str]
    logs: Path
    webhook_metrics_url: str = ""
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def client(self, key: str = KEY_A, timeout: float = 120) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=timeout)

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, decode_responses=True)

    def start_worker(self, name: str, **env: str) -> subprocess.Popen[bytes]:
        settings = Settings(_env_file=None, **_settings_kwargs(self.env))
        log = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(worker_command(settings, f"{name}@test", loglevel="INFO"),
                                env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def start_webhook_worker(self, name: str) -> subprocess.Popen[bytes]:
        settings = Settings(_env_file=None, key_prefix=self.keys.prefix, **_settings_kwargs(self.env))
        log = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(webhook_worker_command(settings, f"{name}@test", loglevel="INFO"), env=self.env,
                                stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def start_api(self, name: str, **env: str) -> str:
        """Another API process on the same Redis and prefix, with ``env`` on top; returns its URL."""
        port = free_port()
        log = (self.logs / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(api_command("127.0.0.1", port), env={**self.env, **env}, stdout=log,
                                            stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        wait_for_api(url, self.logs / f"{name}.log", timeout=240)
        return url

    def kill(self, name: str) -> None:
        """SIGKILL a process, as the OOM killer or a lost machine would."""
        proc = self.procs.pop(name)
        proc.kill()
        proc.wait(30)

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()

    def wait_for_worker(self, name: str, timeout: float = 180) -> None:
        r = self.redis()
        deadline = time.monotonic() + timeout
        while not r.exists(self.keys.worker(f"{name}@test")):
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"worker {name} exited:\n{tail(self.logs / f'{name}.log')}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker {name} not up:\n{tail(self.logs / f'{name}.log')}")
            time.sleep(0.2)


def _settings_kwargs(env: dict[str, str]) -> dict[str, object]:
    return {"models": json.loads(env["TEXTGEN_MODELS"]), "worker_models": env["TEXTGEN_WORKER_MODELS"]}


def wait_for_api(url: str, log: Path, timeout: float = 30) -> None:
    wait_http(f"{url}/health", log, timeout)


@contextmanager
def launch_stack(root: Path, models: list[dict[str, object]], worker_models: str, *,
                 worker: bool = True, **env: str) -> Iterator[Stack]:
    """Redis, the API and (unless ``worker=False``) one worker, on a fresh key prefix; all stopped after."""
    redis_url, redis_proc = start_redis(root / "redis")
    prefix = f"test{uuid.uuid4().hex[:8]}"
    full_env = child_env(
        TEXTGEN_ENV="test",
        TEXTGEN_REDIS_URL=redis_url,
        TEXTGEN_KEY_PREFIX=prefix,
        TEXTGEN_API_KEYS=f"{KEY_A},{KEY_B}",
        TEXTGEN_MODELS=json.dumps(models),
        TEXTGEN_WORKER_MODELS=worker_models,
        TEXTGEN_LOG_LEVEL="INFO",
        TEXTGEN_HEARTBEAT_SECONDS="1",
        # A killed worker's jobs are handed back within about ten seconds (a tighter lease can lapse on a
        # live worker starved of CPU by a loaded machine, which costs its jobs an attempt).
        TEXTGEN_LEASE_SECONDS="10",
        TEXTGEN_LEASE_REAP_SECONDS="1",
        # Webhook receivers in the tests listen on 127.0.0.1.
        TEXTGEN_WEBHOOK_ALLOW_PRIVATE="true",
        TEXTGEN_WEBHOOK_RETRY_SCHEDULE=json.dumps(WEBHOOK_RETRY_SCHEDULE),
        TEXTGEN_WEBHOOK_SECRETS=json.dumps({KEY_B: KEY_B_WEBHOOK_SECRET}),
        TEXTGEN_WEBHOOK_METRICS_PORT=str(metrics_port := free_port()),
        TEXTGEN_WEBHOOK_BATCH_PROGRESS_SECONDS="1",
        # The outbox sweeper queues a completion event 2 s after its job or batch ended without it.
        TEXTGEN_WEBHOOK_OUTBOX_GRACE_SECONDS="2",
        TEXTGEN_WEBHOOK_OUTBOX_SWEEP_SECONDS="0.5",
        TEXTGEN_WORKER_METRICS_PORT="0",  # fixed ports would collide between parallel test runs
        # Tests of other features expect each job to generate; tests/integration/test_cache.py turns it on.
        **{"TEXTGEN_CACHE_ENABLED": "false", **env},
    )
    port = free_port()
    st = Stack(url=f"http://127.0.0.1:{port}", redis_url=redis_url, keys=Keys(prefix), env=full_env, logs=root,
               webhook_metrics_url=f"http://127.0.0.1:{metrics_port}/metrics")
    st.procs["redis"] = redis_proc
    api_log = (root / "api.log").open("ab")
    st.procs["api"] = subprocess.Popen(api_command("127.0.0.1", port), env=full_env, stdout=api_log,
                                       stderr=subprocess.STDOUT)
    try:
        st.start_webhook_worker("webhooks")
        if worker:
            st.start_worker("worker")
            st.wait_for_worker("worker")
        # Generous: on a shared, loaded CPU a Celery process can take minutes to start.
        wait_http(st.webhook_metrics_url, root / "webhooks.log", timeout=240)
        wait_for_api(st.url, root / "api.log", timeout=240)
        yield st
    finally:
        for proc in reversed(list(st.procs.values())):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if os.environ.get("TEXTGEN_TEST_LOGS"):
            for log in root.glob("*.log"):
                print(f"==== {log.name}\n{tail(log)}")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("stack")
    models = [{"id": DEFAULT_MODEL_ID, "max_batch": 8},
              {"id": IDLE_MODEL, "source": "local", "location": str(root / "nowhere")}]
    with launch_stack(root, models, DEFAULT_MODEL_ID) as st:
        yield st


@pytest.fixture(scope="session")
def start_api(stack: Stack) -> Iterator[Callable[..., str]]:
    """Start another API process on the stack's Redis with settings overridden by ``env``
    (e.g. tight rate limits); jobs it accepts run on the stack's worker. Returns its URL."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, loglevel: str = "info", **env: str) -> str:
        port = free_port()
        log = stack.logs / f"{name}.log"
        proc = subprocess.Popen(api_command("127.0.0.1", port, loglevel), env={**stack.env, **env},
                                stdout=log.open("ab"), stderr=subprocess.STDOUT)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        wait_for_api(url, log)
        return url

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    with stack.client() as c:
        yield c


def wait_job(client: httpx.Client, job_id: str, timeout: float = 120) -> dict:
    """Long-poll until the job ends."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}", params={"wait": 30}).json()
        if job["status"] not in ("queued", "running") or time.monotonic() > deadline:
            return job
