"""Request and response bodies of ``/v1/batches`` and ``/v1/files``.

One batch object serves both kinds of caller: the fields of OpenAI's Batch object (so the
official SDK reads it unchanged) plus textgen's own (counts with ``canceled``, times as floats,
the estimate of time left, links).
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from textgen_core.batches import BatchRecord, BatchStatus, ItemSpec
from textgen_core.jobs import ChatMessage, JobInput, SamplingParams
from textgen_core.modes import Mode, product_message

CUSTOM_ID = r"^[\w.:@/#+-]{1,128}$"
OPENAI_ENDPOINTS = ("/v1/chat/completions", "/v1/completions")


class Product(BaseModel):
    """Product fields; the item's text is built from them as data (ecommerce mode by default)."""

    name: str = Field(min_length=1, max_length=300)
    category: str | None = Field(default=None, max_length=300)
    price: str | float | None = None
    description: str | None = Field(default=None, max_length=4000)
    attributes: dict[str, str | int | float | bool] = Field(default_factory=dict, max_length=50)

    model_config = {"extra": "forbid"}


class ItemOverrides(BaseModel):
    """Sampling fields an item may set for itself, over the batch's defaults."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: list[str] | str | None = None


class BatchItem(ItemOverrides):
    custom_id: str = Field(pattern=CUSTOM_ID)
    prompt: str | None = Field(default=None, min_length=1, max_length=32_000)
    messages: list[ChatMessage] | None = Field(default=None, min_length=1, max_length=64)
    product: Product | None = None
    mode: Mode | None = None

    model_config = {"extra": "forbid"}

    @model_validator(mode="after")
    def _one_input(self) -> BatchItem:
        given = [x for x in (self.prompt, self.messages, self.product) if x is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'prompt', 'messages' or 'product'")
        if self.messages is not None and not any(m.role == "user" for m in self.messages):
            raise ValueError("'messages' needs at least one user message")
        return self

    def to_spec(self, defaults: BatchDefaults) -> ItemSpec:
        params = {**defaults.sampling(), **self.model_dump(include=set(ItemOverrides.model_fields),
                                                          exclude_none=True)}
        if self.product is not None:
            mode = self.mode or Mode.ecommerce
            source = JobInput(prompt=product_message(self.product.model_dump(exclude_none=True)))
        else:
            mode = self.mode or defaults.mode
            source = JobInput(prompt=self.prompt, messages=self.messages)
        return ItemSpec(custom_id=self.custom_id, mode=mode, input=source,
                        params=SamplingParams.model_validate(params))


class BatchDefaults(SamplingParams):
    """What every item shares unless it says otherwise."""

    model: str | None = Field(default=None, description="Defaults to the configured default model.")
    mode: Mode = Mode.general
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("metadata")
    @classmethod
    def _small(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(value) > 16 or len(str(value)) > 4096:
            raise ValueError("metadata is limited to 16 keys and 4 KB")
        return value

    def sampling(self) -> dict[str, Any]:
        return self.model_dump(include=set(SamplingParams.model_fields))


class BatchCreate(BatchDefaults):
    """A batch given inline: items plus shared defaults."""

    items: list[BatchItem] = Field(min_length=1)

    model_config = {
        "extra": "forbid",
        "json_schema_extra": {"examples": [{
            "mode": "ecommerce", "max_tokens": 64, "temperature": 0,
            "items": [
                {"custom_id": "sku-1", "product": {"name": "Trail running shoe", "category": "Footwear",
                                                   "price": "89.00", "attributes": {"drop": "6 mm"}}},
                {"custom_id": "q-2", "prompt": "Write a tagline for a steel water bottle."},
            ],
        }]},
    }


class OpenAIBatchCreate(BaseModel):
    """OpenAI's ``POST /v1/batches`` body."""

    input_file_id: str
    endpoint: Literal["/v1/chat/completions", "/v1/completions"]
    completion_window: Literal["24h"] = "24h"
    metadata: dict[str, str] | None = None

    model_config = {"extra": "forbid"}


class RequestCounts(BaseModel):
    total: int
    completed: int
    failed: int
    canceled: int


class BatchOut(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    status: str
    model: str
    mode: Mode
    endpoint: str | None
    input_file_id: str | None
    completion_window: str | None
    output_file_id: str | None
    error_file_id: str | None
    errors: None = None
    request_counts: RequestCounts
    created_at: int
    in_progress_at: int | None
    completed_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    failed_at: int | None = None
    expired_at: int | None = None
    finalizing_at: int | None = None
    expires_at: int | None
    started_at: float | None = Field(description="When the first item started.")
    finished_at: float | None
    items_per_second: float | None
    eta_seconds: float | None = Field(description="Seconds left at the rate observed so far.")
    metadata: dict[str, Any]
    links: dict[str, str]

    @classmethod
    def of(cls, batch: BatchRecord) -> BatchOut:
        now = time.time()
        status = batch.status.value
        if batch.kind == "openai" and batch.status is BatchStatus.canceled:
            status = "cancelled"  # OpenAI's spelling, for the SDK
        terminal = batch.status.terminal
        finished = int(batch.finished_at) if batch.finished_at else None
        rate = batch.rate(now)
        base = f"/v1/batches/{batch.id}"
        return cls(
            id=batch.id, status=status, model=batch.model, mode=batch.mode, endpoint=batch.endpoint,
            input_file_id=batch.input_file_id, completion_window=batch.completion_window,
            output_file_id=output_file_id(batch.id) if terminal and batch.kind == "openai" else None,
            error_file_id=error_file_id(batch.id) if terminal and batch.kind == "openai" else None,
            request_counts=RequestCounts(total=batch.total, completed=batch.completed, failed=batch.failed,
                                         canceled=batch.canceled),
            created_at=int(batch.created_at),
            in_progress_at=int(batch.started_at or batch.created_at) if batch.status is not BatchStatus.validating
            else None,
            completed_at=finished if batch.status is BatchStatus.completed else None,
            cancelling_at=int(batch.cancelling_at) if batch.cancelling_at else None,
            cancelled_at=finished if batch.status is BatchStatus.canceled else None,
            expires_at=int(batch.created_at) + 24 * 3600 if batch.completion_window else None,
            started_at=batch.started_at, finished_at=batch.finished_at,
            items_per_second=round(rate, 3) if rate else None, eta_seconds=batch.eta_seconds(now),
            metadata=batch.metadata,
            links={"self": base, "results": f"{base}/results", "cancel": f"{base}/cancel"},
        )


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchOut]
    first_id: str | None
    last_id: str | None
    has_more: bool


class FileOut(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str = "processed"
    status_details: str | None = None


def output_file_id(batch_id: str) -> str:
    return f"file-{batch_id}-output"


def error_file_id(batch_id: str) -> str:
    return f"file-{batch_id}-errors"
