"""Prometheus metrics of jobs and the engine, named in the spirit of vLLM's (``textgen_`` prefix).

They live in the process that observes them: a worker counts the jobs it ran and the batches
its engine stepped; the API counts what it accepted (``api/app/metrics.py``). Prometheus sums the
processes. Labels: ``model`` everywhere, ``queue`` (the Celery queue, one per model and lane)
wherever a job is known; engine-level figures have no queue because a batch mixes lanes.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

if TYPE_CHECKING:
    from textgen_core.jobs import JobRecord

log = logging.getLogger(__name__)

# Seconds: from sub-second interactive jobs to the generation time limit.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
TOKEN_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0,
                         2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

JOB_LABELS = ("model", "queue")

JOBS_STARTED = Counter(
    "textgen_jobs_started", "Jobs a worker claimed to run (each attempt), by priority.", (*JOB_LABELS, "priority"))
JOBS_FINISHED = Counter(
    "textgen_jobs_finished", "Jobs that reached a terminal status, by status.", (*JOB_LABELS, "status"))
QUEUE_WAIT = Histogram(
    "textgen_job_queue_wait_seconds", "From submission until a worker claimed the job.", JOB_LABELS,
    buckets=LATENCY_BUCKETS)
TIME_TO_FIRST_TOKEN = Histogram(
    "textgen_time_to_first_token_seconds", "From submission until the first generated token.", JOB_LABELS,
    buckets=LATENCY_BUCKETS)
GENERATION_TIME = Histogram(
    "textgen_job_generation_seconds", "From claim until the job ended on the worker.", JOB_LABELS,
    buckets=LATENCY_BUCKETS)
E2E_LATENCY = Histogram(
    "textgen_job_e2e_seconds", "From submission until the job ended: what a client waits.", JOB_LABELS,
    buckets=LATENCY_BUCKETS)
PROMPT_TOKENS = Counter("textgen_prompt_tokens", "Prompt tokens read by the model.", JOB_LABELS)
GENERATION_TOKENS = Counter("textgen_generation_tokens", "Tokens generated.", JOB_LABELS)

INTER_TOKEN_LATENCY = Histogram(
    "textgen_inter_token_latency_seconds",
    "Time between two decoding steps of a running batch (each row got one token).", ("model",),
    buckets=TOKEN_LATENCY_BUCKETS)
BATCH_SIZE = Histogram(
    "textgen_batch_size", "Rows decoded together in one step.", ("model",), buckets=BATCH_BUCKETS)
MODEL_LOAD_SECONDS = Gauge(
    "textgen_model_load_seconds", "How long this worker took to load the model.", ("model", "device", "dtype"))

# Result cache: a hit is a job answered from it (``where``: api at submit, worker at claim); a miss is a
# cacheable job that generated and wrote its entry (bytes: the entries' size).
CACHE_HITS = Counter("textgen_cache_hits", "Jobs answered from the result cache.", ("model", "where"))
CACHE_MISSES = Counter("textgen_cache_misses", "Cacheable jobs that generated and filled the cache.", ("model",))
CACHE_BYTES = Counter("textgen_cache_bytes", "Bytes of result-cache entries written.", ("model",))

# Dead letters: jobs that ended failed, by why (``max_attempts``: they stopped their worker each time;
# ``error``: the generation failed on them). They are listed by GET /v1/jobs?status=failed and can be
# retried with POST /v1/jobs/{id}/retry.
DEAD_LETTERS = Counter(
    "textgen_dead_letters", "Jobs that ended failed (dead letters), by reason.", (*JOB_LABELS, "reason"))


def observe_finished(job: JobRecord, queue: str, status: str, *, started_at: float | None, finished_at: float,
                     first_token_at: float | None = None, prompt_tokens: int = 0,
                     completion_tokens: int = 0) -> None:
    """Record one job that a worker brought to a terminal status (all times are epoch seconds)."""
    labels = (job.model, queue)
    JOBS_FINISHED.labels(*labels, status).inc()
    created = job.timings.created_at
    E2E_LATENCY.labels(*labels).observe(max(0.0, finished_at - created))
    if started_at is not None:
        QUEUE_WAIT.labels(*labels).observe(max(0.0, started_at - created))
        GENERATION_TIME.labels(*labels).observe(max(0.0, finished_at - started_at))
    if first_token_at is not None:
        TIME_TO_FIRST_TOKEN.labels(*labels).observe(max(0.0, first_token_at - created))
    if prompt_tokens:
        PROMPT_TOKENS.labels(*labels).inc(prompt_tokens)
    if completion_tokens:
        GENERATION_TOKENS.labels(*labels).inc(completion_tokens)
