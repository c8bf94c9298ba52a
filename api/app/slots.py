"""A per-API-key cap on open completion requests, shared by every API replica through Redis.

OpenAI-style completions hold their HTTP request open until the text is done, so one client
opening hundreds of them would tie up connections and flood the queue. Each request takes a
slot (a member of a sorted set scored by its lease expiry) and gives it back when it ends; a
slot whose API process died lapses when its lease does.
"""

from __future__ import annotations

import secrets
import time

import redis.asyncio as aioredis

from textgen_core.keys import Keys
from textgen_core.scripts import Scripts
from textgen_core.scripts import slots as slot_scripts


class RequestSlots:
    def __init__(self, client: aioredis.Redis, keys: Keys, *, limit: int, lease_seconds: int):
        self.r = client
        self.keys = keys
        self.limit = limit
        self.lease_seconds = lease_seconds
        self._scripts = Scripts(client, slot_scripts.ACQUIRE)

    async def acquire(self, owner: str) -> str | None:
        """A slot token for ``owner``, or None when all of its slots are taken."""
        token = secrets.token_hex(8)
        now = time.time()
        taken = await self._scripts[slot_scripts.ACQUIRE](
            keys=[self.keys.openai_slots(owner)],
            args=[now, now + self.lease_seconds, token, self.limit, self.lease_seconds],
        )
        return token if taken else None

    async def release(self, owner: str, token: str) -> None:
        await self.r.zrem(self.keys.openai_slots(owner), token)
