"""``/v1/chat/completions`` and ``/v1/completions``: OpenAI's protocol over the job queue.

A request submits one job per choice through the same path as ``POST /v1/jobs``, then holds
the connection while it reads their token streams from Redis. Bad input is a 400 (OpenAI's
status for it, so the SDKs raise ``BadRequestError``) naming the parameter.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import ValidationError
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask

from api.app.deps import OwnerDep, StateDep
from api.app.errors import APIError, ErrorResponse, validation_error_body
from api.app.priority_check import check_priority
from api.app.slots import RequestSlots
from api.app.state import AppState
from api.jobs.router import submit
from api.jobs.schemas import JobCreate
from api.openai.completion_session import ClientGone, CompletionSession, Kind
from api.openai.protocol import (
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionMessage,
    ChatCompletionRequest,
    Completion,
    CompletionChoice,
    CompletionRequest,
    openai_finish_reason,
)
from textgen_core.jobs import JobRecord

log = logging.getLogger(__name__)

RETRY_AFTER_BUSY = "1"
RETRY_AFTER_NO_WORKER = "5"


class OpenAIRoute(APIRoute):
    """Request validation errors, and every other 422 (a prompt over the context length included),
    become 400 ``invalid_request_error`` naming the parameter: OpenAI's status for bad input."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                body = validation_error_body(exc)
                raise APIError(400, body.message, code=body.code, param=body.param) from exc
            except APIError as exc:
                if exc.status == 422:
                    exc.status = 400
                raise

        return route


_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 429, 503)
}
_STREAM = {"text/event-stream": {"schema": {"type": "string"},
                                 "example": 'data: {"id":"chatcmpl-…","choices":[…]}\n\ndata: [DONE]\n\n'}}

router = APIRouter(prefix="/v1", tags=["openai"], route_class=OpenAIRoute, responses=_RESPONSES)


@router.post("/chat/completions", response_model=ChatCompletion, summary="Create a chat completion (OpenAI)",
             responses={200: {"content": _STREAM}})
async def chat_completions(body: ChatCompletionRequest, owner: OwnerDep, state: StateDep,
                           request: Request) -> Response:
    return await _complete(request, state, owner, body, body.to_jobs, kind="chat", raw=False)


@router.post("/completions", response_model=Completion, summary="Create a text completion (OpenAI)",
             responses={200: {"content": _STREAM}})
async def completions(body: CompletionRequest, owner: OwnerDep, state: StateDep, request: Request) -> Response:
    return await _complete(request, state, owner, body, body.to_jobs, kind="text", raw=body.raw)


async def _complete(request: Request, state: AppState, owner: str,
                    body: ChatCompletionRequest | CompletionRequest,
                    to_jobs: Callable[[], list[JobCreate]], *, kind: Kind, raw: bool) -> Response:
    settings = state.settings
    model = body.model or settings.default_model
    if settings.model(model) is None:
        raise APIError(404, f"The model '{model}' does not exist", type="invalid_request_error",
                       code="model_not_found", param="model")
    try:
        creates = to_jobs()
    except ValidationError as exc:  # the request passed its own checks but not the job's
        first = exc.errors()[0]
        raise APIError(400, first["msg"], code="invalid_value",
                       param=".".join(str(p) for p in first["loc"]) or None) from exc
    check_priority(settings, owner, body.priority)  # before any wait: a refusal costs nothing
    slots = RequestSlots(state.redis, state.keys, limit=settings.openai_max_concurrent_per_key,
                         lease_seconds=int(settings.generation_time_limit_seconds * 2))
    slot = await slots.acquire(owner)
    if slot is None:
        raise APIError(429, f"too many open completion requests for this API key (limit "
                       f"{settings.openai_max_concurrent_per_key}); retry when one has finished",
                       code="rate_limit_exceeded", headers={"Retry-After": RETRY_AFTER_BUSY})
    jobs: list[JobRecord] = []
    try:
        if not await state.fleet.wait_for_worker(model, settings.openai_worker_wait_seconds):
            raise APIError(503, f"no worker is serving the model '{model}' right now; retry shortly",
                           code="model_unavailable", headers={"Retry-After": RETRY_AFTER_NO_WORKER})
        for create in creates:
            jobs.append(await submit(state, create, owner, raw=raw))
    except BaseException:
        for job in jobs:  # all choices or none
            await state.store.cancel(job.id, owner)
        await slots.release(owner, slot)
        raise
    session = CompletionSession(state=state, owner=owner, kind=kind, model=model, jobs=jobs,
                                per_prompt=body.n, include_usage=body.include_usage, slots=slots, slot=slot)
    headers = {"X-Job-Ids": ",".join(session.job_ids)}
    if body.stream:
        return EventSourceResponse(session.sse(), sep="\n", ping=15, headers=headers,
                                   background=BackgroundTask(session.close))
    try:
        records = await session.collect(request)
    except ClientGone:
        log.info("client left; canceled %s", ", ".join(session.job_ids))
        return Response(status_code=499)
    finally:
        await session.close()
    return JSONResponse(_response(session, records).model_dump(), headers=headers)


def _response(session: CompletionSession, records: list[JobRecord]) -> ChatCompletion | Completion:
    usage = session.usage()
    if session.kind == "chat":
        return ChatCompletion(
            id=session.id, created=session.created, model=session.model, usage=usage,
            choices=[ChatCompletionChoice(index=i, message=ChatCompletionMessage(content=job.output or ""),
                                          finish_reason=openai_finish_reason(job.finish_reason))
                     for i, job in enumerate(records)],
        )
    return Completion(
        id=session.id, created=session.created, model=session.model, usage=usage,
        choices=[CompletionChoice(index=i, text=job.output or "", finish_reason=openai_finish_reason(job.finish_reason))
                 for i, job in enumerate(records)],
    )
