"""Reading batch items from uploads: CSV (one product or prompt per row) and JSONL (one item,
or one OpenAI request line, per line). Files are read as streams, line by line; the first bad
line is reported by number."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import IO, Any

from pydantic import ValidationError

from api.app.safe_json import BadJSON, loads
from api.batches.openai_batch import LineError, is_request_line, line_to_spec
from api.batches.schemas import BatchDefaults, BatchItem
from textgen_core.batches import ItemSpec

# CSV columns that are product fields; any other non-empty column becomes an attribute.
PRODUCT_COLUMNS = ("name", "category", "price", "description")
ITEM_COLUMNS = ("custom_id", "sku", "prompt", "mode", "max_tokens", "temperature", "seed")
MAX_LINE_DEPTH = 32  # the default of TEXTGEN_MAX_JSON_DEPTH, as for request bodies


class BatchInputError(ValueError):
    def __init__(self, line: int, message: str):
        super().__init__(f"line {line}: {message}")
        self.line = line


def _validation_message(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ()))
    return f"{where}: {err['msg']}" if where else err["msg"]


def csv_items(stream: IO[bytes], defaults: BatchDefaults) -> Iterator[tuple[int, str | None, ItemSpec]]:
    """(line number, model, item) per CSV row; a header row is required."""
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
    try:
        reader = csv.DictReader(text, strict=True)
        try:
            header = reader.fieldnames
        except csv.Error as exc:
            raise BatchInputError(1, f"malformed CSV header: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise BatchInputError(1, "the file is not UTF-8 text") from exc
        if not header or not ({"prompt", "name"} & set(header)):
            raise BatchInputError(1, "the CSV header needs a 'prompt' or a 'name' column (plus optional "
                                     "custom_id, category, price, description and attribute columns)")
        while True:
            line = reader.line_num + 1  # where the next record starts
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise BatchInputError(line, f"malformed CSV: {exc}") from exc
            except UnicodeDecodeError as exc:
                raise BatchInputError(line, "the file is not UTF-8 text") from exc
            if None in row or any(v is None for v in row.values()):
                raise BatchInputError(line, f"expected {len(header)} fields, found a different number")
            yield line, None, _row_item(line, row, defaults)
    finally:
        text.detach()


def _row_item(line: int, row: dict[str, str], defaults: BatchDefaults) -> ItemSpec:
    values = {k.strip(): (v or "").strip() for k, v in row.items() if k}
    item: dict[str, Any] = {"custom_id": values.get("custom_id") or values.get("sku") or f"row-{line}"}
    for name in ("mode", "max_tokens", "temperature", "seed"):
        if values.get(name):
            item[name] = values[name]
    if values.get("prompt"):
        item["prompt"] = values["prompt"]
    else:
        product: dict[str, Any] = {k: values[k] for k in PRODUCT_COLUMNS if values.get(k)}
        product["attributes"] = {k: v for k, v in values.items()
                                 if v and k not in PRODUCT_COLUMNS and k not in ITEM_COLUMNS}
        item["product"] = product
    try:
        return BatchItem.model_validate(item).to_spec(defaults)
    except ValidationError as exc:
        raise BatchInputError(line, _validation_message(exc)) from exc


def jsonl_items(stream: IO[bytes], defaults: BatchDefaults, endpoint: str | None = None, *,
                max_depth: int = MAX_LINE_DEPTH) -> Iterator[tuple[int, str | None, ItemSpec]]:
    """(line number, model, item) per non-empty JSONL line: a textgen item or an OpenAI request line."""
    for number, raw in enumerate(stream, start=1):
        if not raw.strip():
            continue
        try:
            obj = loads(raw, max_depth)
        except BadJSON as exc:
            raise BatchInputError(number, str(exc)) from exc
        if not isinstance(obj, dict):
            raise BatchInputError(number, "each line must be a JSON object")
        try:
            if endpoint or is_request_line(obj):
                model, spec = line_to_spec(obj, endpoint)
                yield number, model, spec
            else:
                yield number, None, BatchItem.model_validate(obj).to_spec(defaults)
        except LineError as exc:
            raise BatchInputError(number, str(exc)) from exc
        except ValidationError as exc:
            raise BatchInputError(number, _validation_message(exc)) from exc
