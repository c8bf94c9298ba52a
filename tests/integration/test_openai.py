"""The official openai SDK against the real stack: API -> Redis -> Celery worker -> model."""

from __future__ import annotations

import concurrent.futures
import json
import time
import uuid
from collections.abc import Iterator

import httpx
import openai
import pytest

from api.app.events import RECHECK_SECONDS
from tests.conftest import IDLE_MODEL, KEY_A, KEY_B, Stack, wait_job
from textgen_core.engine.device import resolve_dtype

pytestmark = pytest.mark.integration

MODEL = "smollm2-135m-instruct"
QUESTION = [{"role": "user", "content": "Name three fruits."}]


@pytest.fixture(scope="module")
def sdk(stack: Stack) -> Iterator[openai.OpenAI]:
    # No SDK retries: every status code here is the server's first answer.
    with openai.OpenAI(base_url=f"{stack.url}/v1", api_key=KEY_A, max_retries=0, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def limited(stack: Stack) -> Iterator[str]:
    """A second API replica allowing one open completion per key and a short wait for workers."""
    url = stack.start_api("api-limited", TEXTGEN_OPENAI_MAX_CONCURRENT_PER_KEY="1",
                          TEXTGEN_OPENAI_WORKER_WAIT_SECONDS="0.5")
    yield url
    stack.stop("api-limited")


def test_models_list_and_retrieve(sdk: openai.OpenAI) -> None:
    models = {m.id: m for m in sdk.models.list()}
    assert set(models) == {MODEL, IDLE_MODEL}
    served = models[MODEL].model_dump()
    assert served["object"] == "model" and served["owned_by"] == "textgen" and served["created"] > 0
    assert served["workers"] == ["worker@test"]
    assert served["device"] == "cpu" and served["dtype"] == resolve_dtype("auto", "cpu")
    assert served["max_batch"] == 8 and served["context_length"] >= 2048
    assert models[IDLE_MODEL].model_dump()["workers"] == []
    assert sdk.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError) as err:
        sdk.models.retrieve("gpt-17")
    assert err.value.code == "model_not_found"


def test_chat_completion(sdk: openai.OpenAI) -> None:
    reply = sdk.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=16, temperature=0)
    assert reply.id.startswith("chatcmpl-") and reply.object == "chat.completion" and reply.model == MODEL
    assert reply.created > 0
    [choice] = reply.choices
    assert choice.index == 0 and choice.message.role == "assistant" and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    usage = reply.usage
    assert usage is not None and usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 16
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_chat_streaming_matches_the_sync_answer(sdk: openai.OpenAI) -> None:
    params = {"model": MODEL, "messages": QUESTION, "max_tokens": 16, "temperature": 0}
    whole = sdk.chat.completions.create(**params).choices[0].message.content
    chunks = list(sdk.chat.completions.create(**params, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert sum(1 for p in pieces if p) >= 2, "the text arrives in several chunks"
    assert "".join(pieces) == whole
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals in (["stop"], ["length"])
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert len({c.id for c in chunks}) == 1


def test_completion_continues_plain_text(sdk: openai.OpenAI) -> None:
    params = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}
    reply = sdk.completions.create(**params)
    assert reply.id.startswith("cmpl-") and reply.object == "text_completion"
    [choice] = reply.choices
    assert "Paris" in choice.text
    streamed = list(sdk.completions.create(**params, stream=True))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == choice.text
    assert streamed[-1].choices[0].finish_reason == choice.finish_reason


def test_completion_prompt_list(sdk: openai.OpenAI) -> None:
    reply = sdk.completions.create(model=MODEL, prompt=["One, two,", "Red, green,"], max_tokens=4, temperature=0)
    assert [c.index for c in reply.choices] == [0, 1]
    assert all(c.text for c in reply.choices) and reply.choices[0].text != reply.choices[1].text


def test_n_choices_differ_and_a_seed_reproduces_them(sdk: openai.OpenAI) -> None:
    params = {"model": MODEL, "messages": [{"role": "user", "content": "Write a short poem about the sea."}],
              "max_tokens": 8, "temperature": 1.2, "seed": 1234, "n": 2}
    first = sdk.chat.completions.create(**params)
    again = sdk.chat.completions.create(**params)
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1]
    assert texts[0] != texts[1], "each choice samples with its own seed"
    assert [c.message.content for c in again.choices] == texts
    assert first.usage is not None and 2 <= first.usage.completion_tokens <= 16  # both choices count
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens


def test_streamed_n_choices_carry_their_index(sdk: openai.OpenAI) -> None:
    texts = {0: "", 1: ""}
    for chunk in sdk.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6, temperature=1.0,
                                        seed=7, n=2, stream=True):
        for choice in chunk.choices:
            texts[choice.index] += choice.text
    reply = sdk.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6, temperature=1.0, seed=7,
                                   n=2)
    assert texts == {c.index: c.text for c in reply.choices}


def test_stop_ends_the_text_before_the_stop_string(sdk: openai.OpenAI) -> None:
    params = {"model": MODEL, "prompt": "Monday, Tuesday, Wednesday,", "max_tokens": 12, "temperature": 0}
    full = sdk.completions.create(**params).choices[0].text
    word = next(w for w in full.split()[1:] if len(w) >= 4)  # a stop string from the middle of the text
    stopped = sdk.completions.create(**params, stop=[word]).choices[0]
    assert stopped.text == full[: full.index(word)], (full, word)
    assert stopped.finish_reason == "stop"


def test_wrong_key_is_an_authentication_error(stack: Stack) -> None:
    with openai.OpenAI(base_url=f"{stack.url}/v1", api_key="sk-wrong", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError) as err:
            bad.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4)
        assert err.value.status_code == 401 and err.value.code == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"temperature": 3}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": 5000}, "max_completion_tokens"),
        ({"top_p": 0}, "top_p"),
        ({"n": 9}, "n"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"seed": -1}, "seed"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"logprobs": True}, "logprobs"),
        ({"messages": [{"role": "system", "content": "no user turn"}]}, "messages"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
         "messages.0.content"),
        ({"extra_body": {"mode": "poetry"}}, "mode"),
        ({"n": 2, "extra_body": {"conversation_id": "c-1"}}, "conversation_id"),
    ],
)
def test_bad_parameters_are_400_naming_the_param(sdk: openai.OpenAI, extra: dict, param: str) -> None:
    params = {"model": MODEL, "messages": QUESTION, "max_tokens": 4, **extra}
    with pytest.raises(openai.BadRequestError) as err:
        sdk.chat.completions.create(**params)
    body = err.value.body
    assert isinstance(body, dict) and body["type"] == "invalid_request_error" and body["param"] == param, body


def test_bad_completion_prompt_is_400(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        sdk.completions.create(model=MODEL, prompt="", max_tokens=4)
    assert err.value.body["param"] == "prompt"  # type: ignore[index]


def test_unknown_model_is_not_found(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        sdk.chat.completions.create(model="gpt-17", messages=QUESTION, max_tokens=4)
    assert err.value.code == "model_not_found" and err.value.body["param"] == "model"  # type: ignore[index]


def test_model_without_a_worker_is_503_after_a_short_wait(sdk: openai.OpenAI, stack: Stack) -> None:
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as err:
        sdk.chat.completions.create(model=IDLE_MODEL, messages=QUESTION, max_tokens=4)
    print(f"503 after {time.monotonic() - started:.1f}s")
    assert err.value.status_code == 503 and err.value.code == "model_unavailable"
    assert err.value.response.headers["Retry-After"]


def test_too_many_open_requests_is_429_with_retry_after(stack: Stack, limited: str) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": 400, "stream": True}
    headers = {"Authorization": f"Bearer {KEY_B}"}
    with httpx.Client(base_url=limited, headers=headers, timeout=120) as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as first:
            assert first.status_code == 200
            lines = first.iter_lines()  # kept: dropping it would close the connection
            next(lines)  # the request is open and holds its slot
            with openai.OpenAI(base_url=f"{limited}/v1", api_key=KEY_B, max_retries=0) as sdk:
                with pytest.raises(openai.RateLimitError) as err:
                    sdk.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4)
            assert err.value.response.headers["Retry-After"] == "1"
            assert err.value.code == "rate_limit_exceeded"
        # Closing the first request frees its slot.
        deadline = time.monotonic() + 30
        while True:
            resp = http.post("/v1/chat/completions", json={**body, "max_tokens": 2, "stream": False})
            if resp.status_code != 429 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert resp.status_code == 200, resp.text


def test_raw_sse_framing(client: httpx.Client) -> None:
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 8, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        raw = resp.read().decode()
    assert "\r" not in raw
    assert raw.endswith("data: [DONE]\n\n")
    events = [e for e in raw.split("\n\n") if e and not e.startswith(":")]
    assert all(e.startswith("data: ") and "\n" not in e for e in events), events
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    assert chunks[-2]["choices"][0]["finish_reason"] in ("stop", "length")


def test_junk_on_the_events_channel_does_not_slow_the_answers(stack: Stack, client: httpx.Client) -> None:
    """A non-streaming completion answers when its job's end event comes. Messages that name no job
    (a stray publisher's) are ignored, and the listener lives on: answers do not fall back to the
    re-check every RECHECK_SECONDS."""
    for junk in ("[1]", "42", "null", '"x"', '{"id": 5}', "{not json"):
        stack.redis().publish(stack.keys.events_channel, junk)
    for _ in range(2):
        resp = client.post("/v1/chat/completions", json={"model": MODEL, "messages": QUESTION, "max_tokens": 4,
                                                         "temperature": 0})
        answered = time.time()
        assert resp.status_code == 200
        [job_id] = resp.headers["X-Job-Ids"].split(",")
        finished = wait_job(client, job_id)["timings"]["finished_at"]
        assert answered - finished < RECHECK_SECONDS - 1, "answered by the re-check, not by the job's event"


def test_client_disconnect_cancels_a_streamed_job(client: httpx.Client) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Write a very long story about a dragon."}],
            "max_tokens": 1000, "temperature": 0.9, "seed": 7, "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        [job_id] = resp.headers["X-Job-Ids"].split(",")
        texts = 0
        for line in resp.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                texts += 1
            if texts >= 2:
                break  # leave mid-generation
    job = wait_job(client, job_id)
    assert job["status"] == "canceled" and job["finish_reason"] == "canceled"
    assert job["output"] and job["usage"]["completion_tokens"] < 1000


def test_client_disconnect_cancels_a_waiting_request(stack: Stack, client: httpx.Client) -> None:
    marker = f"user-{uuid.uuid4().hex[:8]}"
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Write a very long story about a dragon."}],
            "max_tokens": 1000, "temperature": 0.9, "seed": 7, "user": marker, "unknown_field": "ignored"}
    with pytest.raises(httpx.ReadTimeout):
        client.post("/v1/chat/completions", json=body, timeout=httpx.Timeout(120, read=3))
    job_id = _job_with_user(stack, marker)
    job = wait_job(client, job_id)
    assert job["status"] == "canceled" and job["metadata"] == {"user": marker}
    assert job["usage"]["completion_tokens"] < 1000


def _job_with_user(stack: Stack, marker: str) -> str:
    r = stack.redis()
    for key in r.scan_iter(match=stack.keys.job("*"), count=1000):
        if not key.endswith(":tokens") and marker in (r.hget(key, "metadata") or ""):
            return key.rsplit(":", 1)[1]
    raise AssertionError(f"no job for {marker}")


def test_mode_and_conversation_id_extras(sdk: openai.OpenAI, client: httpx.Client) -> None:
    conv = f"oa-{uuid.uuid4().hex[:8]}"
    params = {"model": MODEL, "max_tokens": 4, "temperature": 0}
    first = sdk.chat.completions.create(**params, messages=[{"role": "user", "content": "My name is Ada."}],
                                        extra_body={"conversation_id": conv, "mode": "support"})
    second = sdk.chat.completions.create(**params, messages=[{"role": "user", "content": "What is my name?"}],
                                         extra_body={"conversation_id": conv, "mode": "support"})
    alone = sdk.chat.completions.create(**params, messages=[{"role": "user", "content": "What is my name?"}],
                                        extra_body={"mode": "support"})
    assert second.usage and alone.usage and first.usage
    assert second.usage.prompt_tokens > alone.usage.prompt_tokens + 5, "the history reached the model"
    history = client.get(f"/v1/conversations/{conv}").json()["messages"]
    assert [m["content"] for m in history][:2] == ["My name is Ada.", first.choices[0].message.content]
    general = sdk.chat.completions.create(**params, messages=[{"role": "user", "content": "What is my name?"}])
    assert general.usage and general.usage.prompt_tokens != alone.usage.prompt_tokens, "mode shaped the prompt"


def test_openapi_lists_the_openai_endpoints(stack: Stack) -> None:
    paths = set(httpx.get(f"{stack.url}/openapi.json").json()["paths"])
    assert {"/v1/models", "/v1/models/{model_id}", "/v1/chat/completions", "/v1/completions"} <= paths


def test_context_length_exceeded_is_a_bad_request(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "7 " * 5000}], max_tokens=4)
    assert err.value.status_code == 400 and err.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as err:
        sdk.completions.create(model=MODEL, prompt="7 " * 5000, max_tokens=4)
    assert err.value.code == "context_length_exceeded"


LONG = [{"role": "user", "content": "Write a very long story about a dragon."}]


def _cancel_when_running(stack: Stack, client: httpx.Client, marker: str) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            job_id = _job_with_user(stack, marker)
            if client.get(f"/v1/jobs/{job_id}").json()["status"] == "running":
                break
        except AssertionError:
            pass
        assert time.monotonic() < deadline, "the completion's job never ran"
        time.sleep(0.1)
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200


def test_a_job_canceled_through_the_jobs_api_ends_its_completion_as_canceled(
        sdk: openai.OpenAI, stack: Stack, client: httpx.Client) -> None:
    marker = f"user-{uuid.uuid4().hex[:8]}"
    params = {"model": MODEL, "messages": LONG, "max_tokens": 1000, "temperature": 0.9, "seed": 3}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        reply = pool.submit(sdk.chat.completions.create, **params, user=marker)
        _cancel_when_running(stack, client, marker)
        [choice] = reply.result(timeout=120).choices
    assert choice.finish_reason == "canceled"  # not "stop": the text was cut off

    marker = f"user-{uuid.uuid4().hex[:8]}"
    stream = sdk.chat.completions.create(**params, user=marker, stream=True)
    _cancel_when_running(stack, client, marker)
    reasons = [c.choices[0].finish_reason for c in stream if c.choices and c.choices[0].finish_reason]
    assert reasons == ["canceled"]


def test_files_list_and_delete(sdk: openai.OpenAI, stack: Stack) -> None:
    line = json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
                       "body": {"messages": QUESTION}}).encode()
    first = sdk.files.create(file=("a.jsonl", line), purpose="batch")
    second = sdk.files.create(file=("b.jsonl", line), purpose="batch")
    listed = [f.id for f in sdk.files.list()]
    assert listed.index(second.id) < listed.index(first.id)  # newest first
    assert [f.id for f in sdk.files.list(order="asc", limit=1, after=first.id)][:1] == [second.id]
    with openai.OpenAI(base_url=f"{stack.url}/v1", api_key=KEY_B, max_retries=0) as other:
        assert first.id not in [f.id for f in other.files.list()]
        with pytest.raises(openai.NotFoundError):
            other.files.delete(first.id)
    deleted = sdk.files.delete(first.id)
    assert deleted.id == first.id and deleted.deleted is True
    assert first.id not in [f.id for f in sdk.files.list()]
    with pytest.raises(openai.NotFoundError):
        sdk.files.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        sdk.files.delete(first.id)
    assert list(sdk.files.list(purpose="fine-tune")) == []
    assert list(sdk.files.list(after="file-unknown")) == []


def test_batch_lines_take_content_parts_and_the_developer_role(sdk: openai.OpenAI, client: httpx.Client) -> None:
    body = {"max_tokens": 4, "temperature": 0, "messages": [
        {"role": "developer", "content": "Answer in one word."},
        {"role": "user", "content": [{"type": "text", "text": "Name a "}, {"type": "text", "text": "fruit."}]}]}
    line = json.dumps({"custom_id": "parts", "method": "POST", "url": "/v1/chat/completions", "body": body})
    uploaded = sdk.files.create(file=("parts.jsonl", line.encode()), purpose="batch")
    batch = sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 120
    while batch.status not in ("completed", "failed", "cancelled", "expired") and time.monotonic() < deadline:
        time.sleep(0.5)
        batch = sdk.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.output_file_id
    [out] = [json.loads(x) for x in sdk.files.content(batch.output_file_id).text.splitlines()]
    assert out["custom_id"] == "parts" and out["response"]["status_code"] == 200
    with pytest.raises(openai.ConflictError):  # rendered from the batch: it goes with the batch
        sdk.files.delete(batch.output_file_id)
    job = client.get(f"/v1/jobs/{out['response']['request_id']}").json()
    assert job["input"]["messages"] == [{"role": "system", "content": "Answer in one word."},
                                        {"role": "user", "content": "Name a fruit."}]
