"""``/v1/batches``: submit many items at once (JSON, CSV or JSONL upload, or OpenAI's
``input_file_id``), follow progress, read results as they come, cancel."""

from __future__ import annotations

import hashlib
import io
import json
from typing import IO, Annotated, Any, Literal

from anyio import to_thread
from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from api.app.deadline_fields import cancel_after
from api.app.deps import BatchStoreDep, OwnerDep, SettingsDep, StateDep
from api.app.errors import CREATE_RESPONSES, ERROR_RESPONSES, APIError, not_found
from api.app.idempotency import Idempotency, IdempotencyDep
from api.app.request_guard import parsed_body
from api.app.safe_json import BadJSON, loads
from api.app.state import AppState, batch_store
from api.batches import file_store
from api.batches.input import csv_items, jsonl_items
from api.batches.results import csv_results, jsonl_results
from api.batches.schemas import BatchCreate, BatchDefaults, BatchList, BatchOut, OpenAIBatchCreate
from api.batches.submit import accept
from api.webhooks.fields import BatchWebhookFields
from api.webhooks.service import check_webhook_url, flush_batch_completed
from textgen_core.batch_store import AsyncBatchStore
from textgen_core.batches import BatchRecord
from textgen_core.deadlines import earliest

router = APIRouter(prefix="/v1/batches", tags=["batches"], responses=ERROR_RESPONSES)

_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "content": {
            "application/json": {"schema": {"oneOf": [{"$ref": "#/components/schemas/BatchCreate"},
                                                      {"$ref": "#/components/schemas/OpenAIBatchCreate"}]}},
            "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
                "file": {"type": "string", "format": "binary", "description": "CSV or JSONL"},
                "model": {"type": "string"},
                "mode": {"type": "string", "enum": ["general", "recommendation", "support", "ecommerce"]},
                "max_tokens": {"type": "integer", "minimum": 1, "maximum": 1024},
                "temperature": {"type": "number", "minimum": 0, "maximum": 2},
                "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                "seed": {"type": "integer", "minimum": 0, "maximum": 2**53 - 1},
                "webhook": {"type": "string", "format": "uri", "maxLength": 2048},
                "webhook_events_filter": {"type": "string", "description": "completed and/or progress, "
                                          "comma-separated (or the field repeated)"},
                "cache": {"type": "boolean"},
                "completion_window": {"type": "string", "maxLength": 32, "description": "e.g. 24h, 1h, 10m"},
                "deadline_seconds": {"type": "number", "exclusiveMinimum": 0, "maximum": 7 * 24 * 3600},
            }}},
        },
        "required": True,
    },
}


async def _owned(store: AsyncBatchStore, batch_id: str, owner: str) -> BatchRecord:
    batch = await store.get(batch_id, owner)
    if batch is None:
        raise not_found("batch", "batch_id")
    return batch


def _validate(model: type[Any], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from exc


@router.post("", status_code=202, response_model=BatchOut, summary="Submit a batch",
             description="A JSON body with `items` and shared defaults; a multipart upload of a CSV or JSONL "
                         "`file` with defaults as form fields; or OpenAI's `input_file_id` + `endpoint`. "
                         "Any of them may name a `webhook` for `batch.completed` (and `batch.progress`). "
                         "With an `Idempotency-Key`, a repeat of the same request returns the first batch.",
             openapi_extra=_BODY_DOC, responses=CREATE_RESPONSES)
async def create_batch(request: Request, owner: OwnerDep, state: StateDep, response: Response,
                       idem: IdempotencyDep) -> BatchOut:
    content_type = request.headers.get("content-type", "")
    header = cancel_after(request.headers.get("cancel-after"))  # every item's deadline, as deadline_seconds
    if content_type.startswith("multipart/form-data"):
        out = await _from_upload(request, state, owner, idem, header)
    else:
        data = parsed_body(request)  # parsed and checked by api.app.request_guard
        if data is None:
            raise APIError(400, "the body must be JSON, or a multipart upload with a 'file'", code="invalid_json")
        if isinstance(data, dict) and "input_file_id" in data:
            openai_body = _validate(OpenAIBatchCreate, data)
            out = await idem.run(openai_body, lambda: _from_file(openai_body, state, owner, header), BatchOut)
        else:
            if isinstance(data, dict) and isinstance(data.get("items"), list) \
                    and len(data["items"]) > state.settings.batch_max_items:
                raise APIError(413, f"a batch holds at most {state.settings.batch_max_items:,} items; split the "
                                    "input into smaller batches", code="too_many_items", param="items")
            body = _validate(BatchCreate, data)
            out = await idem.run(body, lambda: _from_json(body, state, owner, header), BatchOut)
    response.headers["Location"] = f"/v1/batches/{out.id}"
    return out


def _hook(fields: BatchWebhookFields) -> dict[str, Any]:
    """The batch record's webhook fields."""
    return {"webhook": fields.webhook, "webhook_events_filter": fields.webhook_events_filter}


async def _check_hook(state: AppState, owner: str, fields: BatchWebhookFields) -> None:
    if fields.webhook:
        await check_webhook_url(state, owner, fields.webhook)


async def _from_json(body: BatchCreate, state: AppState, owner: str, header: float | None) -> BatchOut:
    await _check_hook(state, owner, body)
    defaults = BatchDefaults.model_validate(body.model_dump(exclude={"items", *BatchWebhookFields.model_fields}))
    specs = []
    for index, item in enumerate(body.items):
        try:
            specs.append((index, None, item.to_spec(defaults)))
        except ValidationError as exc:
            err = exc.errors()[0]
            param = ".".join(["items", str(index), *[str(p) for p in err["loc"]]])
            raise APIError(422, f"{param}: {err['msg']}", code="invalid_value", param=param) from exc

    def source() -> Any:
        return iter(specs)

    try:
        return BatchOut.of(await accept(state, owner, source, model=body.model, mode=body.mode, what="items",
                                        cache=body.cache, metadata=body.metadata, priority=body.priority,
                                        deadline_seconds=earliest(header, body.deadline_seconds),
                                        completion_window=body.completion_window, **_hook(body)))
    except APIError as exc:  # name the item, not a line, for inline items
        exc.body.message = exc.body.message.replace("line ", "items.", 1)
        raise


async def _from_upload(request: Request, state: AppState, owner: str, idem: Idempotency,
                       header: float | None) -> BatchOut:
    async with request.form(max_part_size=state.settings.batch_file_max_bytes) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise APIError(400, "the multipart upload needs a 'file' part (CSV or JSONL)", code="invalid_file",
                           param="file")
        fields = {k: v for k, v in form.items() if k not in ("file", "format") and isinstance(v, str)}
        hook = _form_hook(form.getlist("webhook_events_filter"), fields)
        await _check_hook(state, owner, hook)
        if "metadata" in fields:
            try:
                fields["metadata"] = loads(fields["metadata"], state.settings.max_json_depth)
            except BadJSON as exc:
                raise APIError(422, "metadata: must be a JSON object", code="invalid_value",
                               param="metadata") from exc
        defaults = _validate(BatchDefaults, fields)
        fmt = str(form.get("format") or "").lower() or _format_of(upload)
        if fmt not in ("csv", "jsonl"):
            raise APIError(400, f"format {fmt!r} is not supported; send 'csv' or 'jsonl'", code="invalid_value",
                           param="format")
        if upload.size is not None and upload.size > state.settings.batch_file_max_bytes:
            raise APIError(413, f"the file is larger than {state.settings.batch_file_max_bytes:,} bytes",
                           code="file_too_large", param="file")
        stream = upload.file

        def source() -> Any:
            stream.seek(0)
            return csv_items(stream, defaults) if fmt == "csv" else jsonl_items(stream, defaults)

        async def create() -> BatchOut:
            return BatchOut.of(await accept(state, owner, source, model=defaults.model, mode=defaults.mode,
                                            what="file", cache=defaults.cache, metadata=defaults.metadata,
                                            priority=defaults.priority,
                                            deadline_seconds=earliest(header, defaults.deadline_seconds),
                                            completion_window=defaults.completion_window, **_hook(hook)))

        if idem.redis_key is None:
            return await create()
        fields_seen = sorted((k, v) for k, v in form.multi_items() if isinstance(v, str))
        material = json.dumps([fields_seen, upload.filename, await to_thread.run_sync(_digest, stream)])
        return await idem.run(material.encode(), create, BatchOut)


def _digest(stream: IO[bytes]) -> str:
    """SHA-256 of an uploaded file, read in chunks (it may be large)."""
    stream.seek(0)
    digest = hashlib.sha256()
    while chunk := stream.read(1024 * 1024):
        digest.update(chunk)
    return digest.hexdigest()


def _form_hook(events: list[Any], fields: dict[str, Any]) -> BatchWebhookFields:
    """The webhook form fields (taken out of ``fields``); the filter comma-separated or repeated."""
    data: dict[str, Any] = {}
    if "webhook" in fields:
        data["webhook"] = fields.pop("webhook")
    if fields.pop("webhook_events_filter", None) is not None:
        data["webhook_events_filter"] = [e.strip() for v in events if isinstance(v, str) for e in v.split(",")
                                         if e.strip()]
    return _validate(BatchWebhookFields, data)


def _format_of(upload: UploadFile) -> Literal["csv", "jsonl"]:
    name = (upload.filename or "").lower()
    if name.endswith(".csv") or (upload.content_type or "").startswith("text/csv"):
        return "csv"
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    raise APIError(400, "cannot tell the file's format: name it .csv or .jsonl, or send a 'format' field",
                   code="invalid_file", param="file")


async def _from_file(body: OpenAIBatchCreate, state: AppState, owner: str, header: float | None) -> BatchOut:
    if await file_store.get(state, body.input_file_id, owner) is None:
        raise not_found("file", "input_file_id")
    await _check_hook(state, owner, body)
    data = await file_store.content(state, body.input_file_id)
    defaults = BatchDefaults()

    def source() -> Any:
        return jsonl_items(io.BytesIO(data), defaults, endpoint=body.endpoint)

    return BatchOut.of(await accept(state, owner, source, model=None, mode=defaults.mode, what="input_file_id",
                                    kind="openai", endpoint=body.endpoint, input_file_id=body.input_file_id,
                                    completion_window=body.completion_window, metadata=body.metadata or {},
                                    deadline_seconds=header, **_hook(body)))


@router.get("", response_model=BatchList, summary="List your batches, newest first")
async def list_batches(
    owner: OwnerDep,
    store: BatchStoreDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(description="A batch id: list the batches after it.")] = None,
) -> BatchList:
    batches, more = await store.page(owner, limit, after)
    data = [BatchOut.of(b) for b in batches]
    return BatchList(data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None,
                     has_more=more)


@router.get("/{batch_id}", response_model=BatchOut, summary="A batch: status, counts, times, time left")
async def get_batch(batch_id: str, owner: OwnerDep, store: BatchStoreDep) -> BatchOut:
    return BatchOut.of(await _owned(store, batch_id, owner))


@router.get("/{batch_id}/results", summary="Results so far, in input order (JSONL or CSV)",
            response_class=StreamingResponse,
            responses={200: {"content": {"application/jsonl": {}, "text/csv": {}}}})
async def batch_results(
    batch_id: str,
    owner: OwnerDep,
    store: BatchStoreDep,
    settings: SettingsDep,
    format: Annotated[Literal["jsonl", "csv"], Query(description="jsonl or csv")] = "jsonl",
) -> StreamingResponse:
    batch = await _owned(store, batch_id, owner)
    chunk = settings.batch_chunk_size
    headers = {"Content-Disposition": f'attachment; filename="{batch.id}.{format}"',
               "X-Batch-Status": batch.status.value}
    if format == "csv":
        return StreamingResponse(csv_results(store, batch.id, chunk), media_type="text/csv", headers=headers)
    return StreamingResponse(jsonl_results(store, batch.id, chunk), media_type="application/jsonl",
                             headers=headers)


@router.post("/{batch_id}/cancel", response_model=BatchOut, summary="Cancel: pending items never run")
async def cancel_batch(batch_id: str, owner: OwnerDep, state: StateDep) -> BatchOut:
    store = batch_store(state)
    batch = await _owned(store, batch_id, owner)
    if batch.status.terminal:
        raise APIError(409, f"batch already {batch.status.value}; nothing to cancel", code="batch_not_cancelable",
                       param="batch_id")
    await store.request_cancel(batch_id, owner, state.settings.batch_chunk_size)
    await flush_batch_completed(state, batch_id)  # when the cancel itself ended the last items
    return BatchOut.of(await _owned(store, batch_id, owner))
