"""Metrics on the real stack: the API's and a worker's /metrics move as jobs queue and run, and a
real Prometheus scrapes both and answers PromQL."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

import celeryconfig
from tests.binaries import require
from tests.conftest import Stack, launch_stack, tail, wait_job
from textgen_cli.redis_server import free_port
from textgen_core.keys import GENERATE_TASK
from textgen_core.settings import DEFAULT_MODEL_ID

pytestmark = pytest.mark.integration

MODEL = DEFAULT_MODEL_ID
JOBS = 3


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(url, timeout=30).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """Sum of the samples named ``name`` whose labels include ``labels`` (0 when none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


class Observed:
    def __init__(self, stack: Stack):
        self.stack = stack
        self.worker_port = free_port()
        self.queue = stack.keys.queue(MODEL, "interactive")
        self.jobs: list[dict] = []

    @property
    def worker_metrics(self) -> str:
        return f"http://127.0.0.1:{self.worker_port}/metrics"


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    """A stack whose worker starts only when a test starts it, so queued jobs stay queued first."""
    root = tmp_path_factory.mktemp("observed")
    with launch_stack(root, [{"id": MODEL, "max_batch": 4}], MODEL, worker=False) as stack:
        yield Observed(stack)


def test_queue_depth_rises_while_no_worker_consumes_then_worker_metrics_count_the_jobs(observed: Observed) -> None:
    stack = observed.stack
    api_metrics = f"{stack.url}/metrics"
    before = scrape(api_metrics)
    assert value(before, "textgen_queue_depth", queue=observed.queue) == 0
    assert value(before, "textgen_workers", model=MODEL) == 0
    assert value(before, "textgen_redis_up") == 1

    with stack.client() as client:
        for i in range(JOBS):
            resp = client.post("/v1/jobs", json={"prompt": f"Count to {i + 2}.", "max_tokens": 4, "temperature": 0})
            assert resp.status_code == 202, resp.text
            observed.jobs.append(resp.json())
    # A redelivered copy on a priority sub-queue (<queue>\x06\x162) counts too.
    celery = Celery(broker=stack.redis_url)
    celery.conf.broker_transport_options = celeryconfig.broker_transport_options
    celery.send_task(GENERATE_TASK, args=[observed.jobs[0]["id"]], queue=observed.queue, priority=2)
    assert stack.redis().llen(f"{observed.queue}\x06\x162") == 1

    queued = scrape(api_metrics)
    assert value(queued, "textgen_queue_depth", queue=observed.queue) == JOBS + 1
    assert value(queued, "textgen_jobs_submitted_total", queue=observed.queue) == JOBS
    assert value(queued, "textgen_http_requests_total", handler="/v1/jobs", method="POST", status="202") == JOBS

    httpx.get(f"{stack.url}/v1/jobs/x", headers={"Authorization": "Bearer wrong"}, timeout=10)
    assert value(scrape(api_metrics), "textgen_api_auth_failures_total", reason="invalid_key") == 1

    stack.start_worker("worker", TEXTGEN_WORKER_METRICS_PORT=str(observed.worker_port))
    stack.wait_for_worker("worker")
    # Worker metrics listen where the API does by default: loopback, not every interface.
    listening = {(c.laddr.ip, c.laddr.port) for c in psutil.Process(stack.procs["worker"].pid).net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN}
    assert ("127.0.0.1", observed.worker_port) in listening, listening
    with stack.client() as client:
        done = [wait_job(client, job["id"], timeout=600) for job in observed.jobs]  # a loaded CPU is slow
    assert [j["status"] for j in done] == ["succeeded"] * JOBS, done

    deadline = time.monotonic() + 30
    while value(after := scrape(api_metrics), "textgen_queue_depth", queue=observed.queue) and \
            time.monotonic() < deadline:
        time.sleep(0.5)
    assert value(after, "textgen_queue_depth", queue=observed.queue) == 0
    assert value(after, "textgen_workers", model=MODEL) == 1

    w = scrape(observed.worker_metrics)
    labels = {"model": MODEL, "queue": observed.queue}
    assert value(w, "textgen_jobs_finished_total", status="succeeded", **labels) == JOBS
    assert value(w, "textgen_jobs_finished_total", status="failed") == 0
    for histogram in ("textgen_job_queue_wait_seconds", "textgen_time_to_first_token_seconds",
                      "textgen_job_generation_seconds", "textgen_job_e2e_seconds"):
        assert value(w, f"{histogram}_count", **labels) == JOBS, histogram
        assert value(w, f"{histogram}_sum", **labels) > 0, histogram
    assert value(w, "textgen_prompt_tokens_total", **labels) == sum(j["usage"]["prompt_tokens"] for j in done)
    assert value(w, "textgen_generation_tokens_total", **labels) == sum(
        j["usage"]["completion_tokens"] for j in done)
    steps = value(w, "textgen_batch_size_count", model=MODEL)
    assert steps >= max(j["usage"]["completion_tokens"] for j in done)
    print(f"decoding steps {steps:.0f}, mean batch {value(w, 'textgen_batch_size_sum', model=MODEL) / steps:.2f}")
    assert value(w, "textgen_inter_token_latency_seconds_count", model=MODEL) >= 1
    assert value(w, "textgen_model_load_seconds", model=MODEL) > 0
    deadline = time.monotonic() + 10  # the engine drops a finished row just after resolving it
    while value(w, "textgen_worker_jobs_running", model=MODEL) and time.monotonic() < deadline:
        time.sleep(0.2)
        w = scrape(observed.worker_metrics)
    assert value(w, "textgen_worker_jobs_running", model=MODEL) == 0
    assert value(w, "textgen_worker_jobs_waiting", model=MODEL) == 0


def test_batch_items_count_as_submitted_jobs_on_the_bulk_lane(observed: Observed) -> None:
    stack = observed.stack
    bulk = stack.keys.queue(MODEL, "bulk")
    before = scrape(f"{stack.url}/metrics")
    with stack.client() as client:
        items = [{"custom_id": w, "prompt": f"Say {w}."} for w in ("a", "b", "c")]
        resp = client.post("/v1/batches", json={"items": items, "max_tokens": 2, "temperature": 0})
    assert resp.status_code == 202, resp.text
    after = scrape(f"{stack.url}/metrics")
    for lane, added in (("bulk", 3), ("interactive", 0)):
        counted = value(after, "textgen_jobs_submitted_total", lane=lane)
        assert counted == value(before, "textgen_jobs_submitted_total", lane=lane) + added, lane
    assert value(after, "textgen_jobs_submitted_total", queue=bulk) >= 3


PROMETHEUS_CONFIG = """
global:
  scrape_interval: 2s
  scrape_timeout: 2s
scrape_configs:
  - job_name: textgen-api
    static_configs: [{{targets: ["127.0.0.1:{api_port}"]}}]
  - job_name: textgen-worker
    static_configs: [{{targets: ["127.0.0.1:{worker_port}"]}}]
"""


@pytest.fixture
def prometheus(observed: Observed, tmp_path: Path) -> Iterator[str]:
    binary = require("prometheus", "prometheus")
    api_port = observed.stack.url.rsplit(":", 1)[1]
    config = tmp_path / "prometheus.yml"
    config.write_text(PROMETHEUS_CONFIG.format(api_port=api_port, worker_port=observed.worker_port))
    port = free_port()
    log = (tmp_path / "prometheus.log").open("ab")
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        if proc.returncode not in (0, -15, None):
            print(tail(tmp_path / "prometheus.log"))


def promql(base: str, query: str, rows: int = 1, timeout: float = 90) -> list[dict]:
    """Poll Prometheus until ``query`` returns ``rows`` series (each target's first scrape takes a moment)."""
    deadline = time.monotonic() + timeout
    result: list[dict] = []
    while True:
        try:
            resp = httpx.get(f"{base}/api/v1/query", params={"query": query}, timeout=10)
            # A starting Prometheus answers 503 "Service Unavailable" (plain text) until it is ready.
            body = resp.json() if resp.status_code == 200 else {}
            if body.get("status") == "success":
                result = list(body["data"]["result"])
                if len(result) >= rows:
                    return result
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"Prometheus answered {result} for {query!r}")
        time.sleep(0.5)


def test_prometheus_scrapes_api_and_worker_and_answers_promql(observed: Observed, prometheus: str) -> None:
    if not observed.jobs:
        pytest.skip("needs the jobs of the previous test in this module")
    up = promql(prometheus, 'max_over_time(up{job=~"textgen-.*"}[1m])', rows=2)
    assert {r["metric"]["job"]: float(r["value"][1]) for r in up} == {"textgen-api": 1.0, "textgen-worker": 1.0}
    depth = promql(prometheus, f'max by (queue) (textgen_queue_depth{{queue="{observed.queue}"}})')
    assert float(depth[0]["value"][1]) == 0
    # The interactive jobs of the first test (the batch items of the second travel on the bulk queue).
    finished = promql(prometheus, 'sum by (status) (textgen_jobs_finished_total'
                                  f'{{status="succeeded", queue="{observed.queue}"}})')
    assert float(finished[0]["value"][1]) == JOBS
    submitted = promql(prometheus, 'sum(textgen_jobs_submitted_total{lane="interactive"})')
    assert float(submitted[0]["value"][1]) == JOBS
