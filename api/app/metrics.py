"""The API's Prometheus metrics: requests (prometheus-fastapi-instrumentator), what it accepted
and refused, and the platform figures it reads from Redis when scraped (queue depth, workers).

Queue depth and workers are the same on every API replica (they come from Redis), so
dashboards take ``max`` over replicas; counters are per replica and summed.
"""

from __future__ import annotations

import json
import time

import redis.asyncio as aioredis
from fastapi import FastAPI
from prometheus_client import Counter, Gauge, disable_created_metrics
from prometheus_fastapi_instrumentator import Instrumentator, metrics
from redis.exceptions import RedisError

from textgen_core.keys import Keys
from textgen_core.queues import model_queues, priority_backlog, queue_depths

disable_created_metrics()  # the *_created series only double what Prometheus stores

JOBS_SUBMITTED = Counter("textgen_jobs_submitted", "Jobs accepted (202) and enqueued, batch items included.",
                         ("model", "queue", "lane", "priority"))
JOBS_RETRIED = Counter("textgen_jobs_retried", "Failed jobs (dead letters) given a new attempt by POST "
                       "/v1/jobs/{id}/retry.", ("model", "queue"))
AUTH_FAILURES = Counter("textgen_api_auth_failures", "Requests refused for a missing or unknown API key.",
                        ("reason",))
RATE_LIMITED = Counter("textgen_api_rate_limited", "Requests refused with 429 by a rate limit (requests, tokens or "
                       "batch-tokens).", ("limit",))
QUEUE_DEPTH = Gauge("textgen_queue_depth", "Messages waiting on a Celery queue (all priorities).",
                    ("model", "queue", "lane"))
QUEUE_PRIORITY_DEPTH = Gauge(
    "textgen_queue_priority_depth", "Messages waiting on a Celery queue at one priority (0 highest), as aged.",
    ("model", "queue", "lane", "priority"))
QUEUE_OLDEST_AGE = Gauge(
    "textgen_queue_oldest_age_seconds", "How long the next message of a queue at one priority has waited "
    "since it was queued (0: none waits). With the depth, the autoscaling signal.",
    ("model", "queue", "lane", "priority"))
REDIS_UP = Gauge("textgen_redis_up", "1 when the last scrape could read Redis, else 0.")
WORKERS = Gauge("textgen_workers", "Live workers (fresh heartbeat) serving a model.", ("model",))

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Made once per process: every app built here (tests build several) records into the same series.
_HTTP_INSTRUMENTATIONS = [
    metrics.requests(metric_namespace="textgen"),
    metrics.latency(metric_namespace="textgen", buckets=LATENCY_BUCKETS),
]


def instrument(app: FastAPI) -> None:
    """Requests by route template, method and status; latency by route (textgen_http_*)."""
    instrumentator = Instrumentator(
        should_group_status_codes=False,
        excluded_handlers=["/metrics"],
    )
    for instrumentation in _HTTP_INSTRUMENTATIONS:
        if instrumentation is not None:
            instrumentator.add(instrumentation)
    instrumentator.instrument(app)


async def refresh_from_redis(redis: aioredis.Redis, keys: Keys, model_ids: list[str]) -> None:
    """Set the gauges that describe the platform rather than this process (read at scrape time).

    Redis being down is itself a figure to report, so it sets ``textgen_redis_up`` to 0 and
    leaves the last known values rather than failing the scrape."""
    try:
        await _read_platform(redis, keys, model_ids)
    except (RedisError, OSError):
        REDIS_UP.set(0)
    else:
        REDIS_UP.set(1)


async def _read_platform(redis: aioredis.Redis, keys: Keys, model_ids: list[str]) -> None:
    queues = model_queues(keys, model_ids)
    for queue, depth in (await queue_depths(redis, queues)).items():
        QUEUE_DEPTH.labels(queue.model, queue.name, queue.lane).set(depth)
    for b in await priority_backlog(redis, queues, time.time()):
        labels = (b.queue.model, b.queue.name, b.queue.lane, str(b.priority))
        QUEUE_PRIORITY_DEPTH.labels(*labels).set(b.depth)
        QUEUE_OLDEST_AGE.labels(*labels).set(round(b.oldest_age_seconds, 3))
    served = dict.fromkeys(model_ids, 0)
    async for key in redis.scan_iter(match=keys.workers_pattern(), count=100):
        raw = await redis.get(key)
        if not raw:
            continue
        beat = json.loads(raw)
        for model in beat.get("models", []):
            served[model["id"]] = served.get(model["id"], 0) + 1
    for model_id, count in served.items():
        WORKERS.labels(model_id).set(count)
