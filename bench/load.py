"""Load test: N concurrent clients submit jobs and poll them for a fixed time, on loopback only.

Each client submits a small job, polls it until it ends, and submits the next. Afterwards
every accepted job is followed to its end (up to ``--drain`` seconds): an accepted job that is
missing or still unfinished then counts as lost. Figures: submit throughput (accepted jobs/s),
p50/p99 latency of every API request, errors (5xx, transport errors, unexpected 4xx) and lost
jobs. The last line is one JSON object with the figures.

By default it starts its own private stack (redis-server, one worker with the real model, the
API with rate limits off); ``--url`` points it at a running API on this machine instead.

    python bench/load.py                       # 200 clients for 60 s
    python bench/load.py --clients 50 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

TERMINAL = {"succeeded", "failed", "canceled", "expired"}
BENCH_KEY = "bench-load-key"


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    accepted: list[str] = field(default_factory=list)
    finished: dict[str, str] = field(default_factory=dict)
    refused: int = 0  # 429: back-pressure, expected when limits are on; not an error

    async def call(self, client: httpx.AsyncClient, method: str, url: str, **kw: object) -> httpx.Response | None:
        started = time.perf_counter()
        try:
            resp = await client.request(method, url, **kw)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            self.errors[type(exc).__name__] += 1
            return None
        self.latencies.append(time.perf_counter() - started)
        self.statuses[str(resp.status_code)] += 1
        if resp.status_code == 429:
            self.refused += 1
        elif resp.status_code >= 400:
            self.errors[f"http_{resp.status_code}"] += 1
        return resp


async def one_client(client: httpx.AsyncClient, tally: Tally, deadline: float, args: argparse.Namespace,
                     index: int) -> None:
    # Repeats of one greedy body would be answered from the result cache: every job here generates.
    body = {"prompt": f"Write one word about the number {index}.", "max_tokens": args.max_tokens,
            "temperature": 0, "cache": False}
    while time.monotonic() < deadline:
        resp = await tally.call(client, "POST", "/v1/jobs", json=body)
        if resp is None or resp.status_code != 202:
            await asyncio.sleep(args.poll_interval)
            continue
        job_id = resp.json()["id"]
        tally.accepted.append(job_id)
        while time.monotonic() < deadline:
            await asyncio.sleep(args.poll_interval)
            polled = await tally.call(client, "GET", f"/v1/jobs/{job_id}")
            if polled is not None and polled.status_code == 200 and polled.json()["status"] in TERMINAL:
                tally.finished[job_id] = polled.json()["status"]
                break


async def drain(client: httpx.AsyncClient, tally: Tally, timeout: float) -> None:
    """Follow every accepted job that had not ended to its end, or until ``timeout``."""
    deadline = time.monotonic() + timeout
    pending = [j for j in tally.accepted if j not in tally.finished]
    semaphore = asyncio.Semaphore(64)

    async def follow(job_id: str) -> None:
        async with semaphore:
            while time.monotonic() < deadline:
                wait = max(0.0, min(20.0, deadline - time.monotonic()))
                try:
                    resp = await client.get(f"/v1/jobs/{job_id}", params={"wait": wait}, timeout=wait + 30)
                except httpx.HTTPError:
                    await asyncio.sleep(1)
                    continue
                if resp.status_code == 404:
                    return  # gone: counted as lost
                if resp.status_code == 200 and resp.json()["status"] in TERMINAL:
                    tally.finished[job_id] = resp.json()["status"]
                    return

    await asyncio.gather(*(follow(j) for j in pending))


def percentile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


async def run(url: str, key: str, args: argparse.Namespace) -> dict[str, object]:
    tally = Tally()
    limits = httpx.Limits(max_connections=args.clients + 16, max_keepalive_connections=args.clients + 16)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, limits=limits,
                                 timeout=60) as client:
        started = time.monotonic()
        deadline = started + args.duration
        await asyncio.gather(*(one_client(client, tally, deadline, args, i) for i in range(args.clients)))
        elapsed = time.monotonic() - started
        drain_started = time.monotonic()
        await drain(client, tally, args.drain)
        drain_seconds = time.monotonic() - drain_started
    lost = [j for j in tally.accepted if j not in tally.finished]
    ms = [v * 1000 for v in tally.latencies]
    return {
        "clients": args.clients,
        "duration_s": round(elapsed, 1),
        "accepted": len(tally.accepted),
        "jobs_per_s": round(len(tally.accepted) / elapsed, 2),
        "requests": len(tally.latencies),
        "requests_per_s": round(len(tally.latencies) / elapsed, 1),
        "p50_ms": round(percentile(ms, 50), 1),
        "p99_ms": round(percentile(ms, 99), 1),
        "errors": sum(tally.errors.values()),
        "error_kinds": dict(tally.errors),
        "refused_429": tally.refused,
        "lost": len(lost),
        "outcomes": dict(Counter(tally.finished.values())),
        "drain_s": round(drain_seconds, 1),
    }


def require_loopback(url: str) -> None:
    host = urlsplit(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        sys.exit(f"refusing to load {url}: this benchmark only targets loopback addresses")


@contextlib.contextmanager
def private_stack(max_batch: int) -> Iterator[str]:
    """redis-server, one worker with the real model and the API (rate limits off), on free ports."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from textgen_cli.processes import api_command, child_env, worker_command
    from textgen_cli.redis_server import free_port, start_redis
    from textgen_core.keys import Keys
    from textgen_core.settings import DEFAULT_MODEL_ID, Settings

    root = Path(tempfile.mkdtemp(prefix="textgen-load-"))
    redis_url, redis_proc = start_redis(root / "redis")
    prefix = f"load{uuid.uuid4().hex[:6]}"
    models = json.dumps([{"id": DEFAULT_MODEL_ID, "max_batch": max_batch}])
    env = child_env(TEXTGEN_REDIS_URL=redis_url, TEXTGEN_KEY_PREFIX=prefix, TEXTGEN_API_KEYS=BENCH_KEY,
                    TEXTGEN_ENV="test", TEXTGEN_MODELS=models, TEXTGEN_RATE_LIMIT_REQUESTS_PER_MINUTE="0",
                    TEXTGEN_RATE_LIMIT_TOKENS_PER_MINUTE="0", TEXTGEN_MAX_QUEUED_JOBS_PER_KEY="0",
                    TEXTGEN_HEARTBEAT_SECONDS="1")
    settings = Settings(_env_file=None, models=json.loads(models))
    port = free_port()
    procs = [redis_proc]
    try:
        with (root / "worker.log").open("ab") as wlog, (root / "api.log").open("ab") as alog:
            procs.append(subprocess.Popen(worker_command(settings, "load@bench", loglevel="WARNING"), env=env,
                                          stdout=wlog, stderr=subprocess.STDOUT))
            procs.append(subprocess.Popen(api_command("127.0.0.1", port, "warning"), env=env, stdout=alog,
                                          stderr=subprocess.STDOUT))
        import redis

        r = redis.Redis.from_url(redis_url)
        deadline = time.monotonic() + 300
        while not r.exists(Keys(prefix).worker("load@bench")) or not _healthy(port):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"stack did not start; logs in {root}")
            time.sleep(0.5)
        print("private stack up", flush=True)
        yield f"http://127.0.0.1:{port}"
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of submitting and polling")
    parser.add_argument("--drain", type=float, default=300.0, help="seconds to wait for accepted jobs to end")
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument("--max-batch", type=int, default=16, help="engine batch size of the private worker")
    parser.add_argument("--url", help="a running API on this machine (default: start a private stack)")
    parser.add_argument("--key", default=None, help="API key for --url")
    args = parser.parse_args()

    if args.url:
        require_loopback(args.url)
        figures = asyncio.run(run(args.url, args.key or "tg-dev-key", args))
    else:
        with private_stack(args.max_batch) as url:
            figures = asyncio.run(run(url, BENCH_KEY, args))
    print(f"{figures['clients']} clients, {figures['duration_s']} s: {figures['accepted']} jobs accepted "
          f"({figures['jobs_per_s']} jobs/s), {figures['requests']} requests ({figures['requests_per_s']}/s), "
          f"latency p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms, errors {figures['errors']}, "
          f"lost {figures['lost']}, outcomes {figures['outcomes']}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
