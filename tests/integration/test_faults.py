"""Faults on the real stack: workers SIGKILLed or stopped mid-generation, a poison job, Redis
restarted (AOF) or hung. Accepted work is never lost and ends in exactly one terminal state.

The stack here starts without a worker; each test starts (and kills) the workers it needs.
Recovery figures are printed (``-s``), never asserted.
"""

from __future__ import annotations

import itertools
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Stack, launch_stack
from textgen_cli.redis_server import start_redis
from textgen_core.settings import DEFAULT_MODEL_ID

# Each test starts workers (a model load each) and runs long generations on what may be a busy CPU.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

MAX_ATTEMPTS = 2
# Long enough to be mid-generation when the test strikes (the model rarely stops this early).
LONG = {"prompt": "Write a very long and detailed essay about the history of lighthouses, with many sections.",
        "max_tokens": 120, "temperature": 0.8, "seed": 7}
SHORT = {"max_tokens": 16, "temperature": 0}
_names = itertools.count(1)


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("faults")
    with launch_stack(root, [{"id": DEFAULT_MODEL_ID, "max_batch": 8}], DEFAULT_MODEL_ID, worker=False,
                      TEXTGEN_MAX_ATTEMPTS=str(MAX_ATTEMPTS)) as st:
        yield st


@pytest.fixture
def api(faults: Stack) -> Iterator[httpx.Client]:
    with faults.client(timeout=120) as c:  # generous: the machine may be busy loading a model
        yield c


def start_worker(st: Stack, wait: bool = True) -> str:
    name = f"gen{next(_names)}"
    st.start_worker(name)
    if wait:
        st.wait_for_worker(name)
    return name


def running_workers(st: Stack) -> list[str]:
    return [n for n, p in st.procs.items() if n.startswith("gen") and p.poll() is None]


def ensure_worker(st: Stack) -> str:
    up = running_workers(st)
    return up[0] if up else start_worker(st)


def submit(api: httpx.Client, **body: object) -> str:
    """Submit, retrying on 503 as a client should (Retry-After) while Redis comes back."""
    deadline = time.monotonic() + 30
    while True:
        resp = api.post("/v1/jobs", json=body)
        if resp.status_code != 503 or time.monotonic() > deadline:
            assert resp.status_code == 202, resp.text
            return str(resp.json()["id"])
        time.sleep(float(resp.headers.get("Retry-After", "1")))


def record(st: Stack, job_id: str) -> dict[str, str]:
    return st.redis().hgetall(st.keys.job(job_id))


def wait_running(st: Stack, job_id: str, deltas: int = 0, timeout: float = 180,
                 not_on: str | None = None) -> dict[str, str]:
    """Wait until the job runs (on a worker other than ``not_on``) and has streamed ``deltas``."""
    r = st.redis()
    deadline = time.monotonic() + timeout
    while True:
        job = r.hgetall(st.keys.job(job_id))
        if job.get("status") == "running" and job.get("worker") != not_on \
                and r.xlen(st.keys.tokens(job_id)) >= deltas:
            return job
        assert job.get("status") in ("queued", "running"), job
        assert time.monotonic() < deadline, f"job not running: {job}"
        time.sleep(0.05)


def stream_ends(st: Stack, job_id: str) -> list[str]:
    return [f["end"] for _, f in st.redis().xrange(st.keys.tokens(job_id)) if "end" in f]


def wait_done(api: httpx.Client, job_id: str, timeout: float = 300) -> dict:
    """Long-poll until the job ends, riding out 503s while Redis is away."""
    deadline = time.monotonic() + timeout
    while True:
        resp = api.get(f"/v1/jobs/{job_id}", params={"wait": 5})
        assert resp.status_code in (200, 503), resp.text
        job = resp.json() if resp.status_code == 200 else {"status": "unknown"}
        if job["status"] not in ("queued", "running", "unknown") or time.monotonic() > deadline:
            return job
        if resp.status_code == 503:
            time.sleep(0.5)


def finish_all(api: httpx.Client, ids: list[str]) -> list[dict]:
    return [wait_done(api, job_id) for job_id in ids]


def test_a_worker_whose_model_cannot_load_exits_and_says_why(faults: Stack) -> None:
    """Regression: the load error went to a logger with no handler and the worker stayed up, said
    ready, and served nothing, so every request met 503 with no error anywhere."""
    broken = json.dumps([{"id": DEFAULT_MODEL_ID, "dtype": "float32", "weights": "int8"}])
    proc = faults.start_worker("broken", TEXTGEN_MODELS=broken)
    try:
        assert proc.wait(240) == 3
    finally:
        faults.procs.pop("broken", None)
    log = (faults.logs / "broken.log").read_text()
    assert "could not start" in log and "weights int8 runs on a CPU with dtype bfloat16" in log


def test_a_worker_started_while_jobs_wait_picks_them_up(faults: Stack, api: httpx.Client) -> None:
    assert not running_workers(faults)
    ids = [submit(api, prompt=f"Name a colour, number {i}.", **SHORT) for i in range(3)]
    time.sleep(1.5)
    assert [record(faults, j)["status"] for j in ids] == ["queued"] * 3
    started = time.monotonic()
    start_worker(faults)
    jobs = finish_all(api, ids)
    print(f"\n3 waiting jobs done {time.monotonic() - started:.1f} s after a worker was started (model load in it)")
    assert [j["status"] for j in jobs] == ["succeeded"] * 3
    assert all(j["output"] for j in jobs)


def test_a_job_of_a_sigkilled_worker_runs_again_with_one_result(faults: Stack, api: httpx.Client) -> None:
    first = ensure_worker(faults)
    standby = start_worker(faults)  # any worker that is up takes the job over
    job_id = submit(api, **LONG, conversation_id="lighthouse-1")
    running = wait_running(faults, job_id, deltas=3)
    victim = next(n for n in (first, standby) if running["worker"] == f"{n}@test")
    faults.kill(victim)
    killed = time.monotonic()
    again = wait_running(faults, job_id, not_on=running["worker"], timeout=120)
    recovery = time.monotonic() - killed
    print(f"\nSIGKILLed {victim} mid-generation; job running again on {again['worker']} after {recovery:.1f} s "
          "(target 60 s; lease 10 s, reaper every 1 s here)")
    job = wait_done(api, job_id)
    assert job["status"] == "succeeded" and job["output"], job
    assert job["attempts"] == 2
    assert stream_ends(faults, job_id) == ["succeeded"]  # one result
    history = api.get("/v1/conversations/lighthouse-1").json()
    assert [m["role"] for m in history["messages"]] == ["user", "assistant"]  # one history append
    assert history["messages"][1]["content"] == job["output"]


def test_a_poison_job_that_kills_every_worker_ends_failed(faults: Stack, api: httpx.Client) -> None:
    ensure_worker(faults)
    job_id = submit(api, **LONG)
    previous = None
    for attempt in range(1, MAX_ATTEMPTS + 1):
        running = wait_running(faults, job_id, not_on=previous, timeout=240)
        assert int(running["attempts"]) == attempt
        faults.kill(running["worker"].removesuffix("@test"))  # the job "kills" its worker
        start_worker(faults)  # the supervisor restarts it
        previous = running["worker"]
    job = wait_done(api, job_id)
    assert job["status"] == "failed", job
    assert job["error"]["type"] == "max_attempts_exceeded"
    assert f"{MAX_ATTEMPTS} attempts" in job["error"]["message"]
    time.sleep(3)  # and it stays failed: nothing picks it up again
    assert record(faults, job_id)["status"] == "failed"
    assert faults.redis().zscore(faults.keys.leases, job_id) is None


def test_warm_shutdown_finishes_running_jobs(faults: Stack, api: httpx.Client) -> None:
    name = ensure_worker(faults)
    ids = [submit(api, prompt=f"Describe a river, number {i}.", max_tokens=48, temperature=0) for i in range(4)]
    wait_running(faults, ids[0], deltas=1)
    proc = faults.procs[name]
    proc.send_signal(signal.SIGTERM)
    proc.wait(180)
    faults.procs.pop(name)
    statuses = [record(faults, j)["status"] for j in ids]
    print(f"\nafter SIGTERM: {statuses}")
    # Finished, or back on the queue for the next worker: never left running by a worker that is gone.
    assert set(statuses) <= {"succeeded", "queued"}
    start_worker(faults)
    jobs = finish_all(api, ids)
    assert [j["status"] for j in jobs] == ["succeeded"] * 4
    assert all(stream_ends(faults, j) == ["succeeded"] for j in ids)


def restart_redis(st: Stack) -> None:
    """Stop Redis (SIGTERM: the AOF is flushed) and start it again on the same port and data."""
    proc = st.procs["redis"]
    proc.terminate()
    proc.wait(30)
    port = int(st.redis_url.rsplit(":", 1)[1].split("/")[0])
    _, st.procs["redis"] = start_redis(Path(st.logs) / "redis", port)


def test_jobs_queued_across_a_redis_restart_all_complete(faults: Stack, api: httpx.Client) -> None:
    name = ensure_worker(faults)
    faults.stop(name)  # jobs wait on the queue while Redis restarts
    waiting = [submit(api, prompt=f"Name a bird, number {i}.", **SHORT) for i in range(4)]
    restart_redis(faults)
    assert [record(faults, j).get("status") for j in waiting] == ["queued"] * 4  # the AOF kept them
    live = start_worker(faults)
    # And a restart with jobs running and queued under a live worker.
    busy = [submit(api, prompt=f"Name a tree, number {i}.", max_tokens=48, temperature=0) for i in range(6)]
    wait_running(faults, busy[0], deltas=1)
    restarted = time.monotonic()
    restart_redis(faults)
    jobs = finish_all(api, waiting + busy)
    print(f"\n{len(jobs)} jobs done {time.monotonic() - restarted:.1f} s after the second Redis restart; "
          f"attempts {[j['attempts'] for j in jobs]}")
    assert [j["status"] for j in jobs] == ["succeeded"] * len(jobs)
    assert all(stream_ends(faults, j) == ["succeeded"] for j in waiting + busy)
    assert faults.procs[live].poll() is None  # the worker rode it out: reconnected, model still loaded


NO_HANG = 10.0  # seconds: the bound on a request while Redis is hung or down (it answers in about 2)


HI = {"prompt": "Hi.", **SHORT}


def _timed(call: object) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    resp = call()  # type: ignore[operator]
    return resp, time.monotonic() - started


def assert_store_unavailable(resp: httpx.Response) -> None:
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"]["type"] == "service_unavailable"
    assert resp.headers["Retry-After"]


def test_redis_hung_or_down_gives_503_at_once_and_the_api_recovers(faults: Stack, api: httpx.Client) -> None:
    worker = ensure_worker(faults)
    redis_proc = faults.procs["redis"]
    figures: dict[str, float] = {}
    redis_proc.send_signal(signal.SIGSTOP)  # hung: connections open, no answers
    try:
        resp, figures["hung_submit_s"] = _timed(lambda: api.post("/v1/jobs", json=HI, timeout=NO_HANG))
        assert_store_unavailable(resp)
        resp, figures["hung_get_s"] = _timed(lambda: api.get("/v1/jobs/job_doesnotexist", timeout=NO_HANG))
        assert_store_unavailable(resp)
        resp, figures["hung_ready_s"] = _timed(lambda: api.get("/ready", timeout=NO_HANG))
        assert resp.status_code == 503 and resp.json()["redis"] is False
    finally:
        redis_proc.send_signal(signal.SIGCONT)
    assert submit(api, prompt="Hello again.", **SHORT)
    redis_proc.terminate()  # down: connections refused
    redis_proc.wait(30)
    try:
        resp, figures["down_submit_s"] = _timed(lambda: api.post("/v1/jobs", json=HI, timeout=NO_HANG))
        assert_store_unavailable(resp)
        resp, figures["down_ready_s"] = _timed(lambda: api.get("/ready", timeout=NO_HANG))
        assert resp.status_code == 503 and resp.json()["redis"] is False
    finally:
        port = int(faults.redis_url.rsplit(":", 1)[1].split("/")[0])
        _, faults.procs["redis"] = start_redis(Path(faults.logs) / "redis", port)
    back = time.monotonic()
    while api.get("/ready").status_code != 200:  # recovers by itself: nothing restarted but Redis
        assert time.monotonic() - back < 60, api.get("/ready").text
        time.sleep(0.2)
    figures["ready_again_s"] = time.monotonic() - back
    print("\n" + json.dumps({k: round(v, 2) for k, v in figures.items()}))
    job = wait_done(api, submit(api, prompt="Are you back?", **SHORT))
    assert job["status"] == "succeeded"
    assert faults.procs[worker].poll() is None


def test_no_job_is_left_holding_a_lease(faults: Stack) -> None:
    """After every fault above, each job ended and dropped its lease: nothing waits on a reaper."""
    r = faults.redis()
    assert r.zcard(faults.keys.leases) == 0
    statuses = {r.hget(k, "status") for k in r.scan_iter(match=f"{faults.keys.prefix}:job:*", count=500)
                if r.type(k) == "hash"}
    assert statuses <= {"succeeded", "failed"}, statuses
