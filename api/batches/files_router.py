"""``/v1/files``: OpenAI's Files API for batch input, and the output and error files of
OpenAI-style batches (rendered from the items when read, never stored twice)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import Response, StreamingResponse

from api.app.deps import OwnerDep, StateDep
from api.app.errors import ERROR_RESPONSES, APIError, not_found
from api.app.idempotency import IdempotencyDep
from api.app.state import AppState, batch_store
from api.batches import file_store
from api.batches.results import openai_file
from api.batches.schemas import FileList, FileOut
from api.jobs.schemas import Deleted
from textgen_core.batches import BatchRecord

router = APIRouter(prefix="/v1/files", tags=["files"], responses=ERROR_RESPONSES)

UPLOAD_CHUNK = 1024 * 1024


async def read_upload(upload: UploadFile, limit: int) -> bytes:
    """The upload's bytes, refusing more than ``limit`` (413) and anything but UTF-8 text (400)."""
    parts: list[bytes] = []
    size = 0
    while chunk := await upload.read(UPLOAD_CHUNK):
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"the file is larger than {limit:,} bytes", code="file_too_large", param="file")
        parts.append(chunk)
    data = b"".join(parts)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise APIError(400, "the file must be UTF-8 text (JSONL)", code="invalid_file", param="file") from exc
    return data


@router.post("", response_model=FileOut, summary="Upload a JSONL file of batch requests (purpose 'batch')")
async def create_file(
    owner: OwnerDep,
    state: StateDep,
    file: Annotated[UploadFile, File(description="JSONL: one {custom_id, method, url, body} per line")],
    purpose: Annotated[str, Form()],
    idem: IdempotencyDep,
) -> FileOut:
    if purpose != "batch":
        raise APIError(400, f"purpose {purpose!r} is not supported; use 'batch'", code="invalid_purpose",
                       param="purpose")
    data = await read_upload(file, state.settings.batch_file_max_bytes)
    filename = file.filename or "input.jsonl"
    # The multipart boundary differs on every send: the request is its purpose, name and content.
    material = json.dumps([purpose, filename, hashlib.sha256(data).hexdigest()]).encode()
    return await idem.run(material, lambda: file_store.save(state, owner, filename, purpose, data), FileOut)


@router.get("", response_model=FileList, summary="List your uploaded files")
async def list_files(
    owner: OwnerDep,
    state: StateDep,
    purpose: Annotated[str | None, Query(description="Only files of this purpose ('batch').")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    order: Annotated[Literal["asc", "desc"], Query(description="By upload time.")] = "desc",
    after: Annotated[str | None, Query(description="A file id: list the files after it.")] = None,
) -> FileList:
    if purpose not in (None, "batch"):  # uploads are all 'batch'; output files belong to their batch
        return FileList(data=[], first_id=None, last_id=None, has_more=False)
    files, more = await file_store.page(state, owner, limit, after, newest_first=order == "desc")
    return FileList(data=files, first_id=files[0].id if files else None,
                    last_id=files[-1].id if files else None, has_more=more)


@router.delete("/{file_id}", response_model=Deleted, summary="Delete an uploaded file",
               responses={409: {"model": ERROR_RESPONSES[404]["model"]}})
async def delete_file(file_id: str, owner: OwnerDep, state: StateDep) -> Deleted:
    if await _batch_file(state, file_id, owner) is not None:
        raise APIError(409, "a batch's output and error files are rendered from the batch and expire with it; "
                       "they cannot be deleted on their own", code="file_not_deletable", param="file_id")
    if not await file_store.delete(state, file_id, owner):
        raise not_found("file", "file_id")
    return Deleted(id=file_id, object="file")


async def _batch_file(state: AppState, file_id: str, owner: str) -> tuple[BatchRecord, bool] | None:
    """(batch, is error file) when ``file_id`` names a batch's output or error file."""
    for suffix, errors in (("-output", False), ("-errors", True)):
        if file_id.startswith("file-batch_") and file_id.endswith(suffix):
            batch = await batch_store(state).get(file_id.removeprefix("file-").removesuffix(suffix), owner)
            if batch is not None and batch.kind == "openai" and batch.status.terminal:
                return batch, errors
    return None


def _lines(state: AppState, batch: BatchRecord, errors: bool) -> AsyncIterator[str]:
    return openai_file(batch_store(state), batch.id, batch.endpoint or "/v1/chat/completions", errors,
                       state.settings.batch_chunk_size)


@router.get("/{file_id}", response_model=FileOut, summary="A file's metadata")
async def get_file(file_id: str, owner: OwnerDep, state: StateDep) -> FileOut:
    found = await _batch_file(state, file_id, owner)
    if found is not None:
        batch, errors = found
        size = 0
        async for line in _lines(state, batch, errors):
            size += len(line.encode())
        return FileOut(id=file_id, bytes=size, created_at=int(batch.finished_at or batch.created_at),
                       filename=f"batch_{'errors' if errors else 'output'}.jsonl", purpose="batch_output")
    info = await file_store.get(state, file_id, owner)
    if info is None:
        raise not_found("file", "file_id")
    return info


@router.get("/{file_id}/content", summary="A file's content", response_class=StreamingResponse,
            responses={200: {"content": {"application/jsonl": {}}}})
async def get_file_content(file_id: str, owner: OwnerDep, state: StateDep) -> Response:
    found = await _batch_file(state, file_id, owner)
    if found is not None:
        batch, errors = found
        return StreamingResponse(_lines(state, batch, errors), media_type="application/jsonl")
    if await file_store.get(state, file_id, owner) is None:
        raise not_found("file", "file_id")
    return Response(await file_store.content(state, file_id), media_type="application/jsonl")
