"""The OpenAI Responses API with the official SDK on the real stack: a response is a job."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent

from tests.conftest import IDLE_MODEL, KEY_A, KEY_B, Stack, launch_stack
from tests.integration.receiver import Receiver, serve
from textgen_core.settings import DEFAULT_MODEL_ID

pytestmark = pytest.mark.integration

MODEL = DEFAULT_MODEL_ID
SHORT = {"model": MODEL, "max_output_tokens": 16, "temperature": 0}
OPENING = ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
CLOSING = ["response.output_text.done", "response.content_part.done", "response.output_item.done"]


def sdk_for(url: str, key: str = KEY_A) -> openai.OpenAI:
    # No SDK retries: every status code here is the server's first answer.
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def sdk(stack: Stack) -> Iterator[openai.OpenAI]:
    with sdk_for(stack.url) as client:
        yield client


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from serve()


def wait_done(sdk: openai.OpenAI, response_id: str, timeout: float = 180) -> Response:
    """Poll as a client of background mode does."""
    deadline = time.monotonic() + timeout
    while True:
        response = sdk.responses.retrieve(response_id)
        if response.status not in ("queued", "in_progress"):
            return response
        assert time.monotonic() < deadline, f"still {response.status}"
        time.sleep(0.5)


def wait_streaming(stack: Stack, response_id: str, deltas: int, timeout: float = 180) -> dict[str, str]:
    """Wait until the response's job runs and has streamed ``deltas`` pieces of text."""
    r = stack.redis()
    deadline = time.monotonic() + timeout
    while True:
        job = r.hgetall(stack.keys.job(response_id))
        if job.get("status") == "running" and r.xlen(stack.keys.tokens(response_id)) >= deltas:
            return job
        assert job.get("status") in ("queued", "running"), job
        assert time.monotonic() < deadline, f"not running: {job}"
        time.sleep(0.05)


def summary(events: list[ResponseStreamEvent]) -> list[tuple[int, str, str]]:
    return [(e.sequence_number, e.type, getattr(e, "delta", "")) for e in events]


def test_a_background_response_is_polled_to_completed(sdk: openai.OpenAI, stack: Stack) -> None:
    created = sdk.responses.create(input="Name three fruits.", background=True, instructions="Answer briefly.",
                                   metadata={"ticket": "17"}, **SHORT)
    assert created.id.startswith("resp_") and created.object == "response"
    assert created.status in ("queued", "in_progress") and created.background is True
    assert created.output == [] and created.usage is None
    done = wait_done(sdk, created.id)
    assert done.status in ("completed", "incomplete"), done
    assert done.output_text.strip()
    [message] = done.output
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "output_text"
    assert done.instructions == "Answer briefly." and done.metadata == {"ticket": "17"}
    assert done.model == MODEL and done.max_output_tokens == 16 and done.temperature == 0
    usage = done.usage
    assert usage is not None and usage.input_tokens > 0 and 0 < usage.output_tokens <= 16
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    if done.status == "incomplete":
        assert done.incomplete_details is not None and done.incomplete_details.reason == "max_output_tokens"
    # It is a job: the jobs API shows the same run.
    with stack.client() as client:
        job = client.get(f"/v1/jobs/{created.id}").json()
    assert job["status"] == "succeeded" and job["output"] == done.output_text


def test_a_plain_create_waits_for_the_text(sdk: openai.OpenAI) -> None:
    response = sdk.responses.create(input=[{"role": "user", "content": [
        {"type": "input_text", "text": "Name three"}, {"type": "input_text", "text": " colours."}]}], **SHORT)
    assert response.status in ("completed", "incomplete") and response.background is False
    assert response.output_text.strip() and response.usage is not None and response.usage.output_tokens > 0
    assert sdk.responses.retrieve(response.id).output_text == response.output_text


def test_a_streamed_response_sends_the_event_sequence(sdk: openai.OpenAI) -> None:
    events = list(sdk.responses.create(input="Name three fruits.", stream=True, **SHORT))
    types = [e.type for e in events]
    assert types[:4] == OPENING
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) >= 2, "the text arrives in several deltas"
    assert types[4:4 + len(deltas)] == ["response.output_text.delta"] * len(deltas)
    assert types[4 + len(deltas):] in ([*CLOSING, "response.completed"], [*CLOSING, "response.incomplete"])
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(d.delta for d in deltas)
    assert events[-4].type == "response.output_text.done" and events[-4].text == text
    final = events[-1].response
    assert final.output_text == text and final.usage is not None and final.usage.output_tokens > 0
    assert events[0].response.id == final.id and {d.item_id for d in deltas} == {final.output[0].id}
    assert sdk.responses.retrieve(final.id).output_text == text


def test_a_background_stream_opens_queued_and_runs_on_without_its_client(sdk: openai.OpenAI, stack: Stack) -> None:
    with sdk.responses.create(input="Name three fruits.", stream=True, background=True, **SHORT) as stream:
        first = next(iter(stream))
    assert first.type == "response.created" and first.response.background is True
    assert first.response.status in ("queued", "in_progress")
    assert wait_done(sdk, first.response.id).status in ("completed", "incomplete")  # the client left; it ran on


def test_a_held_response_is_cancelled_when_its_client_leaves(sdk: openai.OpenAI, stack: Stack) -> None:
    essay = {"input": "Write a long essay about the history of bread.", "model": MODEL, "max_output_tokens": 1024}
    with sdk.responses.create(stream=True, **essay) as stream:
        events = iter(stream)
        opening = next(events)
        assert opening.type == "response.created"
        response_id = opening.response.id
        while next(events).type != "response.output_text.delta":
            pass  # leave mid-generation
    assert wait_done(sdk, response_id).status == "cancelled"
    marker = uuid.uuid4().hex
    with stack.client() as client, pytest.raises(httpx.ReadTimeout):  # a plain create, given up on
        client.post("/v1/responses", json={**essay, "metadata": {"marker": marker}},
                    timeout=httpx.Timeout(120, read=3))
    r = stack.redis()
    [waited] = [key.rsplit(":", 1)[1] for key in r.scan_iter(match=stack.keys.job("resp_*"), count=1000)
                if not key.endswith(":tokens") and marker in (r.hget(key, "metadata") or "")]
    assert wait_done(sdk, waited).status == "cancelled"


def test_a_replay_after_the_token_stream_expired_comes_from_the_record(sdk: openai.OpenAI, stack: Stack) -> None:
    done = sdk.responses.create(input="Say hi.", **SHORT)
    stack.redis().delete(stack.keys.tokens(done.id))  # as its TTL (stream_ttl_seconds) would
    events = list(sdk.responses.retrieve(done.id, stream=True))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert deltas == [done.output_text] and events[-1].response.output_text == done.output_text


def test_a_stream_of_a_response_that_vanished_ends(sdk: openai.OpenAI, stack: Stack) -> None:
    waiting = sdk.responses.create(input="Say hi.", background=True, model=IDLE_MODEL)  # no worker serves it
    with sdk.responses.retrieve(waiting.id, stream=True) as stream:
        events = iter(stream)
        assert next(events).type == "response.created"
        stack.redis().delete(stack.keys.job(waiting.id))  # as its TTL would
        assert list(events) == []


def test_a_stream_resumes_after_event_n(sdk: openai.OpenAI, stack: Stack) -> None:
    created = sdk.responses.create(input="Tell a short story about a lighthouse keeper.", background=True,
                                   model=MODEL, max_output_tokens=48, temperature=0)
    wait_streaming(stack, created.id, deltas=2)
    # Joined while it runs: the events after 5 are replayed, then the stream goes on live.
    resumed = list(sdk.responses.retrieve(created.id, stream=True, starting_after=5))
    whole = list(sdk.responses.retrieve(created.id, stream=True))  # after the end: the whole replay
    assert summary(resumed) == summary(whole)[6:]
    assert resumed[0].sequence_number == 6 and whole[-1].type in ("response.completed", "response.incomplete")
    assert "".join(e.delta for e in whole if e.type == "response.output_text.delta") == whole[-1].response.output_text
    late = list(sdk.responses.retrieve(created.id, stream=True, starting_after=len(whole) - 2))
    assert summary(late) == summary(whole)[-1:]


def test_a_response_in_flight_is_cancelled(sdk: openai.OpenAI, stack: Stack) -> None:
    created = sdk.responses.create(input="Write a long essay about the history of bread.", background=True,
                                   model=MODEL, max_output_tokens=1024, temperature=0.8)
    wait_streaming(stack, created.id, deltas=2)
    cancelled = sdk.responses.cancel(created.id)
    if cancelled.status == "in_progress":  # the worker stops at its next step; a busy machine may be slow
        cancelled = wait_done(sdk, created.id)
    assert cancelled.status == "cancelled"
    assert sdk.responses.retrieve(created.id).status == "cancelled"
    assert sdk.responses.cancel(created.id).status == "cancelled"  # again: it stays cancelled
    replay = list(sdk.responses.retrieve(created.id, stream=True))
    assert replay[-1].type == "response.incomplete" and replay[-1].response.status == "cancelled"
    done = sdk.responses.create(input="Say hi.", **SHORT)
    with pytest.raises(openai.ConflictError) as err:
        sdk.responses.cancel(done.id)
    assert err.value.code == "response_not_cancelable"


def test_previous_response_id_carries_the_turns(sdk: openai.OpenAI) -> None:
    first = sdk.responses.create(input="My name is Ada and I keep bees.", instructions="Be brief.", **SHORT)
    alone = sdk.responses.create(input="What is my name?", **SHORT)
    second = sdk.responses.create(input="What is my name?", previous_response_id=first.id, **SHORT)
    assert second.previous_response_id == first.id and second.instructions is None
    assert first.usage is not None and alone.usage is not None and second.usage is not None
    # The second reads the first turn (its input and reply) before its own question.
    assert second.usage.input_tokens >= alone.usage.input_tokens + first.usage.output_tokens
    third = sdk.responses.create(input="And what do I keep?", previous_response_id=second.id, **SHORT)
    assert third.usage is not None and third.usage.input_tokens > second.usage.input_tokens
    with pytest.raises(openai.NotFoundError) as err:
        sdk.responses.create(input="Hi", previous_response_id="resp_000000000000000000000000", **SHORT)
    assert err.value.param == "previous_response_id"
    waiting = sdk.responses.create(input="Say hi.", background=True, model=IDLE_MODEL)
    with pytest.raises(openai.ConflictError) as conflict:
        sdk.responses.create(input="Hi", previous_response_id=waiting.id, **SHORT)
    assert conflict.value.param == "previous_response_id"
    sdk.responses.cancel(waiting.id)


def test_another_key_sees_no_response(sdk: openai.OpenAI, stack: Stack) -> None:
    mine = sdk.responses.create(input="Say hi.", background=True, **SHORT)
    with sdk_for(stack.url, KEY_B) as other:
        for call in (lambda: other.responses.retrieve(mine.id), lambda: other.responses.cancel(mine.id),
                     lambda: other.responses.delete(mine.id),
                     lambda: other.responses.retrieve(mine.id, stream=True),
                     lambda: other.responses.create(input="Hi", previous_response_id=mine.id, **SHORT)):
            with pytest.raises(openai.NotFoundError):
                call()
    assert wait_done(sdk, mine.id).status in ("completed", "incomplete")


@pytest.mark.parametrize(("fields", "param"), [
    ({"tools": [{"type": "function", "name": "f", "parameters": {}}]}, "tools"),
    ({"reasoning": {"effort": "low"}}, "reasoning"),
    ({"text": {"format": {"type": "json_object"}}}, "text"),
    ({"conversation": "conv_123"}, "conversation"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"input": [{"role": "user", "content": [
        {"type": "input_text", "text": "What is this?"},
        {"type": "input_image", "image_url": "https://example.com/a.png"}]}]}, "input[0].content[1]"),
    ({"input": [{"type": "function_call_output", "call_id": "c1", "output": "42"}]}, "input[0].type"),
    ({"background": True, "store": False}, None),
])
def test_unsupported_fields_are_a_400_naming_the_field(sdk: openai.OpenAI, fields: dict, param: str | None) -> None:
    body = {"model": MODEL, "input": "Hi", **fields}
    with pytest.raises(openai.BadRequestError) as err:
        sdk.responses.create(**body)
    assert err.value.param == param
    if param is not None:
        assert param.split("[")[0] in err.value.message


def test_an_unknown_field_an_unknown_model_or_too_much_metadata_is_refused(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        sdk.responses.create(input="Hi", model=MODEL, extra_body={"temperture": 0})
    assert err.value.param == "temperture"
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.responses.create(input="Hi", model="gpt-17")
    assert missing.value.code == "model_not_found" and missing.value.param == "model"
    with pytest.raises(openai.BadRequestError) as big:  # each value fits; all of them pass the job's 4 KB
        sdk.responses.create(input="Hi", model=MODEL, metadata={f"k{i}": "v" * 500 for i in range(16)})
    assert big.value.param == "metadata"


def test_held_requests_are_capped_per_key_and_need_a_worker(stack: Stack) -> None:
    url = stack.start_api("api-responses-limited", TEXTGEN_OPENAI_MAX_CONCURRENT_PER_KEY="1",
                          TEXTGEN_OPENAI_WORKER_WAIT_SECONDS="0.5")
    try:
        with sdk_for(url) as sdk:
            with pytest.raises(openai.InternalServerError) as err:  # a 503: nobody serves it
                sdk.responses.create(input="Hi", model=IDLE_MODEL)
            assert err.value.status_code == 503 and err.value.code == "model_unavailable"
            with sdk.responses.create(input="Write a long essay about bread.", model=MODEL, max_output_tokens=256,
                                      stream=True) as held:
                assert next(iter(held)).type == "response.created"
                with pytest.raises(openai.RateLimitError):
                    sdk.responses.create(input="Hi", **SHORT)
                queued = sdk.responses.create(input="Hi", background=True, **SHORT)  # background: no slot
            assert wait_done(sdk, queued.id).status in ("completed", "incomplete")
    finally:
        stack.stop("api-responses-limited")


def test_delete_and_store_false(sdk: openai.OpenAI, stack: Stack) -> None:
    kept = sdk.responses.create(input="Say hi.", **SHORT)
    sdk.responses.delete(kept.id)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(kept.id)
    assert not stack.redis().exists(stack.keys.job(kept.id), stack.keys.tokens(kept.id))
    waiting = sdk.responses.create(input="Say hi.", background=True, model=IDLE_MODEL)
    with pytest.raises(openai.ConflictError) as err:
        sdk.responses.delete(waiting.id)
    assert err.value.code == "response_in_progress"
    assert sdk.responses.cancel(waiting.id).status == "cancelled"
    sdk.responses.delete(waiting.id)
    unstored = sdk.responses.create(input="Say hi.", store=False, **SHORT)
    assert unstored.output_text.strip()
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(unstored.id)


def test_response_webhooks_arrive_signed(sdk: openai.OpenAI, stack: Stack, receiver: Receiver) -> None:
    with stack.client() as client:
        secret = str(client.get("/v1/webhooks/secret").json()["secret"])
    done = sdk.responses.create(input="Say hi.", background=True, extra_body={"webhook": receiver.url}, **SHORT)
    # One that no worker serves stays queued until it is cancelled: the API itself ends it.
    waiting = sdk.responses.create(input="Say hi.", background=True, model=IDLE_MODEL,
                                   extra_body={"webhook": receiver.url})
    assert sdk.responses.cancel(waiting.id).status == "cancelled"
    receiver.wait_for_event("response.cancelled")
    status = wait_done(sdk, done.id).status
    event_type = "response.completed" if status == "completed" else "response.incomplete"
    requests = receiver.wait_for_event(event_type)
    events = {}
    for request in requests:
        event = sdk.webhooks.unwrap(request.body, request.headers, secret=secret)  # verifies the signature
        events[event.type] = event
    assert events[event_type].data.id == done.id
    assert events["response.cancelled"].data.id == waiting.id
    with pytest.raises(openai.InvalidWebhookSignatureError):
        sdk.webhooks.unwrap(requests[0].body, requests[0].headers, secret="whsec_" + "A" * 32)


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack of its own whose workers this module starts and kills."""
    root: Path = tmp_path_factory.mktemp("responses-faults")
    with launch_stack(root, [{"id": MODEL, "max_batch": 8}], MODEL, worker=False) as st:
        yield st


@pytest.mark.timeout(900)  # two workers load the model first; slow on a loaded machine
def test_a_background_response_survives_a_worker_sigkill_and_an_api_restart(bare: Stack) -> None:
    for name in ("gen1", "gen2"):  # the second takes over what the first was running
        bare.start_worker(name)
    for name in ("gen1", "gen2"):
        bare.wait_for_worker(name)
    with sdk_for(bare.url) as sdk:
        created = sdk.responses.create(input="Tell a short story about a lighthouse keeper.", background=True,
                                       model=MODEL, max_output_tokens=64, temperature=0)
    running = wait_streaming(bare, created.id, deltas=3)
    bare.kill(running["worker"].removesuffix("@test"))
    killed = time.monotonic()
    bare.stop("api")  # and the API that accepted it goes away too
    other = bare.url = bare.start_api("api2")  # the stack's API from now on
    with sdk_for(other) as sdk:
        done = wait_done(sdk, created.id, timeout=300)
        print(f"\nSIGKILLed the worker running {created.id} and restarted the API; the response was "
              f"{done.status} {time.monotonic() - killed:.1f} s later (lease 10 s, reaper every 1 s here)")
        assert done.status in ("completed", "incomplete") and done.output_text.strip()
        with httpx.Client(base_url=other, headers={"Authorization": f"Bearer {KEY_A}"}) as client:
            job = client.get(f"/v1/jobs/{created.id}").json()
    assert job["attempts"] == 2 and job["worker"] != running["worker"]
    ends = [f["end"] for _, f in bare.redis().xrange(bare.keys.tokens(created.id)) if "end" in f]
    assert ends == ["succeeded"]  # one result


def test_a_stream_ends_with_an_error_when_redis_goes_away(bare: Stack) -> None:
    with sdk_for(bare.url) as sdk, sdk.responses.create(input="Say hi.", background=True, model=MODEL,
                                                       stream=True) as stream:
        events = iter(stream)
        assert next(events).type == "response.created"
        bare.kill("redis")
        with pytest.raises(openai.APIError, match="stream interrupted"):
            list(events)
