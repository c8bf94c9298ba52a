"""What metrics cost: the engine's per-step observations, a worker's scrape, and (with --url)
the API's /metrics, which reads queue depth and workers from Redis on every scrape.

    .venv/bin/python bench/metrics_overhead.py [--url http://127.0.0.1:8000] [--scrapes 50]
"""

from __future__ import annotations

import argparse
import statistics
import time

import httpx
from prometheus_client import REGISTRY, generate_latest

from textgen_core import metrics
from textgen_core.jobs import JobRecord


def per_step_cost(steps: int = 200_000) -> float:
    """Microseconds the engine spends per decoding step on metrics (two histogram observations)."""
    batch, itl = metrics.BATCH_SIZE.labels("bench"), metrics.INTER_TOKEN_LATENCY.labels("bench")
    started = time.perf_counter()
    for i in range(steps):
        itl.observe(0.02)
        batch.observe(i % 16 + 1)
    return (time.perf_counter() - started) / steps * 1e6


def per_job_cost(jobs: int = 20_000) -> float:
    """Microseconds a worker spends recording one finished job."""
    job = JobRecord.new(model="bench", owner="o", input={"prompt": "x"}, params={})
    started = time.perf_counter()
    for _ in range(jobs):
        now = time.time()
        metrics.observe_finished(job, "q", "succeeded", started_at=now - 1, finished_at=now, first_token_at=now - 0.5,
                                 prompt_tokens=30, completion_tokens=20)
    return (time.perf_counter() - started) / jobs * 1e6


def scrape_ms(fetch: object, scrapes: int) -> tuple[float, float, int]:
    times, size = [], 0
    for _ in range(scrapes):
        started = time.perf_counter()
        size = len(fetch())  # type: ignore[operator]
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), max(times), size


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", help="a running API to time GET /metrics against")
    parser.add_argument("--scrapes", type=int, default=50)
    args = parser.parse_args()
    print(f"engine, per decoding step:   {per_step_cost():6.2f} us")
    print(f"worker, per finished job:    {per_job_cost():6.2f} us")
    median, worst, size = scrape_ms(lambda: generate_latest(REGISTRY), args.scrapes)
    print(f"worker scrape (render):      {median:6.2f} ms median, {worst:.2f} ms max, {size} bytes")
    if args.url:
        with httpx.Client(base_url=args.url, timeout=30) as client:
            median, worst, size = scrape_ms(lambda: client.get("/metrics").content, args.scrapes)
        print(f"API GET /metrics (+ Redis):  {median:6.2f} ms median, {worst:.2f} ms max, {size} bytes")


if __name__ == "__main__":
    main()
