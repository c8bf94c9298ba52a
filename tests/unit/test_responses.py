"""Responses requests become the jobs a user expects, and jobs read back as OpenAI's objects
(pure logic, no stack; the real stack is tests/integration/test_responses.py)."""

from __future__ import annotations

import pytest
from openai.types.responses import Response
from pydantic import ValidationError

from api.app.errors import APIError
from api.responses.protocol import ResponseCreate, input_messages
from textgen_core.jobs import ChatMessage, JobError, JobInput, JobRecord, JobStatus, SamplingParams, Usage
from textgen_core.responses import (
    ResponseMeta,
    history_after,
    new_response_id,
    response_object,
    webhook_event,
    webhook_payload,
)


def job(status: JobStatus, **fields: object) -> JobRecord:
    return JobRecord.new(owner="o", model="m", input=JobInput(messages=[ChatMessage(role="user", content="hi")]),
                         params=SamplingParams(max_tokens=8), status=status, **fields).model_copy(
        update={"id": new_response_id()})


def refused(value: object) -> str | None:
    with pytest.raises(APIError) as err:
        input_messages(value)  # type: ignore[arg-type]
    assert err.value.status == 400
    return err.value.body.param


def test_input_items_become_chat_messages() -> None:
    messages = input_messages([
        {"role": "developer", "content": "Be brief."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"},
                                                         {"type": "input_text", "text": "b"}]},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
         "content": [{"type": "output_text", "text": "c", "annotations": []}]},
        {"role": "user", "content": "d"},
    ])
    assert [(m.role, m.content) for m in messages] == [("system", "Be brief."), ("user", "ab"), ("assistant", "c"),
                                                       ("user", "d")]
    assert [(m.role, m.content) for m in input_messages("hello")] == [("user", "hello")]


def test_input_that_is_not_text_is_refused_where_it_is() -> None:
    assert refused([{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]) == "input[0].content[0]"
    assert refused([{"role": "assistant", "content": [{"type": "input_text", "text": "x"}]},
                    {"role": "user", "content": "q"}]) == "input[0].content[0]"
    assert refused([{"role": "tool", "content": "x"}]) == "input[0].role"
    assert refused([{"role": ["user"], "content": "x"}]) == "input[0].role"
    assert refused([{"role": "user", "content": ["x"]}]) == "input[0].content[0]"
    assert refused([{"type": "reasoning", "summary": []}]) == "input[0].type"
    assert refused([{"role": "user", "content": 7}]) == "input[0].content"
    assert refused([{"role": "user", "content": "x" * 32_001}]) == "input[0].content"
    assert refused([{"role": "system", "content": "only instructions"}]) == "input"
    assert refused([{"role": "user", "content": "x" * 32_000}] * 3) == "input"


def test_request_fields_map_onto_the_job() -> None:
    body = ResponseCreate.model_validate({"input": "hi", "instructions": "Be brief.", "max_output_tokens": 20,
                                          "temperature": 0, "top_p": 0.5, "metadata": {"a": "b"}, "tools": [],
                                          "tool_choice": "auto", "text": {"format": {"type": "text"}},
                                          "reasoning": None})
    create = body.to_job(input_messages(body.input))
    assert (create.max_tokens, create.temperature, create.top_p) == (20, 0.0, 0.5)
    assert create.messages is not None and [m.role for m in create.messages] == ["system", "user"]
    assert create.metadata == {"a": "b"}
    defaults = ResponseCreate.model_validate({"input": "hi"}).to_job([ChatMessage(role="user", content="hi")])
    assert defaults.max_tokens == SamplingParams().max_tokens and defaults.temperature == SamplingParams().temperature


@pytest.mark.parametrize("fields", [{"max_output_tokens": 0}, {"temperature": 3}, {"input": ""}, {"input": []},
                                    {"metadata": {str(i): "v" for i in range(17)}}, {"truncation": "sometimes"},
                                    {"service_tier": "flex"}, {"include": ["reasoning.encrypted_content"]},
                                    {"top_logprobs": 2}, {"max_tool_calls": 1}, {"prompt": {"id": "p"}}])
def test_out_of_range_or_unsupported_values_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError) as err:
        ResponseCreate.model_validate({"input": "hi", **fields})
    assert err.value.errors()[0]["loc"][0] == next(iter(fields))


def test_jobs_read_as_responses_with_openai_statuses() -> None:
    meta = ResponseMeta(instructions="Be brief.", background=True)
    usage = Usage(prompt_tokens=5, completion_tokens=8, total_tokens=13)
    cases = [
        (job(JobStatus.queued), "queued", None),
        (job(JobStatus.running), "in_progress", None),
        (job(JobStatus.succeeded, output="hey", finish_reason="stop", usage=usage), "completed", "response.completed"),
        (job(JobStatus.succeeded, output="he", finish_reason="length", usage=usage), "incomplete",
         "response.incomplete"),
        (job(JobStatus.canceled, output="h", finish_reason="canceled"), "cancelled", "response.cancelled"),
        (job(JobStatus.failed, error=JobError(message="boom")), "failed", "response.failed"),
    ]
    for record, status, event in cases:
        response = Response.model_validate(response_object(record, meta))  # strict: what the SDK declares
        assert response.status == status and response.id == record.id
        assert response.instructions == "Be brief." and response.background is True
        if event is not None:
            assert webhook_event(record) == event
            assert webhook_payload(record, event)["data"] == {"id": record.id}
    done = Response.model_validate(response_object(cases[2][0], meta))
    assert done.output_text == "hey" and done.usage is not None and done.usage.total_tokens == 13
    assert Response.model_validate(response_object(cases[3][0], meta)).incomplete_details.reason == "max_output_tokens"
    failed = Response.model_validate(response_object(cases[5][0], meta))
    assert failed.error is not None and failed.error.message == "boom"


def test_a_response_its_deadline_stopped_reads_incomplete_with_the_reason_deadline() -> None:
    # "deadline" is not among the SDK's declared reasons; the SDK keeps an undeclared value as a string.
    for output in ("", "Hel"):
        record = job(JobStatus.expired, output=output, finish_reason="deadline")
        body = response_object(record, ResponseMeta(background=True))
        assert body["status"] == "incomplete" and body["incomplete_details"] == {"reason": "deadline"}
        assert body["error"] is None and body["output"][0]["content"][0]["text"] == output
        assert webhook_event(record) == "response.incomplete"
        sdk_view = Response.construct(**body)  # how the SDK reads a response (no validation)
        assert sdk_view.status == "incomplete"


def test_a_following_response_reads_the_earlier_turns_without_their_instructions() -> None:
    earlier = job(JobStatus.succeeded, output="Hello Ada.", history=[ChatMessage(role="user", content="0"),
                                                                    ChatMessage(role="assistant", content="1")])
    earlier.input.messages = [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="hi")]
    assert [(m.role, m.content) for m in history_after(earlier, 20)] == [
        ("user", "0"), ("assistant", "1"), ("user", "hi"), ("assistant", "Hello Ada.")]
    assert [m.content for m in history_after(earlier, 1)] == ["hi", "Hello Ada."]  # capped at max turns
