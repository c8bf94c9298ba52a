"""Uploaded files (OpenAI Files API, purpose ``batch``): metadata hash plus content, with a TTL."""

from __future__ import annotations

import secrets
import time

from api.app.state import AppState
from api.batches.schemas import FileOut


def new_file_id() -> str:
    return "file-" + secrets.token_hex(12)


async def save(state: AppState, owner: str, filename: str, purpose: str, content: bytes) -> FileOut:
    info = FileOut(id=new_file_id(), bytes=len(content), created_at=int(time.time()), filename=filename,
                   purpose=purpose)
    ttl = state.settings.batch_file_ttl_seconds
    async with state.redis.pipeline(transaction=True) as pipe:
        pipe.hset(state.keys.file(info.id), mapping={**info.model_dump(mode="json", exclude_none=True),
                                                     "owner": owner})
        pipe.expire(state.keys.file(info.id), ttl)
        pipe.set(state.keys.file_content(info.id), content, ex=ttl)
        pipe.zadd(state.keys.owner_files(owner), {info.id: time.time()})
        pipe.expire(state.keys.owner_files(owner), ttl)
        await pipe.execute()
    return info


async def page(state: AppState, owner: str, limit: int, after: str | None,
               newest_first: bool) -> tuple[list[FileOut], bool]:
    """One page of the owner's uploads (and whether more follow), after the file id ``after``."""
    index = state.keys.owner_files(owner)
    await state.redis.zremrangebyscore(index, "-inf", time.time() - state.settings.batch_file_ttl_seconds)
    start = 0
    if after is not None:
        rank = await (state.redis.zrevrank if newest_first else state.redis.zrank)(index, after)
        if rank is None:
            return [], False
        start = rank + 1
    ids = await state.redis.zrange(index, start, start + limit, desc=newest_first)
    files = [info for info in [await get(state, file_id, owner) for file_id in ids[:limit]] if info]
    return files, len(ids) > limit


async def delete(state: AppState, file_id: str, owner: str) -> bool:
    """Forget an upload; False when the owner has no such file. Batches made from it keep their items."""
    if await get(state, file_id, owner) is None:
        return False
    async with state.redis.pipeline(transaction=True) as pipe:
        pipe.delete(state.keys.file(file_id), state.keys.file_content(file_id))
        pipe.zrem(state.keys.owner_files(owner), file_id)
        await pipe.execute()
    return True


async def get(state: AppState, file_id: str, owner: str) -> FileOut | None:
    raw = await state.redis.hgetall(state.keys.file(file_id))
    if not raw or raw.get("owner") != owner:
        return None
    return FileOut.model_validate({k: v for k, v in raw.items() if k != "owner"})


async def content(state: AppState, file_id: str) -> bytes:
    # Uploads are checked to be UTF-8, so the store's decoding client reads them back losslessly.
    value = await state.redis.get(state.keys.file_content(file_id))
    return (value or "").encode()
