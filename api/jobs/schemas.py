"""Request and response bodies of the jobs and conversations endpoints."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StrictBool, field_validator, model_validator

from api.app.deadline_fields import DeadlineSeconds
from api.webhooks.fields import WEBHOOK_DOC, WebhookURL, unique_events
from textgen_core.jobs import PRIVATE_FIELDS, ChatMessage, Job, JobInput, JobRecord, NotBool, SamplingParams
from textgen_core.modes import Mode
from textgen_core.priorities import DEFAULT_PRIORITY, HIGHEST, LOWEST
from textgen_core.webhook_events.emitter import job_links
from textgen_core.webhooks.models import JobWebhookEvent, default_job_events

CONVERSATION_ID = r"^[A-Za-z0-9_.:-]{1,128}$"
PRIORITY_DOC = ("0 (highest) to 2 (lowest): orders waiting work inside its lane; a job that waits moves up "
                "one level every TEXTGEN_PRIORITY_AGING_SECONDS. A key may not ask better than its ceiling "
                "(TEXTGEN_PRIORITY_CEILINGS, default TEXTGEN_PRIORITY_CEILING_DEFAULT=1): 403.")


class JobCreate(SamplingParams):
    """A generation job: a prompt or chat messages, a mode, and sampling parameters."""

    prompt: str | None = Field(default=None, min_length=1, max_length=32_000)
    messages: list[ChatMessage] | None = Field(default=None, min_length=1, max_length=64)
    model: str | None = Field(default=None, description="Defaults to the configured default model.")
    mode: Mode = Mode.general
    conversation_id: str | None = Field(default=None, pattern=CONVERSATION_ID)
    metadata: dict[str, Any] = Field(default_factory=dict, description="Echoed back; at most 16 keys, 4 KB.",
                                     json_schema_extra={"maxProperties": 16})
    webhook: WebhookURL | None = Field(default=None, description=WEBHOOK_DOC)
    webhook_events_filter: list[JobWebhookEvent] = Field(
        default_factory=default_job_events, min_length=1, max_length=3,
        description="Events to send: any of start, output (at most every 500 ms), completed.")
    priority: Annotated[int, NotBool] = Field(default=DEFAULT_PRIORITY, ge=HIGHEST, le=LOWEST, description=PRIORITY_DOC)
    cache: StrictBool = Field(default=True, description="Answer from (and fill) the result cache when the request "
                        "is deterministic (temperature 0 or a seed). false always generates.")
    deadline_seconds: DeadlineSeconds = None

    model_config = {
        "extra": "forbid",
        "json_schema_extra": {
            "examples": [
                {"prompt": "Write a tagline for a solar-powered lamp.", "mode": "ecommerce", "max_tokens": 48,
                 "temperature": 0},
                {"messages": [{"role": "user", "content": "My order arrived damaged."}], "mode": "support",
                 "conversation_id": "order-1234"},
            ],
            # Exactly one of a prompt or messages with a user turn (so generated clients and
            # schema-driven tests know the rule the validator below enforces).
            "oneOf": [
                {"required": ["prompt"], "properties": {"prompt": {"type": "string"}, "messages": {"type": "null"}}},
                {"required": ["messages"], "properties": {"prompt": {"type": "null"}, "messages": {
                    "type": "array", "contains": {"required": ["role"], "properties": {"role": {"const": "user"}}},
                }}},
            ],
        },
    }

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> JobCreate:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        if self.messages is not None and not any(m.role == "user" for m in self.messages):
            raise ValueError("'messages' needs at least one user message")
        return self

    @field_validator("metadata")
    @classmethod
    def _small(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(value) > 16 or len(json.dumps(value)) > 4096:
            raise ValueError("metadata is limited to 16 keys and 4 KB of JSON")
        return value

    @field_validator("webhook_events_filter")
    @classmethod
    def _unique_events(cls, value: list[JobWebhookEvent]) -> list[JobWebhookEvent]:
        return unique_events(value)

    def to_record(self, *, owner: str, model: str, history: list[ChatMessage]) -> JobRecord:
        return JobRecord.new(
            owner=owner,
            model=model,
            mode=self.mode,
            input=JobInput(prompt=self.prompt, messages=self.messages),
            params=SamplingParams.model_validate(self.model_dump(include=set(SamplingParams.model_fields))),
            conversation_id=self.conversation_id,
            history=history,
            metadata=self.metadata,
            webhook=self.webhook,
            webhook_events_filter=self.webhook_events_filter,
            priority=self.priority,
        )


class JobOut(Job):
    """A job as the API returns it, with links to its stream and cancel endpoints."""

    links: dict[str, str] = Field(default_factory=dict)

    @classmethod
    def of(cls, job: Job) -> JobOut:
        data = job.model_dump(exclude=PRIVATE_FIELDS)
        return cls(**data, links=job_links(job.id))


class JobList(BaseModel):
    """A page of the caller's jobs, newest first; ``has_more``: continue with ``after=last_id``."""

    object: Literal["list"] = "list"
    data: list[JobOut]
    first_id: str | None
    last_id: str | None
    has_more: bool


class Conversation(BaseModel):
    id: str
    object: Literal["conversation"] = "conversation"
    messages: list[ChatMessage]


class Deleted(BaseModel):
    id: str
    object: str
    deleted: bool = True
