"""Batch results as streams: items read from Redis a chunk at a time and written out in input
order, so a 50,000-item batch is never held in memory. Items still queued or running are left
out (what is done so far)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from typing import Any

from api.batches.openai_batch import error_line, output_line
from textgen_core.batch_store import AsyncBatchStore, item_json

CSV_COLUMNS = ["custom_id", "status", "output", "finish_reason", "prompt_tokens", "completion_tokens",
               "total_tokens", "error"]
DONE = ("succeeded", "failed", "canceled", "expired")


async def finished_items(store: AsyncBatchStore, batch_id: str, chunk: int) -> AsyncIterator[dict[str, Any]]:
    async for raw in store.items(batch_id, chunk):
        if raw["status"] in DONE:
            item: dict[str, Any] = dict(raw)
            item["usage"] = item_json(raw["usage"])
            item["error"] = item_json(raw["error"])
            yield item


def _result(item: dict[str, Any]) -> dict[str, Any]:
    return {"custom_id": item["custom_id"], "status": item["status"], "output": item["output"] or None,
            "finish_reason": item["finish_reason"] or None, "usage": item["usage"], "error": item["error"],
            "cached": item["cached"] == "1"}


async def jsonl_results(store: AsyncBatchStore, batch_id: str, chunk: int) -> AsyncIterator[str]:
    async for item in finished_items(store, batch_id, chunk):
        yield json.dumps(_result(item)) + "\n"


async def csv_results(store: AsyncBatchStore, batch_id: str, chunk: int) -> AsyncIterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    async for item in finished_items(store, batch_id, chunk):
        usage = item["usage"] or {}
        error = item["error"] or {}
        writer.writerow([item["custom_id"], item["status"], item["output"] or "", item["finish_reason"] or "",
                         usage.get("prompt_tokens", ""), usage.get("completion_tokens", ""),
                         usage.get("total_tokens", ""), error.get("message", "")])
        if buffer.tell() > 64 * 1024:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


async def openai_file(store: AsyncBatchStore, batch_id: str, endpoint: str, errors: bool,
                      chunk: int) -> AsyncIterator[str]:
    """OpenAI's output file (succeeded requests) or error file (failed and cancelled ones)."""
    async for item in finished_items(store, batch_id, chunk):
        if item["status"] == "succeeded" and not errors:
            yield output_line(item, endpoint) + "\n"
        elif item["status"] != "succeeded" and errors:
            yield error_line(item) + "\n"
