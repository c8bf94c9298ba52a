import pytest

from textgen_core.jobs import TERMINAL, JobInput, JobRecord, JobStatus, SamplingParams, can_transition
from textgen_core.store import decode_job, encode_job


def test_terminal_states_have_no_way_out_but_the_retry_of_a_failed_job() -> None:
    for status in TERMINAL:
        assert status.terminal
        ways_out = {new for new in JobStatus if can_transition(status, new)}
        assert ways_out == ({JobStatus.queued} if status is JobStatus.failed else set())


@pytest.mark.parametrize(
    ("current", "new", "allowed"),
    [
        ("queued", "running", True),
        ("queued", "canceled", True),
        ("queued", "succeeded", False),
        ("running", "succeeded", True),
        ("running", "canceled", True),
        ("running", "queued", True),  # lapsed lease: back to the queue
        ("queued", "expired", True),  # its deadline passed before a worker started it
        ("running", "expired", True),  # its deadline stopped it
        ("failed", "queued", True),  # POST /v1/jobs/{id}/retry
        ("expired", "queued", False),
        ("succeeded", "running", False),
        ("canceled", "queued", False),
    ],
)
def test_transitions(current: str, new: str, allowed: bool) -> None:
    assert can_transition(JobStatus(current), JobStatus(new)) is allowed


def test_record_round_trips_through_the_redis_encoding() -> None:
    job = JobRecord.new(owner="o1", model="m", input=JobInput(prompt="hé \x00 ☃"),
                        params=SamplingParams(stop=["\n"], seed=3), metadata={"a": [1, 2]}, conversation_id="c",
                        deadline_at=1_700_000_000.25)
    back = decode_job(encode_job(job))
    assert back.model_dump() == job.model_dump()
    assert back.public().model_dump().keys() == job.public().model_dump().keys()
    assert "owner" not in back.public().model_dump()


def test_sampling_params_accept_a_single_stop_string() -> None:
    assert SamplingParams(stop="END").stop == ["END"]
    assert SamplingParams(temperature=0).greedy
