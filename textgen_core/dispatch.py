"""Chunk leases: a batch chunk whose dispatching worker died is sent again in seconds.

A batch travels as one ``textgen.batch_dispatch`` message per chunk, which a worker turns into
the chunk's item messages. A worker SIGKILLed while it sends them (or while it holds the message
unstarted) would leave the unsent items ``queued`` until the broker redelivers the message after
its visibility timeout (an hour). So each chunk has an entry in ``Keys.dispatch`` (a sorted set
scored by a deadline): the API adds it as it sends the chunk's message (deadline: a lease from
now); the dispatch task takes it over (``take``: the deadline a lease on, renewed by the worker's
heartbeat while it sends) and removes it once every item message is sent. A deadline that passes
means the message or its dispatcher may be gone: one reaper (whichever runs the script first) pushes
the deadline on and sends the chunk's message again; a chunk of a batch no longer active is
dropped. A message that merely waits its turn in a long bulk queue also passes its deadline, so
each further re-send of a chunk nobody took over waits twice as long (``scripts/dispatch.py``). A copy that
runs after the chunk was dispatched finds no entry and does nothing, and an item sent twice is
claimed once.
"""

from __future__ import annotations

import threading
import time
from typing import NamedTuple

import redis
import redis.asyncio as aioredis

from textgen_core.keys import Keys
from textgen_core.scripts import Scripts
from textgen_core.scripts import dispatch as dispatch_scripts


class Chunk(NamedTuple):
    batch_id: str
    model: str
    start: int
    stop: int

    @property
    def member(self) -> str:
        return f"{self.batch_id}|{self.model}|{self.start}|{self.stop}"

    @classmethod
    def parse(cls, member: str) -> Chunk:
        batch_id, rest = member.split("|", 1)
        model, start, stop = rest.rsplit("|", 2)
        return cls(batch_id, model, int(start), int(stop))


async def record(client: aioredis.Redis, keys: Keys, chunk: Chunk, *, lease_seconds: float, ttl: int) -> None:
    """The API's half: note the chunk as it sends its message, due a lease from now."""
    async with client.pipeline(transaction=True) as pipe:
        pipe.zadd(keys.dispatch, {chunk.member: time.time() + lease_seconds})
        pipe.expire(keys.dispatch, ttl)
        await pipe.execute()


class ChunkLeases:
    """One worker process's chunks being dispatched: taken by its tasks, renewed by its heartbeat."""

    def __init__(self, client: redis.Redis, keys: Keys, *, lease_seconds: float, ttl: int):
        self.r = client
        self.keys = keys
        self.lease_seconds = lease_seconds
        self.ttl = ttl
        self._held: dict[int, str] = {}  # task thread id -> member (threads pool: one chunk a thread)
        self._lock = threading.Lock()
        self._scripts = Scripts(client, dispatch_scripts.TAKE, dispatch_scripts.REAP)

    def _keys(self) -> list[str]:
        """KEYS of both scripts: the dispatch set, the active batches, the re-send counts."""
        return [self.keys.dispatch, self.keys.active_batches, self.keys.dispatch_resends]

    def take(self, chunk: Chunk) -> bool:
        """Take the chunk over for this thread; False if there is nothing to dispatch."""
        taken = self._scripts[dispatch_scripts.TAKE](keys=self._keys(),
                                             args=[chunk.member, chunk.batch_id, time.time() + self.lease_seconds])
        if taken:
            with self._lock:
                self._held[threading.get_ident()] = chunk.member
        return bool(taken)

    def done(self, chunk: Chunk) -> None:
        """Every item message of the chunk is sent."""
        self.forget()
        pipe = self.r.pipeline(transaction=True)
        pipe.zrem(self.keys.dispatch, chunk.member)
        pipe.hdel(self.keys.dispatch_resends, chunk.member)
        pipe.execute()

    def forget(self) -> None:
        """Stop renewing this thread's chunk (it failed: left to lapse and be re-sent)."""
        with self._lock:
            self._held.pop(threading.get_ident(), None)

    def renew(self) -> int:
        """Push the deadlines of the chunks this process is sending (called by the heartbeat)."""
        with self._lock:
            members = list(self._held.values())
        if not members:
            return 0
        expiry = time.time() + self.lease_seconds
        return int(self.r.zadd(self.keys.dispatch, dict.fromkeys(members, expiry), xx=True, ch=True) or 0)

    def reap(self, limit: int = 100) -> list[Chunk]:
        """Take back up to ``limit`` chunks whose deadline passed; the caller re-sends their messages."""
        self.renew()
        now = time.time()
        lapsed: list[str] = self.r.zrangebyscore(self.keys.dispatch, "-inf", now, start=0, num=limit)  # type: ignore[assignment]
        out: list[Chunk] = []
        for member in lapsed:
            chunk = Chunk.parse(member)
            if self._scripts[dispatch_scripts.REAP](keys=self._keys(),
                                            args=[member, chunk.batch_id, now, self.lease_seconds, self.ttl]):
                out.append(chunk)
        return out
