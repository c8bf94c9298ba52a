"""``/v1/responses``: create (wait, stream, or background), retrieve (or replay its stream),
cancel, delete. Bad input is a 400 naming the parameter, as on the other OpenAI routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from redis.exceptions import RedisError
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask

from api.app.deadline_fields import CancelAfterHeader, cancel_after
from api.app.deps import OwnerDep, StateDep
from api.app.errors import ErrorResponse
from api.app.state import AppState
from api.openai.completions import OpenAIRoute
from api.responses import service
from api.responses.protocol import ResponseCreate
from api.responses.stream import END_EVENTS, error_event, response_events, sse
from textgen_core.jobs import JobRecord
from textgen_core.responses import ResponseMeta, response_object

log = logging.getLogger(__name__)

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 409, 429, 503)
}
_STREAM = {"text/event-stream": {"schema": {"type": "string"}, "example": 'event: response.created\n'
                                 'data: {"type":"response.created","sequence_number":0,"response":{…}}\n\n'}}

router = APIRouter(prefix="/v1/responses", tags=["openai"], route_class=OpenAIRoute, responses=_ERRORS)


@router.post("", summary="Create a response (OpenAI Responses API)", responses={200: {"content": _STREAM}})
async def create_response(body: ResponseCreate, owner: OwnerDep, state: StateDep, request: Request,
                          response: Response, cancel_after_header: CancelAfterHeader = None) -> Any:
    cancel_after(cancel_after_header)  # a bad header is a 400 before anything is stored
    job, meta, held = await service.create(state, body, owner, response, cancel_after=cancel_after_header)
    headers = {"X-Job-Ids": job.id}
    if body.stream:  # held or not, the same events; a held response is cancelled if the client leaves
        return EventSourceResponse(_events(state, job, meta, owner, held=held), sep="\n", ping=15,
                                   headers=headers, background=BackgroundTask(held.close) if held else None)
    if held is None:  # background: the job runs whether or not anyone listens
        response.headers.update(headers)
        return response_object(job, meta)
    try:
        final = await held.wait(request)
    finally:
        await held.close()
    if final is None:
        log.info("client left; cancelled %s", job.id)
        return Response(status_code=499)
    response.headers.update(headers)
    return response_object(final, meta)


@router.get("/{response_id}", summary="Retrieve a response; ?stream=true replays its events, then live",
            responses={200: {"content": _STREAM}})
async def retrieve_response(
    response_id: str,
    owner: OwnerDep,
    state: StateDep,
    stream: Annotated[bool, Query(description="Answer with the response's events (SSE).")] = False,
    starting_after: Annotated[int | None, Query(ge=-1, description="With stream: only the events after this "
                                                "sequence number.")] = None,
) -> Any:
    job, meta = await service.read(state, response_id, owner)
    if stream:
        after = -1 if starting_after is None else starting_after
        return EventSourceResponse(_events(state, job, meta, owner, starting_after=after), sep="\n", ping=15)
    return response_object(job, meta)


@router.post("/{response_id}/cancel", summary="Cancel a queued or running response")
async def cancel_response(response_id: str, owner: OwnerDep, state: StateDep) -> dict[str, Any]:
    job, meta = await service.cancel(state, response_id, owner)
    return response_object(job, meta)


@router.delete("/{response_id}", summary="Delete a response (a running one is cancelled first)")
async def delete_response(response_id: str, owner: OwnerDep, state: StateDep) -> dict[str, Any]:
    return await service.delete_owned(state, response_id, owner)


async def _events(state: AppState, job: JobRecord, meta: ResponseMeta, owner: str, starting_after: int = -1,
                  held: service.Held | None = None) -> AsyncIterator[dict[str, str]]:
    """The response's events as SSE. Without ``held`` (background, or a replay) the response runs
    on when the client goes; with it, the request's close cancels what has not ended."""
    try:
        async for event in response_events(state, job, meta, owner, starting_after=starting_after):
            if held is not None and event["type"] in END_EVENTS.values():
                held.ended = True
            yield sse(event)
    except RedisError as exc:
        yield error_event(exc)
    finally:
        if held is not None:
            await held.close()
