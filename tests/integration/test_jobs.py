"""Jobs end to end: HTTP API -> Redis -> Celery worker -> model -> Redis -> HTTP API."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.conftest import IDLE_MODEL, KEY_B, Stack, wait_job

pytestmark = pytest.mark.integration

GREEDY = {"temperature": 0, "max_tokens": 24}


def submit(client: httpx.Client, **body: object) -> dict:
    resp = client.post("/v1/jobs", json=body)
    assert resp.status_code == 202, resp.text
    return resp.json()


def test_submit_poll_succeeds_with_text_and_usage(client: httpx.Client) -> None:
    job = submit(client, prompt="Name three colours of the rainbow.", **GREEDY, metadata={"sku": "A1"})
    assert job["status"] == "queued"
    assert job["links"]["self"] == f"/v1/jobs/{job['id']}"
    deadline = time.monotonic() + 120
    while job["status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.3)
        job = client.get(f"/v1/jobs/{job['id']}").json()
    assert job["status"] == "succeeded", job
    assert job["output"].strip()
    assert job["finish_reason"] in ("stop", "length")
    usage = job["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    t = job["timings"]
    assert t["created_at"] <= t["started_at"] <= t["finished_at"]
    assert t["queue_seconds"] >= 0 and t["generation_seconds"] > 0
    assert job["metadata"] == {"sku": "A1"}
    assert job["attempts"] == 1 and job["worker"]


def test_wait_holds_until_the_job_ends(client: httpx.Client) -> None:
    job = submit(client, prompt="Say hello.", **GREEDY)
    started = time.monotonic()
    done = client.get(f"/v1/jobs/{job['id']}", params={"wait": 60}).json()
    assert done["status"] == "succeeded"
    assert time.monotonic() - started < 60


def test_wait_returns_at_timeout_for_a_job_that_cannot_run(client: httpx.Client) -> None:
    job = submit(client, prompt="never runs", model=IDLE_MODEL)
    started = time.monotonic()
    still = client.get(f"/v1/jobs/{job['id']}", params={"wait": 1.5}).json()
    elapsed = time.monotonic() - started
    assert still["status"] == "queued"
    assert 1.4 <= elapsed < 10
    client.post(f"/v1/jobs/{job['id']}/cancel")


def test_cancel_a_queued_job_never_runs(stack: Stack, client: httpx.Client) -> None:
    job = submit(client, prompt="never runs", model=IDLE_MODEL)
    resp = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert resp.status_code == 200
    assert resp.json()["status"] == "canceled"
    final = client.get(f"/v1/jobs/{job['id']}").json()
    assert final["status"] == "canceled" and final["timings"]["started_at"] is None
    assert final["attempts"] == 0
    # canceling again is harmless
    assert client.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "canceled"


def test_cancel_a_running_job_keeps_the_text_so_far(stack: Stack, client: httpx.Client) -> None:
    job = submit(client, prompt="Write a very long story about a dragon.", max_tokens=1000, temperature=0.9,
                 seed=7)
    r = stack.redis()
    deadline = time.monotonic() + 60
    while r.xlen(stack.keys.tokens(job["id"])) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    resp = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert resp.status_code == 200
    final = wait_job(client, job["id"])
    assert final["status"] == "canceled"
    assert final["finish_reason"] == "canceled"
    assert final["output"], "the text generated before the cancel is kept"
    assert final["usage"]["completion_tokens"] < 1000


def test_cancel_a_finished_job_is_a_conflict(client: httpx.Client) -> None:
    job = submit(client, prompt="Say hi.", **GREEDY)
    wait_job(client, job["id"])
    resp = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert resp.status_code == 409
    assert resp.json()["error"]["code"] == "job_not_cancelable"


def test_history_across_two_turns(client: httpx.Client) -> None:
    conv = f"conv-{time.monotonic_ns()}"
    first = wait_job(client, submit(client, prompt="My name is Alice and I like tea.", conversation_id=conv,
                                    **GREEDY)["id"])
    assert first["status"] == "succeeded"
    second = wait_job(client, submit(client, prompt="What is my name?", conversation_id=conv, **GREEDY)["id"])
    assert second["status"] == "succeeded"
    # The second turn carried the first turn to the model.
    alone = wait_job(client, submit(client, prompt="What is my name?", **GREEDY)["id"])
    assert second["usage"]["prompt_tokens"] > alone["usage"]["prompt_tokens"] + 10
    history = client.get(f"/v1/conversations/{conv}").json()
    assert [m["role"] for m in history["messages"]] == ["user", "assistant", "user", "assistant"]
    assert history["messages"][0]["content"] == "My name is Alice and I like tea."
    assert history["messages"][1]["content"] == first["output"]
    assert history["messages"][3]["content"] == second["output"]
    # Another key does not see it; deleting forgets it.
    with httpx.Client(base_url=str(client.base_url), headers={"X-API-Key": KEY_B}) as other:
        assert other.get(f"/v1/conversations/{conv}").status_code == 404
    assert client.delete(f"/v1/conversations/{conv}").status_code == 200
    assert client.get(f"/v1/conversations/{conv}").status_code == 404


@pytest.mark.parametrize("mode", ["general", "recommendation", "support", "ecommerce"])
def test_each_mode_generates_with_its_own_instructions(client: httpx.Client, mode: str) -> None:
    job = wait_job(client, submit(client, prompt="A wool scarf, red, 180 cm.", mode=mode, **GREEDY)["id"])
    assert job["status"] == "succeeded" and job["mode"] == mode and job["output"].strip()


def test_modes_shape_the_prompt(client: httpx.Client) -> None:
    sizes = set()
    for mode in ("general", "support", "ecommerce"):
        job = wait_job(client, submit(client, prompt="Hello", mode=mode, max_tokens=1, temperature=0)["id"])
        sizes.add(job["usage"]["prompt_tokens"])
    assert len(sizes) == 3


def test_messages_input(client: httpx.Client) -> None:
    job = submit(client, messages=[{"role": "system", "content": "Answer with one word."},
                                   {"role": "user", "content": "What colour is the sky?"}], **GREEDY)
    done = wait_job(client, job["id"])
    assert done["status"] == "succeeded" and done["output"].strip()


def test_stream_deltas_add_up_to_the_output(stack: Stack, client: httpx.Client) -> None:
    job = submit(client, prompt="Describe the moon in two sentences.", temperature=0, max_tokens=40)
    deltas: list[str] = []
    final = None
    with client.stream("GET", f"/v1/jobs/{job['id']}/stream") as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
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


def test_late_stream_subscriber_gets_everything(client: httpx.Client) -> None:
    job = wait_job(client, submit(client, prompt="Count from one to five.", **GREEDY)["id"])
    body = client.get(f"/v1/jobs/{job['id']}/stream").text
    texts = [json.loads(line[5:])["text"] for line in body.splitlines()
             if line.startswith("data:") and '"text"' in line and '"object"' not in line]
    assert "".join(texts) == job["output"]
    assert "event: done" in body


def test_concurrent_jobs_share_a_batch(client: httpx.Client) -> None:
    first = submit(client, prompt="Write a long story about a lighthouse keeper.", temperature=0, max_tokens=48)
    second = submit(client, prompt="Write a long story about a mountain village.", temperature=0, max_tokens=48)
    done = [wait_job(client, first["id"]), wait_job(client, second["id"])]
    assert all(j["status"] == "succeeded" for j in done)
    assert all(j["batch_size"] >= 2 for j in done), [j["batch_size"] for j in done]


def test_greedy_text_is_the_same_alone_and_inside_a_batch(client: httpx.Client) -> None:
    body = {"prompt": "Name three uses of a paperclip.", **GREEDY}
    alone = wait_job(client, submit(client, **body)["id"])
    others = [submit(client, prompt=f"Write a long story about {topic}.", temperature=0, max_tokens=48)
              for topic in ("a lighthouse keeper", "a desert caravan")]
    batched = wait_job(client, submit(client, **body)["id"])
    for job in others:
        wait_job(client, job["id"])
    assert alone["status"] == batched["status"] == "succeeded"
    assert batched["batch_size"] >= 2, "the second run shared its batch with the other jobs"
    assert batched["output"] == alone["output"]


def test_cancel_mid_batch_leaves_the_other_rows_intact(stack: Stack, client: httpx.Client) -> None:
    body = {"prompt": "List four colours of the rainbow.", **GREEDY}
    alone = wait_job(client, submit(client, **body)["id"])
    doomed = submit(client, prompt="Write a very long story about a dragon.", max_tokens=1000, temperature=0)
    kept = submit(client, **body)
    r = stack.redis()
    deadline = time.monotonic() + 60
    while r.xlen(stack.keys.tokens(doomed["id"])) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert client.post(f"/v1/jobs/{doomed['id']}/cancel").status_code == 200
    canceled, finished = wait_job(client, doomed["id"]), wait_job(client, kept["id"])
    assert canceled["status"] == "canceled" and canceled["usage"]["completion_tokens"] < 1000
    assert finished["status"] == "succeeded" and finished["batch_size"] >= 2
    assert finished["output"] == alone["output"]


def sse_events(body: str) -> list[tuple[str, str | None, dict]]:
    """(event, id, data) of every event in an SSE body."""
    out = []
    for block in body.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            name, _, value = line.partition(":")
            fields[name] = value.strip()
        if "event" in fields:
            out.append((fields["event"], fields.get("id"), json.loads(fields["data"])))
    return out


def test_a_reconnecting_stream_resumes_after_last_event_id(client: httpx.Client) -> None:
    job = wait_job(client, submit(client, prompt="Count from one to ten in words.", **GREEDY)["id"])
    events = sse_events(client.get(f"/v1/jobs/{job['id']}/stream").text)
    deltas = [(event_id, data["text"]) for kind, event_id, data in events if kind == "delta"]
    assert len(deltas) >= 3 and all(event_id for event_id, _ in deltas)
    assert events[-1][0] == "done" and events[-1][1]  # the final event has an id too
    # As an EventSource reconnects: the header names the last event it saw; only the rest comes.
    seen = 2
    resumed = sse_events(client.get(f"/v1/jobs/{job['id']}/stream",
                                    headers={"Last-Event-ID": deltas[seen - 1][0]}).text)
    rest = [data["text"] for kind, _, data in resumed if kind == "delta"]
    assert rest == [text for _, text in deltas[seen:]]
    assert "".join(text for _, text in deltas[:seen]) + "".join(rest) == job["output"]
    assert resumed[-1][0] == "done" and resumed[-1][2]["status"] == "succeeded"
    # The query parameter does the same; after the last event only `done` comes again.
    by_query = sse_events(client.get(f"/v1/jobs/{job['id']}/stream",
                                     params={"last_event_id": deltas[-1][0]}).text)
    assert [kind for kind, _, _ in by_query] == ["done"]
    after_done = sse_events(client.get(f"/v1/jobs/{job['id']}/stream",
                                       headers={"Last-Event-ID": events[-1][1]}).text)
    assert [kind for kind, _, _ in after_done] == ["done"]


def test_a_malformed_last_event_id_is_a_400(client: httpx.Client) -> None:
    job = submit(client, prompt="hi", model=IDLE_MODEL, max_tokens=1)
    resp = client.get(f"/v1/jobs/{job['id']}/stream", headers={"Last-Event-ID": "not-an-id"})
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "Last-Event-ID"
    client.post(f"/v1/jobs/{job['id']}/cancel")


def test_the_prompt_check_at_submit_counts_the_conversation_history(client: httpx.Client) -> None:
    """Regression: with a conversation_id, a prompt that fits alone but not with the history the
    worker keeps was accepted and failed later with prompt_too_long."""
    conv = f"conv-long-{time.monotonic_ns()}"
    first = wait_job(client, submit(client, prompt="cat " * 900, conversation_id=conv, temperature=0,
                                    max_tokens=2)["id"])
    assert first["status"] == "succeeded", first
    # About 6,900 tokens + max_tokens 1,024 fits the 8,192-token context alone; the ~900 tokens of
    # history the worker keeps (TEXTGEN_HISTORY_MAX_TOKENS 1,024) take it over.
    resp = client.post("/v1/jobs", json={"prompt": "cat " * 6900, "conversation_id": conv, "max_tokens": 1024})
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "prompt"
    assert "history" in error["message"]
    client.delete(f"/v1/conversations/{conv}")
