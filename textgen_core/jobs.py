"""Job records and their state machine.

A job is accepted ``queued``, claimed ``running`` by exactly one worker attempt, and ends in
exactly one terminal state. Transitions not listed here are refused by the store's scripts.
"""

from __future__ import annotations

import enum
import secrets
import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field, field_validator, model_validator

from textgen_core.modes import Mode
from textgen_core.priorities import DEFAULT_PRIORITY, HIGHEST, LOWEST
from textgen_core.webhooks.models import JobWebhookEvent, WebhookDelivery, default_job_events


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"
    expired = "expired"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.canceled, JobStatus.expired})

# The allowed transitions; JobStore's Lua scripts enforce the same table.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.queued: frozenset({JobStatus.running, JobStatus.canceled, JobStatus.expired, JobStatus.failed}),
    # running -> queued: a lapsed lease is handed back to the queue. running -> expired: its deadline
    # stopped it at an engine step (textgen_core/deadlines.py).
    JobStatus.running: frozenset(
        {JobStatus.succeeded, JobStatus.failed, JobStatus.canceled, JobStatus.expired, JobStatus.queued}
    ),
    JobStatus.succeeded: frozenset(),
    # failed -> queued: POST /v1/jobs/{id}/retry, a new attempt under the same id (textgen_core/dead_letters.py).
    JobStatus.failed: frozenset({JobStatus.queued}),
    JobStatus.canceled: frozenset(),
    JobStatus.expired: frozenset(),
}


def can_transition(current: JobStatus, new: JobStatus) -> bool:
    return new in TRANSITIONS[current]


# "deadline": the job's deadline passed (queued: it never ran; running: stopped with its text so far).
FinishReason = Literal["stop", "length", "canceled", "time_limit", "deadline", "error"]


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=0, max_length=32_000)


def _stop_schema(schema: dict[str, Any]) -> None:
    """Publish what the validators below accept: one stop string or up to 4, each 1..64 characters."""
    item = {"type": "string", "minLength": 1, "maxLength": 64}
    schema.pop("items", None)
    schema.pop("maxItems", None)
    schema.pop("type", None)
    schema["anyOf"] = [item, {"type": "array", "items": item, "maxItems": 4}]


def _not_bool(value: object) -> object:
    # JSON true is not 1: pydantic's lax mode would take it as one (numeric text, as in CSV and form
    # fields, stays accepted).
    if isinstance(value, bool):
        raise ValueError("must be a number, not true or false")
    return value


NotBool = BeforeValidator(_not_bool)
"""Refuses ``true``/``false`` for a number field."""


class SamplingParams(BaseModel):
    """Everything that decides the generated text besides the input. Bounds live here once."""

    max_tokens: Annotated[int, NotBool] = Field(default=128, ge=1, le=1024, description="Tokens to generate at most.")
    temperature: Annotated[float, NotBool] = Field(default=0.7, ge=0.0, le=2.0, description="0 means greedy.")
    top_p: Annotated[float, NotBool] = Field(default=1.0, gt=0.0, le=1.0)
    top_k: Annotated[int, NotBool] = Field(default=0, ge=0, le=1000, description="0 disables top-k.")
    repetition_penalty: Annotated[float, NotBool] = Field(default=1.0, ge=0.5, le=2.0)
    presence_penalty: Annotated[float, NotBool] = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: Annotated[float, NotBool] = Field(default=0.0, ge=-2.0, le=2.0)
    stop: list[str] = Field(default_factory=list, max_length=4, json_schema_extra=lambda s: _stop_schema(s))
    # 2**53 - 1: the largest integer every JSON client (and schema validator) represents exactly.
    seed: Annotated[int, NotBool] | None = Field(default=None, ge=0, le=2**53 - 1)

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [value]
        return value

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, value: list[str]) -> list[str]:
        for s in value:
            if not s or len(s) > 64:
                raise ValueError("each stop string must be 1..64 characters")
        return value

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class JobInput(BaseModel):
    """What the model reads: a plain prompt (rendered through the mode) or chat messages."""

    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    # raw=True: the prompt is continued as plain text, no chat template (OpenAI completions).
    raw: bool = False

    @model_validator(mode="after")
    def _one_of(self) -> JobInput:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        return self


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class Timings(BaseModel):
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    queue_seconds: float | None = None
    generation_seconds: float | None = None
    cache_hit: float | None = Field(default=None, description="Seconds it took to answer from the result "
                                    "cache (null when the text was generated for this job).")


class JobError(BaseModel):
    message: str
    type: str = "generation_error"


class Job(BaseModel):
    """The job record as stored in Redis and returned by the API."""

    id: str
    object: Literal["job"] = "job"
    model: str
    mode: Mode = Mode.general
    lane: str = "interactive"
    priority: int = Field(default=DEFAULT_PRIORITY, ge=HIGHEST, le=LOWEST,
                          description="0 (highest) to 2 (lowest); orders work inside its lane.")
    status: JobStatus = JobStatus.queued
    input: JobInput
    params: SamplingParams
    conversation_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    output: str | None = None
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    timings: Timings
    error: JobError | None = None
    attempts: int = 0
    worker: str | None = None
    batch_size: int | None = Field(default=None, description="Most rows that shared a forward pass with it.")
    cancel_requested: bool = False
    deadline_at: float | None = Field(default=None, description="Epoch seconds: a job not started by then ends "
                                      "expired without running; one running then stops with its text so far.")
    webhook: str | None = Field(default=None, description="URL that receives signed events of this job.")
    webhook_events_filter: list[JobWebhookEvent] = Field(default_factory=default_job_events)
    webhook_deliveries: list[WebhookDelivery] = Field(default_factory=list,
                                                      description="Every delivery attempt, oldest first.")
    batch_id: str | None = None
    custom_id: str | None = None
    cached: bool = Field(default=False, description="The output was served from the result cache: an "
                         "identical deterministic request generated it earlier.")

    @model_validator(mode="after")
    def _succeeded_has_text(self) -> Job:
        # The store keeps the text as a plain string, where "" and "no text yet" look alike.
        if self.status is JobStatus.succeeded and self.output is None:
            self.output = ""
        return self


class JobRecord(Job):
    """A job with what only the platform sees: its owner, the history it was given, and the cache
    policy the API chose for it (``cache_key`` is None when the job is not cached)."""

    owner: str
    history: list[ChatMessage] = Field(default_factory=list)
    cache_key: str | None = None
    cache_ttl: int | None = None
    retries: int = 0  # times ``POST /v1/jobs/{id}/retry`` gave it a new attempt: each ends with its own event

    @classmethod
    def new(cls, **fields: Any) -> JobRecord:
        return cls(id=new_job_id(), timings=Timings(created_at=time.time()), **fields)

    def public(self) -> Job:
        return Job.model_validate(self.model_dump(exclude=PRIVATE_FIELDS))


def turn_messages(job: JobRecord, output: str) -> list[ChatMessage]:
    """What a succeeded job adds to its conversation: the new user turn(s) and the reply."""
    if job.input.messages:
        new = [m for m in job.input.messages if m.role != "system"]
    else:
        new = [ChatMessage(role="user", content=job.input.prompt or "")]
    return [*new, ChatMessage(role="assistant", content=output)]


# Fields that only the platform sees: never in an API response or a webhook payload.
PRIVATE_FIELDS: set[str] = {"owner", "history", "cache_key", "cache_ttl", "retries"}


def new_job_id() -> str:
    return "job_" + secrets.token_hex(12)
