"""OpenAI Batch API lines: request lines into items, finished items into output/error lines.

Input lines are ``{"custom_id", "method": "POST", "url", "body"}`` where ``body`` is a chat or
text completion request; output lines follow OpenAI's documented format
``{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StrictBool, ValidationError

from api.openai.protocol import ChatCompletionMessageParam
from textgen_core.batches import ItemSpec
from textgen_core.jobs import JobInput, NotBool, SamplingParams
from textgen_core.modes import Mode


class LineError(ValueError):
    """A request line that cannot become an item; the message says why."""


class _Body(BaseModel):
    model: str | None = None
    # As /v1/chat/completions takes them: text content parts, the developer role, names.
    messages: list[ChatCompletionMessageParam] | None = Field(default=None, min_length=1, max_length=64)
    prompt: str | None = Field(default=None, min_length=1, max_length=32_000)
    max_tokens: Annotated[int, NotBool] | None = None
    max_completion_tokens: Annotated[int, NotBool] | None = None
    temperature: Annotated[float, NotBool] | None = None
    top_p: Annotated[float, NotBool] | None = None
    seed: Annotated[int, NotBool] | None = None
    stop: list[str] | str | None = None
    n: Annotated[int, NotBool] = 1
    stream: StrictBool = False

    model_config = {"extra": "ignore"}  # other OpenAI parameters are accepted and have no effect


class RequestLine(BaseModel):
    custom_id: str = Field(min_length=1, max_length=128)
    method: Literal["POST"]
    url: str
    body: dict[str, Any]


def is_request_line(obj: object) -> bool:
    return isinstance(obj, dict) and "body" in obj and "url" in obj


def line_to_spec(obj: dict[str, Any], endpoint: str | None) -> tuple[str | None, ItemSpec]:
    """(model named in the body, item) for one request line; raises LineError."""
    try:
        line = RequestLine.model_validate(obj)
        body = _Body.model_validate(line.body)
    except ValidationError as exc:
        raise LineError(_first_error(exc)) from exc
    endpoint = endpoint or line.url
    if line.url != endpoint:
        raise LineError(f"url {line.url!r} does not match the batch endpoint {endpoint!r}")
    if body.n != 1:
        raise LineError("only n=1 is supported")
    if body.stream:
        raise LineError("stream is not supported in a batch")
    if endpoint == "/v1/chat/completions":
        if body.messages is None:
            raise LineError("body.messages is required for /v1/chat/completions")
        if not any(m.role == "user" for m in body.messages):
            raise LineError("body.messages needs at least one user message")
        source = JobInput(messages=[m.to_chat() for m in body.messages])
    elif endpoint == "/v1/completions":
        if body.prompt is None:
            raise LineError("body.prompt is required for /v1/completions (a single string)")
        source = JobInput(prompt=body.prompt, raw=True)
    else:
        raise LineError(f"unsupported url {line.url!r}: use /v1/chat/completions or /v1/completions")
    params: dict[str, Any] = {"temperature": 1.0}  # OpenAI's default
    max_tokens = body.max_completion_tokens or body.max_tokens
    for name, value in (("max_tokens", max_tokens), ("temperature", body.temperature), ("top_p", body.top_p),
                        ("seed", body.seed), ("stop", body.stop)):
        if value is not None:
            params[name] = value
    try:
        sampling = SamplingParams.model_validate(params)
    except ValidationError as exc:
        raise LineError("body." + _first_error(exc)) from exc
    return body.model, ItemSpec(custom_id=line.custom_id, mode=Mode.general, input=source, params=sampling)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ()))
    return f"{where}: {err['msg']}" if where else err["msg"]


_FINISH = {"stop": "stop", "length": "length", "time_limit": "length", "deadline": "length"}


def output_line(item: dict[str, Any], endpoint: str) -> str:
    """The output-file line of a succeeded item."""
    job_id = item["id"]
    created = int(float(item["finished_at"] or item["created_at"] or 0))
    usage = item["usage"] or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    finish = _FINISH.get(item["finish_reason"] or "stop", "stop")
    if endpoint == "/v1/chat/completions":
        body: dict[str, Any] = {
            "id": f"chatcmpl-{job_id}", "object": "chat.completion", "created": created, "model": item["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": item["output"] or ""},
                         "logprobs": None, "finish_reason": finish}],
            "usage": usage,
        }
    else:
        body = {
            "id": f"cmpl-{job_id}", "object": "text_completion", "created": created, "model": item["model"],
            "choices": [{"text": item["output"] or "", "index": 0, "logprobs": None, "finish_reason": finish}],
            "usage": usage,
        }
    return json.dumps({"id": f"batch_req_{job_id}", "custom_id": item["custom_id"],
                       "response": {"status_code": 200, "request_id": job_id, "body": body}, "error": None})


def error_line(item: dict[str, Any]) -> str:
    """The error-file line of a failed or canceled item."""
    error = item["error"] or {}
    if item["status"] == "canceled":
        code, message = "batch_cancelled", "the batch was cancelled before this request finished"
    elif item["status"] == "expired":
        code, message = "batch_expired", "this request did not finish within the batch's completion window"
    else:
        code, message = error.get("type", "generation_error"), error.get("message", "the request failed")
    return json.dumps({"id": f"batch_req_{item['id']}", "custom_id": item["custom_id"], "response": None,
                       "error": {"code": code, "message": message}})
