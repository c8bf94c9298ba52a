"""The ``POST /v1/responses`` request: text in, text out.

Fields the Responses API has that textgen does not implement (tools, reasoning, structured
output, conversations, stored prompts, ...) are accepted only at their "off" value and refused
otherwise, naming the field; fields it does not know at all are refused too, so a client never
silently gets something other than what it asked for. Input items are checked one by one
(:func:`input_messages`) so an image or a tool output is refused naming exactly where it is.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StrictBool, ValidationInfo, field_validator, model_validator

from api.app.deadline_fields import DeadlineSeconds
from api.app.errors import APIError
from api.jobs.schemas import PRIORITY_DOC, JobCreate
from api.webhooks.fields import WEBHOOK_DOC, WebhookURL
from textgen_core.jobs import ChatMessage, NotBool, SamplingParams
from textgen_core.modes import Mode
from textgen_core.priorities import DEFAULT_PRIORITY, HIGHEST, LOWEST

MaxTokens = Annotated[int, *SamplingParams.model_fields["max_tokens"].metadata]
Temperature = Annotated[float, *SamplingParams.model_fields["temperature"].metadata]
TopP = Annotated[float, *SamplingParams.model_fields["top_p"].metadata]
MAX_TEXT_CHARS = 32_000
MAX_ITEMS = 63  # a job holds 64 messages, one of them the instructions
ROLES: dict[str, Literal["system", "user", "assistant"]] = {
    "user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
TEXT_PARTS = {"user": "input_text", "system": "input_text", "developer": "input_text", "assistant": "output_text"}


def _off(value: Any, allowed: tuple[Any, ...], name: str) -> Any:
    if value is None or any(value == a and type(value) is type(a) for a in allowed):
        return value
    raise ValueError(f"'{name}' is not supported by this server")


class ResponseCreate(BaseModel):
    """``POST /v1/responses``. Sampling bounds are the job's (:class:`SamplingParams`)."""

    model_config = {
        "extra": "forbid",
        "json_schema_extra": {"examples": [
            {"model": "smollm2-135m-instruct", "input": "Name three fruits.", "max_output_tokens": 32,
             "temperature": 0},
            {"input": "Write a haiku about tea.", "background": True},
        ]},
    }

    model: str | None = Field(default=None, description="A model id from /v1/models; default: the server's.")
    input: str | list[dict[str, Any]] = Field(description="A string (one user message), or message items "
                                              "whose content is a string or input_text parts.")
    instructions: str | None = Field(default=None, max_length=MAX_TEXT_CHARS,
                                     description="A system message for this response (not carried over by "
                                     "previous_response_id).")
    max_output_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    stream: StrictBool = False
    background: StrictBool = Field(default=False, description="Return at once (status queued); the response is a "
                             "durable job: poll, stream or cancel it by id.")
    store: StrictBool = Field(default=True, description="false: the response is deleted once it has been answered.")
    metadata: dict[str, str] | None = Field(default=None, description="Echoed back; at most 16 keys.")
    previous_response_id: str | None = Field(default=None, max_length=64,
                                             description="Continue from that response: its turns become history.")
    webhook: WebhookURL | None = Field(default=None, description=f"textgen extra: {WEBHOOK_DOC} Receives "
                                       "response.completed, .incomplete, .failed or .cancelled once.")
    priority: Annotated[int, NotBool] = Field(default=DEFAULT_PRIORITY, ge=HIGHEST, le=LOWEST,
                                              description=f"textgen extra: {PRIORITY_DOC}")
    deadline_seconds: DeadlineSeconds = None  # textgen extra, as on /v1/jobs (or the Cancel-After header)
    # Accepted and ignored: they change nothing about the text.
    user: str | None = Field(default=None, max_length=256)
    safety_identifier: str | None = Field(default=None, max_length=256)
    prompt_cache_key: str | None = Field(default=None, max_length=256)
    parallel_tool_calls: StrictBool | None = None
    stream_options: dict[str, Any] | None = None
    truncation: str | None = None
    service_tier: str | None = None
    # Accepted only at their "off" value.
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    max_tool_calls: int | None = None
    include: list[Any] | None = None
    top_logprobs: int | None = None
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    conversation: str | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        """OpenAI treats an explicit null as "use the default"; so do we."""
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data

    @field_validator("input")
    @classmethod
    def _input_size(cls, value: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
        if isinstance(value, str) and not 1 <= len(value) <= MAX_TEXT_CHARS:
            raise ValueError(f"a string input must be 1..{MAX_TEXT_CHARS} characters")
        if isinstance(value, list) and not 1 <= len(value) <= MAX_ITEMS:
            raise ValueError(f"give 1..{MAX_ITEMS} input items")
        return value

    @field_validator("metadata")
    @classmethod
    def _small(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None and (len(value) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in value.items())):
            raise ValueError("metadata is limited to 16 keys of at most 64 characters, values of at most 512")
        return value

    @field_validator("truncation")
    @classmethod
    def _truncation(cls, value: Any) -> Any:
        return _off(value, ("disabled", "auto"), "truncation")

    @field_validator("service_tier")
    @classmethod
    def _tier(cls, value: Any) -> Any:
        return _off(value, ("auto", "default"), "service_tier")

    @field_validator("tools", "include")
    @classmethod
    def _empty_only(cls, value: Any, info: ValidationInfo) -> Any:
        return _off(value, ([],), str(info.field_name))

    @field_validator("tool_choice")
    @classmethod
    def _no_tools(cls, value: Any) -> Any:
        return _off(value, ("none", "auto"), "tool_choice")

    @field_validator("top_logprobs")
    @classmethod
    def _no_logprobs(cls, value: Any) -> Any:
        return _off(value, (0,), "top_logprobs")

    @field_validator("max_tool_calls", "reasoning", "conversation", "prompt")
    @classmethod
    def _never(cls, value: Any, info: ValidationInfo) -> Any:
        return _off(value, (), str(info.field_name))

    @field_validator("text")
    @classmethod
    def _plain_text(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and (set(value) - {"format"} or value.get("format", {"type": "text"}) != {"type": "text"}):
            raise ValueError("only plain text output is supported: 'text.format' must be {\"type\": \"text\"}")
        return value

    @model_validator(mode="after")
    def _background_is_stored(self) -> ResponseCreate:
        if self.background and not self.store:
            raise ValueError("background responses are stored: drop 'store': false")
        return self

    def to_job(self, messages: list[ChatMessage]) -> JobCreate:
        sampling: dict[str, Any] = {}
        if self.max_output_tokens is not None:
            sampling["max_tokens"] = self.max_output_tokens
        if self.temperature is not None:
            sampling["temperature"] = self.temperature
        if self.top_p is not None:
            sampling["top_p"] = self.top_p
        if self.instructions:
            messages = [ChatMessage(role="system", content=self.instructions), *messages]
        return JobCreate(messages=messages, model=self.model, mode=Mode.general, metadata=self.metadata or {},
                         webhook=self.webhook, cache=True, priority=self.priority,
                         deadline_seconds=self.deadline_seconds, **sampling)


def _refuse(message: str, param: str) -> APIError:
    return APIError(400, f"{param}: {message}", code="unsupported_value", param=param)


def input_messages(value: str | list[dict[str, Any]]) -> list[ChatMessage]:
    """The chat messages of a request's ``input``; a 400 naming the item or part that is not text."""
    if isinstance(value, str):
        return [ChatMessage(role="user", content=value)]
    messages: list[ChatMessage] = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        kind = item.get("type", "message")
        if kind != "message":
            raise _refuse(f"input items of type '{kind}' are not supported (only messages)", f"{where}.type")
        role = item.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise _refuse("role must be one of user, assistant, system, developer", f"{where}.role")
        messages.append(ChatMessage(role=ROLES[role], content=_content_text(item.get("content"), role, where)))
    if not any(m.role == "user" for m in messages):
        raise APIError(400, "input: needs at least one user message", code="invalid_value", param="input")
    if sum(len(m.content) for m in messages) > MAX_TEXT_CHARS * 2:
        raise APIError(400, f"input: at most {MAX_TEXT_CHARS * 2} characters in all", code="invalid_value",
                       param="input")
    return messages


def _content_text(content: Any, role: str, where: str) -> str:
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        pieces = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != TEXT_PARTS[role] or not isinstance(part.get("text"), str):
                raise _refuse(f"content parts of type '{kind}' are not supported in a {role} message "
                              f"(only {TEXT_PARTS[role]})", f"{where}.content[{j}]")
            pieces.append(part["text"])
        text = "".join(pieces)
    else:
        raise _refuse("content must be a string or a list of text parts", f"{where}.content")
    if len(text) > MAX_TEXT_CHARS:
        raise _refuse(f"a message is limited to {MAX_TEXT_CHARS} characters", f"{where}.content")
    return text
