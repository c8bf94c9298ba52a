"""The result cache: the text of a deterministic job, kept so that an identical request is answered
without a GPU step, and never with a text that another setup would not have produced.

Only deterministic requests are cached: greedy (temperature 0) or seeded ones. The key has two parts:

* the *request digest*, which the API derives at submit from everything it knows that decides the
  text (API key, model id, mode and template version, the full rendered input with the conversation
  history, the history budget, every sampling parameter) and records with the job with the TTL to
  use; a job without one is never read from or written to the cache (``cache: false``, sampled
  without a seed, cache turned off);
* the *profile* of the worker that runs it: the weights' identity (file fingerprint or hub
  revision), device and dtype. A worker reads and writes entries under its own profile only, so a
  result produced under ``--dtype bfloat16`` is never served to a float32 worker's job. The API
  answers at submit time only when every live worker of the model reports one and the same
  profile; otherwise the job is queued and the worker that claims it looks the entry up itself.

Single flight: the first worker to miss takes a short-lived *lead* on the key; identical jobs
claimed meanwhile wait for its entry (bounded by ``cache_wait_seconds``) instead of generating, and
generate themselves if the leader fails, is canceled or takes too long.

Entries are per API key, so one key never learns (from ``cached: true`` or timing) what another asked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio as aioredis

from textgen_core import metrics
from textgen_core.jobs import ChatMessage, JobRecord, SamplingParams, turn_messages
from textgen_core.keys import Keys
from textgen_core.modes import TEMPLATE_VERSION, build_messages
from textgen_core.scripts import Scripts
from textgen_core.scripts import cache as cache_scripts
from textgen_core.store import Call

if TYPE_CHECKING:
    from textgen_core.engine.loader import LoadedModel

log = logging.getLogger(__name__)

# Bump when what goes into the key or the entry changes: every older entry then misses.
KEY_VERSION = 1
# Only complete texts are kept; canceled, timed-out and failed jobs never fill the cache.
CACHEABLE_FINISH = frozenset({"stop", "length"})
STATS_TTL_SECONDS = 30 * 24 * 3600
POLL_SECONDS = (0.02, 0.2)  # single-flight poll: first and longest interval
# A job that may hand itself back (a batch item) waits this long in place for a running identical job,
# then returns to the back of its queue instead of holding a worker slot.
HAND_BACK_AFTER_SECONDS = 0.5


def deterministic(params: SamplingParams) -> bool:
    """Greedy or seeded: the same input gives the same text (sampled without a seed never does)."""
    return params.greedy or params.seed is not None


def _sha256(material: object) -> str:
    text = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def request_digest(job: JobRecord, history_max_tokens: int) -> str:
    """Digest of everything the API knows that decides ``job``'s text (the worker adds its profile)."""
    if job.input.raw:
        rendered: dict[str, Any] = {"raw": job.input.prompt or ""}
    else:
        rendered = {"messages": build_messages(
            job.mode,
            prompt=job.input.prompt,
            messages=[m.model_dump() for m in job.input.messages] if job.input.messages else None,
            history=[m.model_dump() for m in job.history],
        )}
    return _sha256({
        "v": KEY_VERSION, "owner": job.owner, "model": job.model, "mode": job.mode.value,
        "template": TEMPLATE_VERSION, "history_max_tokens": history_max_tokens, "input": rendered,
        "params": job.params.model_dump(mode="json"),
    })


def entry_digest(request: str, profile: str) -> str:
    """The entry's key: the request digest under one worker profile."""
    return _sha256([request, profile])


def weights_identity(loaded: LoadedModel, cache_dir: Path) -> str:
    """What identifies the weights a worker loaded: the packaged file's fingerprint, a local folder's
    file sizes and times, or the hub commit."""
    spec = loaded.spec
    if spec.source == "packaged":
        from textgen_core.engine.loader import converted_dir

        return converted_dir(spec, cache_dir).name
    if spec.source == "local":
        folder = Path(spec.location).expanduser()
        files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file())
        return f"{spec.id}-{_sha256(files)[:16]}"
    config = getattr(loaded.model, "config", None)  # None where vLLM holds the weights
    commit = getattr(config, "_commit_hash", None) or spec.revision or "unpinned"
    return f"{spec.location}@{commit}"


def model_profile(loaded: LoadedModel, cache_dir: Path) -> str:
    """Weights (and their int8 form), device, dtype and engine of one loaded model: the worker's half
    of every cache key."""
    device = loaded.device
    if device.startswith("cuda"):
        import torch

        device = f"cuda:{torch.cuda.get_device_name(torch.device(device))}"
    precision = loaded.dtype if loaded.weights == "full" else f"{loaded.dtype}+{loaded.weights}"
    return f"{weights_identity(loaded, cache_dir)}|{device}|{precision}|{loaded.engine}"


@dataclass(frozen=True)
class CacheEntry:
    """A cached result: the text, why it ended, the usage as generated, and the job that made it."""

    output: str
    finish_reason: str
    usage: dict[str, int]
    job_id: str
    created_at: float

    def encode(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def decode(cls, raw: str | None) -> CacheEntry | None:
        if not raw:
            return None
        try:
            return cls(**json.loads(raw))
        except (ValueError, TypeError):
            log.warning("unreadable cache entry ignored")
            return None


def hit_outcome(job: JobRecord, entry: CacheEntry, seconds: float) -> tuple[dict[str, Any], list[ChatMessage]]:
    """The fields a job answered from ``entry`` finishes with, and what it adds to its conversation."""
    fields: dict[str, Any] = {"output": entry.output, "finish_reason": entry.finish_reason, "usage": entry.usage,
                              "cached": "1", "cache_hit": repr(round(seconds, 6))}
    return fields, turn_messages(job, entry.output)


STATS_FIELDS = ("hits", "misses", "bytes_written")


@dataclass(frozen=True)
class ResultCacheCore:
    """What both shells share: key names, the pipelined writes, the script call, reply parsing (no I/O)."""

    keys: Keys

    def entry_keys(self, digests: list[str]) -> list[str]:
        return [self.keys.cache_entry(d) for d in digests]

    @staticmethod
    def entries(raw: list[str | None]) -> list[CacheEntry | None]:
        return [CacheEntry.decode(value) for value in raw]

    def queue_stats(self, pipe: Any, hits: int, misses: int, written: int) -> None:
        for field, value in zip(STATS_FIELDS, (hits, misses, written), strict=True):
            if value:
                pipe.hincrby(self.keys.cache_stats, field, value)
        pipe.expire(self.keys.cache_stats, STATS_TTL_SECONDS)

    @staticmethod
    def stats(raw: dict[str, str]) -> dict[str, int]:
        return {name: int(raw.get(name) or 0) for name in STATS_FIELDS}

    def queue_store(self, pipe: Any, job: JobRecord, digest: str, entry: CacheEntry) -> int:
        """Queue the entry and its miss on ``pipe``; returns the bytes written."""
        data = entry.encode()
        pipe.set(self.keys.cache_entry(digest), data, ex=job.cache_ttl or 3600)
        self.queue_stats(pipe, 0, 1, len(data.encode()))
        return len(data.encode())

    def release_lead(self, digest: str, job_id: str) -> Call:
        return Call(cache_scripts.RELEASE_LEAD, [self.keys.cache_lead(digest)], [job_id])


class HandBack:
    """Give the claimed job back to its queue: an identical job is generating its entry right now."""


HAND_BACK = HandBack()


@dataclass
class Flight:
    """A cacheable job that generates: the leader of its key, or a follower that stopped waiting."""

    cache: ResultCache
    job: JobRecord
    digest: str
    leader: bool

    def complete(self, finish_reason: str | None, output: str, usage: dict[str, int]) -> None:
        """Keep a complete result (finish reason stop or length) and give the lead up; never raises."""
        try:
            if finish_reason in CACHEABLE_FINISH:
                self.cache.store(self.job, self.digest, CacheEntry(output, finish_reason or "", usage, self.job.id,
                                                                   time.time()))
        except redis.RedisError as exc:
            log.warning("cache entry of %s not written: %s", self.job.id, exc)
        self.abandon()

    def abandon(self) -> None:
        """Give the lead up without an entry: waiting followers then generate themselves."""
        if not self.leader:
            return
        try:
            self.cache.release_lead(self.digest, self.job.id)
        except redis.RedisError as exc:
            log.warning("cache lead of %s not released (it lapses by TTL): %s", self.job.id, exc)


@dataclass
class ResultCache:
    """Synchronous shell (workers): the methods of :class:`AsyncResultCache`, and ``begin``, the worker's
    single flight (look a claimed job up under this worker's profile, lead or follow its key), which
    waits by blocking and so has no asyncio twin: the API never generates, so it never leads a key."""

    client: redis.Redis  # the cache's Redis (the main one unless settings.cache_redis_url)
    keys: Keys
    profiles: dict[str, str]  # model id -> this worker's profile
    wait_seconds: float
    lead_ttl: int

    SOURCE = "worker"  # the ``source`` label of the hits this shell counts

    def __post_init__(self) -> None:
        self.core = ResultCacheCore(self.keys)
        self._scripts = Scripts(self.client, cache_scripts.RELEASE_LEAD)

    def begin(self, job: JobRecord, cancel_requested: Callable[[], bool], running: Callable[[str], bool],
              may_hand_back: bool = False) -> CacheEntry | Flight | HandBack | None:
        """An entry to answer ``job`` from the cache; a flight to generate it; None when the job is not
        cached here. While an identical job (the lead holder, ``running(job_id)``) is generating, waits
        for its entry, at most ``wait_seconds``; or, with ``may_hand_back``, says to hand the job back to
        its queue after ``HAND_BACK_AFTER_SECONDS`` (it then meets the entry when it comes round again)."""
        profile = self.profiles.get(job.model)
        if not job.cache_key or profile is None:
            return None
        digest = entry_digest(job.cache_key, profile)
        entry_key, lead_key = self.keys.cache_entry(digest), self.keys.cache_lead(digest)
        started = time.monotonic()
        deadline = started + self.wait_seconds
        pause = POLL_SECONDS[0]
        try:
            while True:
                entry = CacheEntry.decode(self.client.get(entry_key))  # type: ignore[arg-type]
                if entry is not None:
                    return entry
                holder = self.client.get(lead_key)
                # A redelivered attempt of the leader itself takes its lead back.
                if holder in (None, job.id) and self._take_lead(lead_key, job.id, holder):
                    entry = CacheEntry.decode(self.client.get(entry_key))  # type: ignore[arg-type]
                    if entry is not None:  # the leader before us finished in between
                        self.release_lead(digest, job.id)
                        return entry
                    return Flight(self, job, digest, leader=True)
                if holder and holder != job.id and not running(str(holder)):
                    self.release_lead(digest, str(holder))  # its job ended or went back to the queue
                    continue
                if time.monotonic() >= deadline or cancel_requested():
                    log.info("job %s stops waiting for an identical job and generates", job.id)
                    return Flight(self, job, digest, leader=False)
                if may_hand_back and time.monotonic() - started >= HAND_BACK_AFTER_SECONDS:
                    return HAND_BACK
                time.sleep(pause)
                pause = min(pause * 2, POLL_SECONDS[1])
        except redis.RedisError as exc:  # the cache is an optimisation: without it, generate
            log.warning("cache unavailable for %s: %s", job.id, exc)
            return None

    def _take_lead(self, lead_key: str, job_id: str, holder: object) -> bool:
        if holder == job_id:
            return bool(self.client.expire(lead_key, self.lead_ttl))
        return bool(self.client.set(lead_key, job_id, nx=True, ex=self.lead_ttl))

    def lookup(self, digests: list[str]) -> list[CacheEntry | None]:
        """The entries of ``digests`` (None where there is none), in one round trip."""
        if not digests:
            return []
        return self.core.entries(self.client.mget(self.core.entry_keys(digests)))  # type: ignore[arg-type]

    def store(self, job: JobRecord, digest: str, entry: CacheEntry) -> None:
        """Keep ``entry`` for the job's TTL and count the miss that made it."""
        pipe = self.client.pipeline(transaction=False)
        written = self.core.queue_store(pipe, job, digest, entry)
        pipe.execute()
        metrics.CACHE_MISSES.labels(job.model).inc()
        metrics.CACHE_BYTES.labels(job.model).inc(written)

    def release_lead(self, digest: str, job_id: str) -> None:
        """Give the lead on ``digest`` up if ``job_id`` still holds it."""
        call = self.core.release_lead(digest, job_id)
        self._scripts[call.script](keys=call.keys, args=call.args)

    def count_hits(self, model: str, hits: int = 1) -> None:
        """Count ``hits`` answers from the cache; a Redis error only loses the count (logged)."""
        metrics.CACHE_HITS.labels(model, self.SOURCE).inc(hits)
        try:
            pipe = self.client.pipeline(transaction=False)
            self.core.queue_stats(pipe, hits, 0, 0)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("cache stats not counted: %s", exc)

    def stats(self) -> dict[str, int]:
        """Hits, misses and bytes written, for ``/v1/cache/stats``."""
        return self.core.stats(self.client.hgetall(self.keys.cache_stats))  # type: ignore[arg-type]


class AsyncResultCache:
    """Asyncio shell (the API): read entries for jobs about to be stored, count hits, read the stats."""

    SOURCE = "api"

    def __init__(self, client: aioredis.Redis, keys: Keys):
        self.client = client
        self.keys = keys
        self.core = ResultCacheCore(keys)
        self._scripts = Scripts(client, cache_scripts.RELEASE_LEAD)

    async def lookup(self, digests: list[str]) -> list[CacheEntry | None]:
        """As :meth:`ResultCache.lookup`."""
        if not digests:
            return []
        return self.core.entries(await self.client.mget(self.core.entry_keys(digests)))

    async def store(self, job: JobRecord, digest: str, entry: CacheEntry) -> None:
        """As :meth:`ResultCache.store`."""
        async with self.client.pipeline(transaction=False) as pipe:
            written = self.core.queue_store(pipe, job, digest, entry)
            await pipe.execute()
        metrics.CACHE_MISSES.labels(job.model).inc()
        metrics.CACHE_BYTES.labels(job.model).inc(written)

    async def release_lead(self, digest: str, job_id: str) -> None:
        """As :meth:`ResultCache.release_lead`."""
        call = self.core.release_lead(digest, job_id)
        await self._scripts[call.script](keys=call.keys, args=call.args)

    async def count_hits(self, model: str, hits: int = 1) -> None:
        """As :meth:`ResultCache.count_hits`."""
        metrics.CACHE_HITS.labels(model, self.SOURCE).inc(hits)
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                self.core.queue_stats(pipe, hits, 0, 0)
                await pipe.execute()
        except redis.RedisError as exc:
            log.warning("cache stats not counted: %s", exc)

    async def stats(self) -> dict[str, int]:
        """As :meth:`ResultCache.stats`."""
        return self.core.stats(await self.client.hgetall(self.keys.cache_stats))
