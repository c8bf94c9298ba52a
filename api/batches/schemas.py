"""Request and response bodies of ``/v1/batches`` and ``/v1/files``.

The batch object itself (``BatchOut``) lives in ``textgen_core.batch_view``: webhook events
carry it too.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from api.app.deadline_fields import CompletionWindow, DeadlineSeconds
from api.jobs.schemas import PRIORITY_DOC
from api.webhooks.fields import BatchWebhookFields
from textgen_core.batch_view import BatchOut
from textgen_core.batches import ItemSpec
from textgen_core.jobs import ChatMessage, JobInput, NotBool, SamplingParams
from textgen_core.modes import Mode, product_message
from textgen_core.priorities import DEFAULT_PRIORITY, HIGHEST, LOWEST

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

    max_tokens: Annotated[int, NotBool] | None = None
    temperature: Annotated[float, NotBool] | None = None
    top_p: Annotated[float, NotBool] | None = None
    top_k: Annotated[int, NotBool] | None = None
    seed: Annotated[int, NotBool] | None = None
    stop: list[str] | str | None = None


class BatchItem(ItemOverrides):
    deadline_seconds: DeadlineSeconds = None
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
                        params=SamplingParams.model_validate(params), deadline_seconds=self.deadline_seconds)


class BatchDefaults(SamplingParams):
    """What every item shares unless it says otherwise."""

    model: str | None = Field(default=None, description="Defaults to the configured default model.")
    mode: Mode = Mode.general
    metadata: dict[str, Any] = Field(default_factory=dict)
    cache: bool = Field(default=True, description="Answer deterministic items from the result cache "
                        "(identical items generate once); false generates every item.")
    priority: Annotated[int, NotBool] = Field(default=DEFAULT_PRIORITY, ge=HIGHEST, le=LOWEST,
                                              description="Of every item, among bulk work. " + PRIORITY_DOC)
    completion_window: CompletionWindow | None = None
    deadline_seconds: DeadlineSeconds = None  # every item's, unless the item sets a shorter one

    @field_validator("metadata")
    @classmethod
    def _small(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(value) > 16 or len(str(value)) > 4096:
            raise ValueError("metadata is limited to 16 keys and 4 KB")
        return value

    def sampling(self) -> dict[str, Any]:
        return self.model_dump(include=set(SamplingParams.model_fields))


class BatchCreate(BatchDefaults, BatchWebhookFields):
    """A batch given inline: items plus shared defaults (and, optionally, a webhook)."""

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


class OpenAIBatchCreate(BatchWebhookFields):
    """OpenAI's ``POST /v1/batches`` body (the webhook fields go in the SDK's ``extra_body``)."""

    input_file_id: str
    endpoint: Literal["/v1/chat/completions", "/v1/completions"]
    completion_window: CompletionWindow = "24h"
    metadata: dict[str, str] | None = None

    model_config = {"extra": "forbid"}


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


class FileList(BaseModel):
    """A page of uploads, in the shape of OpenAI's cursor pages (the SDK pages on ``after``)."""

    object: Literal["list"] = "list"
    data: list[FileOut]
    first_id: str | None
    last_id: str | None
    has_more: bool

