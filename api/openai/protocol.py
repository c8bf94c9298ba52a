"""OpenAI's chat completions, completions and models protocol as pydantic models.

Requests convert themselves into :class:`~api.jobs.schemas.JobCreate` (one per choice), so the
bounds on every sampling parameter are the ones :class:`SamplingParams` already declares.
Fields OpenAI clients send that textgen does not implement are accepted only at their
"off" value, so a client never silently gets something other than what it asked for;
fields it does not know at all are ignored, as vLLM does, so newer SDKs keep working.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StrictBool, ValidationInfo, field_validator, model_validator

from api.jobs.schemas import CONVERSATION_ID, PRIORITY_DOC, JobCreate
from textgen_core.jobs import ChatMessage, JobRecord, NotBool, SamplingParams, Usage
from textgen_core.modes import Mode
from textgen_core.priorities import DEFAULT_PRIORITY, HIGHEST, LOWEST

MaxTokens = Annotated[int, *SamplingParams.model_fields["max_tokens"].metadata]
MAX_PROMPT_CHARS = 32_000
SEED_SPACE = 2**53  # the largest seed the job schema accepts, plus one

# finish_reason in OpenAI's vocabulary ("stop", "length"), plus "canceled" for a choice whose job
# was canceled (POST /v1/jobs/{id}/cancel): saying "stop" would pass a cut-off text as complete.
# The SDKs keep a finish_reason they do not know as a plain string.
OpenAIFinishReason = Literal["stop", "length", "canceled"]
FINISH_REASONS: dict[str, OpenAIFinishReason] = {"length": "length", "time_limit": "length", "deadline": "length",
                                                 "canceled": "canceled"}


def openai_finish_reason(reason: str | None) -> OpenAIFinishReason:
    return FINISH_REASONS.get(reason or "", "stop")


def _off(value: Any, allowed: tuple[Any, ...], name: str) -> Any:
    if value is None or any(value == a and type(value) is type(a) for a in allowed):
        return value
    raise ValueError(f"'{name}' is not supported by this server")


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


class _CompletionRequestBase(SamplingParams):
    """What chat completions and completions share: the model, n, streaming and our extras."""

    model_config = {"extra": "ignore"}

    model: str | None = Field(default=None, description="A model id from /v1/models; default: the server's.")
    n: Annotated[int, NotBool] = Field(default=1, ge=1, le=8, description="Choices to generate, each as its own job.")
    max_completion_tokens: MaxTokens | None = Field(default=None, description="Alias of max_tokens.")
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, max_length=256, description="Your end user's id; kept in metadata.")
    mode: Mode | None = Field(default=None, description="textgen extra: the scenario mode.")
    conversation_id: str | None = Field(default=None, pattern=CONVERSATION_ID,
                                        description="textgen extra: keep and use history (n=1 only).")
    cache: StrictBool = Field(default=True, description="textgen extra: false never answers from the result cache.")
    priority: Annotated[int, NotBool] = Field(default=DEFAULT_PRIORITY, ge=HIGHEST, le=LOWEST,
                                              description=f"textgen extra: {PRIORITY_DOC}")

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        """OpenAI treats an explicit null as "use the default"; so do we."""
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data

    @field_validator("top_k", mode="before")
    @classmethod
    def _top_k_off(cls, value: Any) -> Any:
        return 0 if value == -1 else value  # vLLM's spelling of "no top-k"

    @model_validator(mode="after")
    def _aliases(self) -> _CompletionRequestBase:
        if self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return self

    @field_validator("conversation_id")
    @classmethod
    def _one_choice(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("n", 1) > 1:
            raise ValueError("conversation_id works with n=1 only")
        return value

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def sampling(self, choice: int) -> dict[str, Any]:
        """Sampling parameters of one choice: choice i uses seed + i, so n choices differ and each
        is reproducible."""
        params = self.model_dump(include=set(SamplingParams.model_fields))
        if self.seed is not None:
            params["seed"] = (self.seed + choice) % SEED_SPACE
        return params

    def extras(self) -> dict[str, Any]:
        return {
            "cache": self.cache,
            "priority": self.priority,
            "model": self.model,
            "conversation_id": self.conversation_id,
            "metadata": {"user": self.user} if self.user else {},
        }


class ChatCompletionMessageParam(BaseModel):
    model_config = {"extra": "ignore"}

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None

    @field_validator("content")
    @classmethod
    def _text_only(cls, value: str | list[dict[str, Any]] | None) -> str | list[dict[str, Any]] | None:
        if isinstance(value, list):
            for part in value:
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ValueError("only text content parts are supported")
        if value is not None and len(_text(value)) > MAX_PROMPT_CHARS:
            raise ValueError(f"a message is limited to {MAX_PROMPT_CHARS} characters")
        return value

    def to_chat(self) -> ChatMessage:
        role = "system" if self.role == "developer" else self.role
        return ChatMessage(role=role, content=_text(self.content))


def _text(content: str | list[dict[str, Any]] | None) -> str:
    if isinstance(content, list):
        return "".join(part["text"] for part in content)
    return content or ""


class ChatCompletionRequest(_CompletionRequestBase):
    """``POST /v1/chat/completions``: messages rendered with the model's chat template."""

    messages: list[ChatCompletionMessageParam] = Field(min_length=1, max_length=64)
    logprobs: StrictBool | None = None
    top_logprobs: Annotated[int, NotBool] | None = None
    logit_bias: dict[str, Any] | None = None
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None

    model_config = {
        "extra": "ignore",
        "json_schema_extra": {"examples": [{
            "model": "smollm2-135m-instruct", "max_tokens": 48, "temperature": 0,
            "messages": [{"role": "user", "content": "Suggest a name for a bakery."}],
        }]},
    }

    @field_validator("logprobs", "top_logprobs")
    @classmethod
    def _no_logprobs(cls, value: Any, info: ValidationInfo) -> Any:
        return _off(value, (False, 0), str(info.field_name))

    @field_validator("logit_bias", "tools", "functions")
    @classmethod
    def _empty_only(cls, value: Any, info: ValidationInfo) -> Any:
        return _off(value, ({}, []), str(info.field_name))

    @field_validator("tool_choice")
    @classmethod
    def _no_tools(cls, value: Any) -> Any:
        return _off(value, ("none", "auto"), "tool_choice")

    @field_validator("response_format")
    @classmethod
    def _text_format(cls, value: Any) -> Any:
        return _off(value, ({"type": "text"},), "response_format")

    @field_validator("messages")
    @classmethod
    def _needs_user(cls, value: list[ChatCompletionMessageParam]) -> list[ChatCompletionMessageParam]:
        if not any(m.role == "user" for m in value):
            raise ValueError("'messages' needs at least one user message")
        return value

    def to_jobs(self) -> list[JobCreate]:
        messages = [m.to_chat() for m in self.messages]
        return [
            JobCreate(messages=messages, mode=self.mode or Mode.general, **self.extras(), **self.sampling(i))
            for i in range(self.n)
        ]


class CompletionRequest(_CompletionRequestBase):
    """``POST /v1/completions``: the prompt continued as plain text.

    With ``mode`` or ``conversation_id`` the prompt is instead a user turn under that mode's
    instructions (and the conversation's history), as on ``/v1/jobs``.
    """

    prompt: str | list[str] = Field(description="A prompt, or a list of prompts (n choices each).")
    logprobs: Annotated[int, NotBool] | None = None
    echo: StrictBool | None = None
    best_of: Annotated[int, NotBool] | None = None
    suffix: str | None = None
    logit_bias: dict[str, Any] | None = None

    model_config = {
        "extra": "ignore",
        "json_schema_extra": {"examples": [{
            "model": "smollm2-135m-instruct", "prompt": "The three primary colours are", "max_tokens": 24,
            "temperature": 0,
        }]},
    }

    @field_validator("prompt")
    @classmethod
    def _prompt_sizes(cls, value: str | list[str]) -> str | list[str]:
        prompts = [value] if isinstance(value, str) else value
        if not 1 <= len(prompts) <= 16:
            raise ValueError("give 1..16 prompts")
        if any(not 1 <= len(p) <= MAX_PROMPT_CHARS for p in prompts):
            raise ValueError(f"each prompt must be 1..{MAX_PROMPT_CHARS} characters")
        return value

    @field_validator("logprobs", "echo", "suffix")
    @classmethod
    def _unsupported(cls, value: Any, info: ValidationInfo) -> Any:
        return _off(value, (0, False, ""), str(info.field_name))

    @field_validator("best_of")
    @classmethod
    def _best_of(cls, value: Any) -> Any:
        return _off(value, (1,), "best_of")

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, value: Any) -> Any:
        return _off(value, ({},), "logit_bias")

    @model_validator(mode="after")
    def _few_choices(self) -> CompletionRequest:
        if len(self.prompts) * self.n > 32:
            raise ValueError("at most 32 choices in all (prompts x n)")
        if self.conversation_id and len(self.prompts) > 1:
            raise ValueError("conversation_id works with one prompt only")
        return self

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    @property
    def raw(self) -> bool:
        return self.mode is None and self.conversation_id is None

    def to_jobs(self) -> list[JobCreate]:
        return [
            JobCreate(prompt=prompt, mode=self.mode or Mode.general, **self.extras(), **self.sampling(i))
            for prompt in self.prompts
            for i in range(self.n)
        ]


# -- responses ---------------------------------------------------------------------------


class ChatCompletionMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatCompletionChoice(BaseModel):
    index: int
    message: ChatCompletionMessage
    logprobs: None = None
    finish_reason: OpenAIFinishReason


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: Usage


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: None = None
    finish_reason: OpenAIFinishReason


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


def total_usage(jobs: list[JobRecord | None], per_prompt: int) -> Usage:
    """OpenAI counts a prompt once however many choices it has; completions add up."""
    prompt = sum(job.usage.prompt_tokens for job in jobs[::per_prompt] if job and job.usage)
    completion = sum(job.usage.completion_tokens for job in jobs if job and job.usage)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


class ModelCard(BaseModel):
    """OpenAI's model object, plus where textgen has it loaded."""

    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="When the longest-running worker serving it started (0: none).")
    owned_by: str = "textgen"
    workers: list[str] = Field(description="Live workers that have the model loaded.")
    device: str | None
    dtype: str | None
    max_batch: int | None = Field(description="Rows per decoding step (null: the device's default, no worker up).")
    context_length: int | None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
