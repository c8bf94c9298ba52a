"""Chaos benchmark: random SIGKILLs of workers and one Redis restart during a big batch, on a local
stack (``textgen_cli.localstack``: its own Redis with AOF, two workers, the API). Each killed
worker is started again under the same name, as ``textgen up``'s supervisor does.

At the end every item must be in the results exactly once and in a terminal state. Prints what
was lost (accepted items or jobs with no terminal state, or missing from the results) and what
was duplicated (a custom_id more than once in the results, or counts that add up to more than
the batch), and how long each recovery took; the last line is one JSON object. Target: 0 and 0.

    .venv/bin/python bench/chaos.py                      # 2,000 items, 4 tokens each
    .venv/bin/python bench/chaos.py --items 500 --kills 3
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from textgen_cli.localstack import LocalStack  # noqa: E402

TERMINAL = ("succeeded", "failed", "canceled", "expired")


def get_json(client: httpx.Client, path: str, timeout: float = 120) -> Any:
    """GET, riding out the seconds Redis is away (503) as a client should."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            resp = client.get(path)
            if resp.status_code == 200:
                return resp.json()
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"GET {path} did not answer 200")
        time.sleep(0.5)


def completed(client: httpx.Client, batch_id: str) -> int:
    counts = get_json(client, f"/v1/batches/{batch_id}")["request_counts"]
    return int(counts["completed"] + counts["failed"] + counts["canceled"])


def wait_progress(client: httpx.Client, batch_id: str, beyond: int, timeout: float = 600) -> float:
    """Seconds until the batch's done count passes ``beyond``."""
    started = time.monotonic()
    while completed(client, batch_id) <= beyond:
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"no progress past {beyond} in {timeout} s")
        time.sleep(0.2)
    return time.monotonic() - started


def worker_ready_after(stack: LocalStack, name: str, since: float, timeout: float = 300) -> float:
    """Seconds from ``since`` (wall clock) until ``name``'s heartbeat shows a process started after it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            raw = stack.redis().get(stack.keys.worker(f"{name}@local"))
        except Exception:  # noqa: BLE001 - Redis may be restarting; try again
            raw = None
        if raw and json.loads(raw)["started_at"] > since:
            return time.time() - since
        time.sleep(0.2)
    raise TimeoutError(f"{name} not back in {timeout} s")


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    env = {"TEXTGEN_LEASE_SECONDS": "10", "TEXTGEN_LEASE_REAP_SECONDS": "1", "TEXTGEN_CACHE_ENABLED": "false",
           "TEXTGEN_WORKER_METRICS_PORT": "0",
           # Room for the whole batch under the per-key caps, whatever they count.
           "TEXTGEN_MAX_QUEUED_JOBS_PER_KEY": str(args.items + args.jobs + 100)}
    with tempfile.TemporaryDirectory(prefix="textgen-chaos-") as tmp, LocalStack(Path(tmp), extra_env=env) as stack:
        stack.start(workers=args.workers)
        workers = [f"worker{i}" for i in range(args.workers)]
        with stack.client(timeout=120) as client:
            items = [{"custom_id": f"c-{i}", "prompt": f"Name a colour, number {i}."} for i in range(args.items)]
            resp = client.post("/v1/batches", json={"items": items, "max_tokens": args.max_tokens, "temperature": 0})
            resp.raise_for_status()
            batch_id = resp.json()["id"]
            jobs = [client.post("/v1/jobs", json={"prompt": f"Count to {i}.", "max_tokens": args.max_tokens,
                                                  "temperature": 0}).json()["id"] for i in range(args.jobs)]
            started = time.monotonic()
            # The events, spread over the batch: the Redis restart once in the middle, kills around it.
            marks = sorted(rng.uniform(0.1, 0.8) * args.items for _ in range(args.kills))
            redis_mark = args.items * 0.5
            events = [("kill", m) for m in marks] + [("redis", redis_mark)]
            events.sort(key=lambda e: e[1])
            kills: list[dict[str, Any]] = []
            redis_restart: dict[str, Any] = {}
            for kind, mark in events:
                while (done := completed(client, batch_id)) < mark and time.monotonic() - started < args.timeout:
                    time.sleep(0.2)
                if time.monotonic() - started >= args.timeout:
                    break
                if kind == "kill":
                    victim = rng.choice(workers)
                    at = time.time()
                    stack.kill(victim)
                    stack.start_worker(victim)
                    ready = worker_ready_after(stack, victim, at)
                    kills.append({"worker": victim, "done_at_kill": done, "worker_ready_s": round(ready, 1)})
                else:
                    at_mono = time.monotonic()
                    stack.restart_redis(down_seconds=args.redis_down)
                    back = time.monotonic() - at_mono
                    progress = wait_progress(client, batch_id, completed(client, batch_id))
                    redis_restart = {"done_at_restart": done, "redis_back_s": round(back, 1),
                                     "progress_again_s": round(back + progress, 1)}
            while get_json(client, f"/v1/batches/{batch_id}")["status"] not in ("completed", "failed", "canceled"):
                if time.monotonic() - started > args.timeout:
                    break
                time.sleep(1)
            elapsed = time.monotonic() - started
            batch = get_json(client, f"/v1/batches/{batch_id}")
            rows = [json.loads(line) for line in client.get(f"/v1/batches/{batch_id}/results").text.splitlines()
                    if line]
            job_states = [get_json(client, f"/v1/jobs/{job_id}")["status"] for job_id in jobs]
        r = stack.redis()
        records = [r.hgetall(stack.keys.job(job_id)) for job_id in r.lrange(stack.keys.batch_jobs(batch_id), 0, -1)]
    ids = Counter(row["custom_id"] for row in rows)
    counts = batch["request_counts"]
    unfinished = sum(rec.get("status") not in TERMINAL for rec in records) + sum(
        s not in TERMINAL for s in job_states)
    # Lost: missing from the results of a batch that says it is done, or a job that never ended.
    lost_items = sum(1 for item in items if item["custom_id"] not in ids) if batch["status"] == "completed" else 0
    duplicated = sum(n - 1 for n in ids.values() if n > 1) + max(
        0, counts["completed"] + counts["failed"] + counts["canceled"] - counts["total"])
    return {
        "items": args.items, "max_tokens": args.max_tokens, "workers": args.workers, "jobs": args.jobs,
        "lost": lost_items, "unfinished": unfinished,
        "duplicated": duplicated,
        "failed": counts["failed"] + sum(s == "failed" for s in job_states),
        "reruns": sum(int(rec.get("attempts") or 0) > 1 for rec in records),
        "status": batch["status"], "seconds": round(elapsed, 1),
        "kills": kills, "redis_restart": redis_restart,
        "worker_ready_s_max": max((k["worker_ready_s"] for k in kills), default=None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=20, help="interactive jobs submitted with the batch")
    parser.add_argument("--kills", type=int, default=4, help="worker SIGKILLs during the batch")
    parser.add_argument("--redis-down", type=float, default=1.0, help="seconds Redis stays away")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds before giving up (prints anyway)")
    result = run(parser.parse_args())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
