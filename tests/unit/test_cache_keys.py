"""Cache key derivation: everything that decides the text changes the key; nothing else does."""

from __future__ import annotations

from typing import Any

import pytest

from textgen_core import cache
from textgen_core.cache import CacheEntry, deterministic, entry_digest, request_digest
from textgen_core.jobs import ChatMessage, JobInput, JobRecord, SamplingParams
from textgen_core.modes import Mode

PROFILE = "smollm2-135m-instruct-747cb1f0195582d0|cpu|float32"


def job(**changes: Any) -> JobRecord:
    fields: dict[str, Any] = {
        "owner": "owner-a", "model": "smollm2-135m-instruct", "mode": Mode.general,
        "input": JobInput(prompt="Name a colour."), "params": SamplingParams(temperature=0, max_tokens=12),
    }
    params = changes.pop("params", {})
    fields.update(changes)
    fields["params"] = fields["params"].model_copy(update=params)
    return JobRecord.new(**fields)


def digest(**changes: Any) -> str:
    return request_digest(job(**changes), 1024)


def test_the_same_request_gives_the_same_key_whatever_else_the_job_carries() -> None:
    assert digest() == digest()
    assert digest() == digest(metadata={"sku": "1"}, webhook="https://example.com/h", conversation_id="c-1",
                              lane="bulk", batch_id="batch_1", custom_id="x")


@pytest.mark.parametrize("params", [
    {"max_tokens": 13}, {"temperature": 0.5}, {"top_p": 0.9}, {"top_k": 40}, {"repetition_penalty": 1.1},
    {"presence_penalty": 0.5}, {"frequency_penalty": 0.5}, {"stop": ["."]}, {"seed": 7},
])
def test_every_sampling_parameter_is_in_the_key(params: dict[str, Any]) -> None:
    assert digest(params=params) != digest()


@pytest.mark.parametrize("changes", [
    {"model": "other-model"},
    {"mode": Mode.ecommerce},
    {"owner": "owner-b"},
    {"input": JobInput(prompt="Name a colour!")},
    {"input": JobInput(prompt="Name a colour.", raw=True)},
    {"input": JobInput(messages=[ChatMessage(role="system", content="Be terse."),
                                 ChatMessage(role="user", content="Name a colour.")])},
    {"history": [ChatMessage(role="user", content="Hi"), ChatMessage(role="assistant", content="Hello")]},
])
def test_model_mode_owner_input_and_history_are_in_the_key(changes: dict[str, Any]) -> None:
    assert digest(**changes) != digest()


def test_a_prompt_equals_the_same_single_user_message() -> None:
    """Both render to the same chat, so they share an entry."""
    same = JobInput(messages=[ChatMessage(role="user", content="Name a colour.")])
    assert digest(input=same) == digest()


def test_history_budget_and_template_version_are_in_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    assert request_digest(job(), 512) != request_digest(job(), 1024)
    before = digest()
    monkeypatch.setattr(cache, "TEMPLATE_VERSION", cache.TEMPLATE_VERSION + 1)
    assert digest() != before


def test_the_worker_profile_separates_dtypes_devices_and_weights() -> None:
    request = digest()
    keys = {entry_digest(request, p) for p in (
        PROFILE, PROFILE.replace("float32", "bfloat16"), PROFILE.replace("cpu", "cuda:NVIDIA H200"),
        PROFILE.replace("747cb1f0195582d0", "0000000000000000"))}
    assert len(keys) == 4
    assert entry_digest(request, PROFILE) == entry_digest(request, PROFILE)


def test_only_greedy_or_seeded_requests_are_deterministic() -> None:
    assert deterministic(SamplingParams(temperature=0))
    assert deterministic(SamplingParams(temperature=0.9, seed=3))
    assert not deterministic(SamplingParams(temperature=0.9))


def test_entries_round_trip_and_garbage_reads_as_a_miss() -> None:
    entry = CacheEntry("Blue.", "stop", {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}, "job_1",
                       1.5)
    assert CacheEntry.decode(entry.encode()) == entry
    assert CacheEntry.decode(None) is None
    assert CacheEntry.decode("{not json") is None
    assert CacheEntry.decode('{"output": "x"}') is None
