"""The result cache on the real stack: deterministic requests generate once and are answered at
submit time afterwards; everything that could change the text misses; single flight; batches,
OpenAI endpoints, history, webhooks; TTL expiry; workers of different dtypes."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.conftest import KEY_B, KEY_B_WEBHOOK_SECRET, Stack, wait_job
from tests.integration.receiver import Receiver, serve
from tests.integration.test_batches import results, wait_batch
from textgen_core.engine.device import resolve_dtype

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

GREEDY = {"temperature": 0, "max_tokens": 12}


@pytest.fixture(scope="module")
def cache_url(start_api: Callable[..., str]) -> str:
    """An API with the cache on (the shared stack runs with it off), on the stack's worker."""
    return start_api("api-cache", TEXTGEN_CACHE_ENABLED="true")


@pytest.fixture
def api(cache_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=cache_url, headers={"Authorization": "Bearer test-key-alpha"}, timeout=120) as c:
        yield c


def fresh(text: str) -> str:
    """A prompt no earlier test (or run) has sent, so the first submit always misses."""
    return f"{text} (ref {uuid.uuid4().hex[:8]})"


def submit(client: httpx.Client, **body: object) -> dict:
    resp = client.post("/v1/jobs", json=body)
    assert resp.status_code == 202, resp.text
    return resp.json()


def generated(client: httpx.Client, **body: object) -> dict:
    job = wait_job(client, submit(client, **body)["id"])
    assert job["status"] == "succeeded", job
    assert job["cached"] is False and job["worker"], job
    return job


def assert_answered_at_submit(job: dict, original: dict) -> None:
    """Finished in the submit response itself: no queue, no worker, the original's text and usage."""
    assert job["status"] == "succeeded" and job["cached"] is True, job
    assert job["output"] == original["output"] and job["finish_reason"] == original["finish_reason"]
    assert job["usage"] == original["usage"]
    assert job["worker"] is None and job["attempts"] == 0 and job["timings"]["started_at"] is None
    assert job["timings"]["cache_hit"] is not None and job["timings"]["finished_at"] is not None
    assert job["id"] != original["id"]


def test_a_greedy_request_submitted_twice_generates_once(api: httpx.Client) -> None:
    body = {"prompt": fresh("Name a colour."), **GREEDY}
    first = generated(api, **body)
    assert first["timings"]["cache_hit"] is None
    second = submit(api, **body)
    assert_answered_at_submit(second, first)
    assert api.get(f"/v1/jobs/{second['id']}").json()["cached"] is True  # and so it stays


def test_a_seeded_sampled_request_is_cached_too(api: httpx.Client) -> None:
    body = {"prompt": fresh("Invent a name for a cat."), "temperature": 0.9, "seed": 1234, "max_tokens": 12}
    first = generated(api, **body)
    assert_answered_at_submit(submit(api, **body), first)


def test_an_unseeded_sampled_request_is_never_cached(api: httpx.Client) -> None:
    body = {"prompt": fresh("Invent a name for a dog."), "temperature": 0.9, "max_tokens": 8}
    generated(api, **body)
    again = submit(api, **body)
    assert again["status"] == "queued" and again["cached"] is False
    assert wait_job(api, again["id"])["cached"] is False


@pytest.mark.parametrize("change", [
    {"max_tokens": 11}, {"temperature": 0.5, "seed": 1}, {"top_k": 5}, {"repetition_penalty": 1.2},
    {"stop": ["."]}, {"mode": "support"}, {"messages": [{"role": "user", "content": "Name a colour"}]},
])
def test_different_parameters_or_mode_or_input_miss(api: httpx.Client, change: dict) -> None:
    prompt = fresh("Name a colour")
    generated(api, prompt=prompt, **GREEDY)
    changed = {"prompt": prompt, **GREEDY, **change}
    if "messages" in change:  # the same words, but another turn: a system prompt of the caller's
        changed.pop("prompt")
        changed["messages"] = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}]
    other = submit(api, **changed)
    assert other["status"] == "queued" and other["cached"] is False, other
    assert wait_job(api, other["id"])["cached"] is False


def test_another_api_key_does_not_share_entries(api: httpx.Client, cache_url: str) -> None:
    body = {"prompt": fresh("Name a planet."), **GREEDY}
    generated(api, **body)
    with httpx.Client(base_url=cache_url, headers={"Authorization": f"Bearer {KEY_B}"}, timeout=120) as other:
        job = submit(other, **body)
        assert job["status"] == "queued" and job["cached"] is False


def test_cache_false_bypasses(api: httpx.Client) -> None:
    body = {"prompt": fresh("Name a tree."), **GREEDY}
    first = generated(api, **body)
    bypass = submit(api, **body, cache=False)
    assert bypass["status"] == "queued" and bypass["cached"] is False
    done = wait_job(api, bypass["id"])
    assert done["cached"] is False and done["worker"] and done["timings"]["cache_hit"] is None
    assert_answered_at_submit(submit(api, **body), first)  # the entry is still there for others


def test_concurrent_identical_requests_generate_once(api: httpx.Client) -> None:
    body = {"prompt": fresh("Describe the sea in one sentence."), "temperature": 0, "max_tokens": 40}
    ids = [submit(api, **body)["id"] for _ in range(3)]
    jobs = [wait_job(api, job_id) for job_id in ids]
    assert all(j["status"] == "succeeded" for j in jobs), jobs
    assert len({j["output"] for j in jobs}) == 1
    generated_jobs = [j for j in jobs if not j["cached"]]
    assert len(generated_jobs) == 1, [(j["id"], j["cached"], j["worker"]) for j in jobs]
    for follower in (j for j in jobs if j["cached"]):
        assert follower["usage"] == generated_jobs[0]["usage"] and follower["timings"]["cache_hit"] is not None


def test_a_batch_with_duplicate_products_generates_each_distinct_product_once(api: httpx.Client) -> None:
    tag = uuid.uuid4().hex[:6]
    products = [{"name": f"{name} {tag}", "category": "Kitchen"} for name in ("Steel kettle", "Oak board",
                                                                             "Glass jar")]
    items = [{"custom_id": f"item-{i}", "product": products[i % 3]} for i in range(9)]
    resp = api.post("/v1/batches", json={"items": items, **GREEDY})
    assert resp.status_code == 202, resp.text
    batch = wait_batch(api, resp.json()["id"])
    assert batch["status"] == "completed" and batch["request_counts"]["completed"] == 9, batch
    rows = {r["custom_id"]: r for r in results(api, batch["id"])}
    for i in range(9):
        assert rows[f"item-{i}"]["output"] == rows[f"item-{i % 3}"]["output"]
    assert sum(not r["cached"] for r in rows.values()) == 3, rows
    again = api.post("/v1/batches", json={"items": items[:3], **GREEDY}).json()
    done = wait_batch(api, again["id"])
    assert done["request_counts"]["completed"] == 3
    assert all(r["cached"] for r in results(api, again["id"]))


def test_a_hit_appends_history_and_sends_the_completed_webhook(api: httpx.Client) -> None:
    prompt = fresh("Say hello.")
    first = generated(api, prompt=prompt, conversation_id=f"c-{uuid.uuid4().hex[:6]}", **GREEDY)
    conversation = f"c-{uuid.uuid4().hex[:6]}"
    receiver: Receiver
    for receiver in serve():
        with httpx.Client(base_url=str(api.base_url), headers={"Authorization": f"Bearer {KEY_B}"},
                          timeout=120) as b:
            b_first = generated(b, prompt=prompt, conversation_id=f"b-{uuid.uuid4().hex[:6]}", **GREEDY)
            hit = submit(b, prompt=prompt, conversation_id=conversation, webhook=receiver.url, **GREEDY)
            assert_answered_at_submit(hit, b_first)
            history = b.get(f"/v1/conversations/{conversation}").json()["messages"]
            assert history == [{"role": "user", "content": prompt}, {"role": "assistant", "content": hit["output"]}]
            [request] = receiver.wait_for(1)
            payload = request.verify(KEY_B_WEBHOOK_SECRET)
            assert payload["type"] == "job.completed" and payload["id"] == hit["id"]
            assert payload["status"] == "succeeded" and payload["cached"] is True and "cache_key" not in payload
    assert first["output"] == hit["output"]


def test_openai_chat_completions_use_the_cache(api: httpx.Client) -> None:
    body = {"messages": [{"role": "user", "content": fresh("Name a bird.")}], "temperature": 0, "max_tokens": 12}
    first = api.post("/v1/chat/completions", json=body)
    assert first.status_code == 200, first.text
    second = api.post("/v1/chat/completions", json=body)
    assert second.json()["choices"][0]["message"] == first.json()["choices"][0]["message"]
    assert second.json()["usage"] == first.json()["usage"]
    job = api.get(f"/v1/jobs/{second.headers['X-Job-Ids']}").json()
    assert job["cached"] is True and job["worker"] is None
    streamed = api.post("/v1/chat/completions", json={**body, "stream": True})
    text = "".join(line for line in streamed.text.splitlines() if line.startswith("data: {"))
    assert first.json()["choices"][0]["message"]["content"].split()[0] in text
    bypass = api.post("/v1/chat/completions", json={**body, "cache": False})
    assert api.get(f"/v1/jobs/{bypass.headers['X-Job-Ids']}").json()["cached"] is False


def test_stats_count_hits_misses_and_bytes(api: httpx.Client) -> None:
    before = api.get("/v1/cache/stats").json()
    body = {"prompt": fresh("Name a river."), **GREEDY}
    generated(api, **body)
    submit(api, **body)
    after = api.get("/v1/cache/stats").json()
    assert after["enabled"] is True and after["ttl_seconds"] == 3600
    assert after["hits"] == before["hits"] + 1 and after["misses"] == before["misses"] + 1
    assert after["bytes_written"] > before["bytes_written"]
    assert 0 < after["hit_rate"] <= 1


def test_entries_expire_by_ttl(start_api: Callable[..., str], stack: Stack) -> None:
    url = start_api("api-cache-ttl", TEXTGEN_CACHE_ENABLED="true", TEXTGEN_CACHE_TTL_SECONDS="3")
    with httpx.Client(base_url=url, headers={"Authorization": "Bearer test-key-alpha"}, timeout=120) as short:
        body = {"prompt": fresh("Name a mountain."), **GREEDY}
        first = generated(short, **body)
        entries = list(stack.redis().scan_iter(match=f"{stack.keys.prefix}:cache:*", count=1000))
        assert any(0 < stack.redis().ttl(k) <= 3 for k in entries)
        assert_answered_at_submit(submit(short, **body), first)
        time.sleep(3.5)
        expired = submit(short, **body)
        assert expired["status"] == "queued" and expired["cached"] is False
        assert wait_job(short, expired["id"])["status"] == "succeeded"


def test_workers_of_another_dtype_never_serve_each_others_entries(api: httpx.Client, stack: Stack) -> None:
    """With a worker of the other dtype (float32 beside a native-bf16 CPU's default, else bfloat16) next
    to the first, the API stops answering at submit (the fleet no longer agrees on a profile) and each
    worker reads only entries made under its own dtype."""
    body = {"prompt": fresh("Name a fish."), **GREEDY}
    first = generated(api, **body)
    assert_answered_at_submit(submit(api, **body), first)
    other = "float32" if resolve_dtype("auto", "cpu") == "bfloat16" else "bfloat16"
    stack.start_worker("other", TEXTGEN_WORKER_DTYPE=other)
    try:
        stack.wait_for_worker("other")
        time.sleep(1.5)  # past the API's memo of the fleet's profiles
        jobs = [submit(api, **body) for _ in range(4)]
        assert all(j["status"] == "queued" for j in jobs), jobs
        done = [wait_job(api, j["id"]) for j in jobs]
        assert all(j["status"] == "succeeded" for j in done), done
        made_by = {first["worker"]: first["output"]}  # the text each worker's dtype generated
        made_by.update({j["worker"]: j["output"] for j in done if not j["cached"]})
        for job in (j for j in done if j["cached"]):
            assert job["worker"] in made_by, ("served an entry its dtype never made", job["worker"], done)
            assert job["output"] == made_by[job["worker"]]
    finally:
        stack.stop("other")


def test_identical_batch_items_wait_for_one_generation_and_never_crash(api: httpx.Client, stack: Stack) -> None:
    """Regression: a handed-back duplicate item raised (an unregistered script), sat out its lease and
    was reaped with a second attempt."""
    prompt = fresh("Describe a lighthouse at night.")
    items = [{"custom_id": f"dup-{i}", "prompt": prompt} for i in range(12)]
    resp = api.post("/v1/batches", json={"items": items, "temperature": 0, "max_tokens": 48})
    assert resp.status_code == 202, resp.text
    batch = wait_batch(api, resp.json()["id"])
    assert batch["status"] == "completed" and batch["request_counts"]["completed"] == 12, batch
    rows = results(api, batch["id"])
    assert len({r["output"] for r in rows}) == 1 and sum(not r["cached"] for r in rows) == 1, rows
    item_ids = stack.redis().lrange(stack.keys.batch_jobs(batch["id"]), 0, -1)
    attempts = {api.get(f"/v1/jobs/{job_id}").json()["attempts"] for job_id in item_ids}
    assert attempts == {1}, attempts
    worker_log = (stack.logs / "worker.log").read_text(errors="replace")
    assert "AttributeError" not in worker_log
