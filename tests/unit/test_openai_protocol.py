"""OpenAI request models turn into the jobs a user would expect (pure logic, no stack)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from api.openai.protocol import ChatCompletionRequest, CompletionRequest, openai_finish_reason, total_usage
from textgen_core.jobs import JobInput, JobRecord, SamplingParams, Usage

USER = [{"role": "user", "content": "hi"}]


def test_each_choice_gets_the_next_seed() -> None:
    jobs = ChatCompletionRequest.model_validate({"messages": USER, "n": 3, "seed": 2**53 - 2}).to_jobs()
    assert [j.seed for j in jobs] == [2**53 - 2, 2**53 - 1, 0]
    assert all(j.messages and j.messages[0].content == "hi" for j in jobs)


def test_without_a_seed_choices_stay_unseeded() -> None:
    assert [j.seed for j in ChatCompletionRequest.model_validate({"messages": USER, "n": 2}).to_jobs()] == [None, None]


def test_prompt_list_times_n_keeps_openai_order() -> None:
    request = CompletionRequest.model_validate({"prompt": ["a", "b"], "n": 2, "seed": 5})
    assert [(j.prompt, j.seed) for j in request.to_jobs()] == [("a", 5), ("a", 6), ("b", 5), ("b", 6)]
    assert request.raw


def test_mode_or_conversation_turns_off_plain_continuation() -> None:
    assert not CompletionRequest.model_validate({"prompt": "x", "mode": "support"}).raw
    assert not CompletionRequest.model_validate({"prompt": "x", "conversation_id": "c1"}).raw


def test_nulls_and_aliases() -> None:
    request = ChatCompletionRequest.model_validate(
        {"messages": USER, "max_tokens": None, "max_completion_tokens": 7, "stop": "END", "top_k": -1, "user": "u1",
         "logprobs": False, "tools": [], "tool_choice": "none", "response_format": {"type": "text"}})
    [job] = request.to_jobs()
    assert (job.max_tokens, job.stop, job.top_k, job.metadata) == (7, ["END"], 0, {"user": "u1"})


def test_text_parts_and_developer_role() -> None:
    messages = [{"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "he"}, {"type": "text", "text": "llo"}]}]
    [job] = ChatCompletionRequest.model_validate({"messages": messages}).to_jobs()
    assert [(m.role, m.content) for m in job.messages or []] == [("system", "Be brief."), ("user", "hello")]


@pytest.mark.parametrize(("extra", "param"), [
    ({"logprobs": True}, "logprobs"),
    ({"tools": [{"type": "function"}]}, "tools"),
    ({"logit_bias": {"1": 5}}, "logit_bias"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"n": 2, "conversation_id": "c"}, "conversation_id"),
    ({"n": 0}, "n"),
])
def test_unsupported_or_bad_fields_name_themselves(extra: dict, param: str) -> None:
    with pytest.raises(ValidationError) as err:
        ChatCompletionRequest.model_validate({"messages": USER, **extra})
    assert err.value.errors()[0]["loc"][0] == param


def test_too_many_choices_in_all() -> None:
    with pytest.raises(ValidationError):
        CompletionRequest.model_validate({"prompt": ["p"] * 5, "n": 8})


def test_finish_reasons_in_openai_vocabulary() -> None:
    # A canceled job is not passed off as a complete answer ("stop").
    assert [openai_finish_reason(r) for r in ("stop", "length", "time_limit", "canceled", None)] == [
        "stop", "length", "length", "canceled", "stop"]


@pytest.mark.parametrize(("extra", "param"), [
    ({"max_tokens": True}, "max_tokens"), ({"max_completion_tokens": True}, "max_completion_tokens"),
    ({"n": True}, "n"), ({"temperature": False}, "temperature"), ({"seed": True}, "seed"),
    ({"stream": "yes"}, "stream"), ({"stream": 1}, "stream"), ({"cache": "no"}, "cache"),
    ({"stream_options": {"include_usage": "yes"}}, "stream_options")])
def test_no_booleans_for_numbers_and_only_booleans_for_flags(extra: dict, param: str) -> None:
    with pytest.raises(ValidationError) as err:
        ChatCompletionRequest.model_validate({"messages": USER, **extra})
    assert err.value.errors()[0]["loc"][0] == param


def test_usage_counts_each_prompt_once() -> None:
    def job(prompt_tokens: int, completion_tokens: int) -> JobRecord:
        record = JobRecord.new(owner="o", model="m", input=JobInput(prompt="p"), params=SamplingParams())
        record.usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        return record

    usage = total_usage([job(10, 3), job(10, 4), job(7, 1), job(7, 2)], per_prompt=2)
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (17, 10, 27)
