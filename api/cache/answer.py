"""Answering deterministic jobs from the result cache at submit time, before anything is queued.

The API marks each job it accepts as cacheable or not (``textgen_core.cache``) and, for the
cacheable ones, looks their entries up under the profile that every live worker of the model
shares. A hit is stored already ``succeeded`` in one script (stream, history, events, batch
counts, ``job.completed`` webhook, as a worker's finish); everything else is queued as usual and
the worker that claims it consults the cache again under its own profile.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from api.app.fleet import Fleet
from textgen_core import metrics
from textgen_core.cache import AsyncResultCache, deterministic, entry_digest, hit_outcome, request_digest
from textgen_core.jobs import JobRecord
from textgen_core.keys import Keys
from textgen_core.settings import Settings
from textgen_core.store import AsyncJobStore

PROFILE_MEMO_SECONDS = 1.0  # heartbeats come every few seconds; one scan serves a burst of requests


@dataclass
class CacheAnswers:
    cache: AsyncResultCache
    fleet: Fleet
    settings: Settings
    store: AsyncJobStore
    keys: Keys
    _profiles: tuple[float, dict[str, str | None]] = field(default=(0.0, {}))

    def mark(self, job: JobRecord, wanted: bool) -> None:
        """Give ``job`` its request digest and TTL if it is to use the cache; leave it uncached otherwise."""
        settings = self.settings
        if settings.cache_enabled and wanted and deterministic(job.params):
            job.cache_key = request_digest(job, settings.history_max_tokens)
            job.cache_ttl = settings.cache_ttl_seconds

    async def profile(self, model: str) -> str | None:
        """The profile every live worker of ``model`` reports, or None (no worker, or they differ)."""
        at, known = self._profiles
        if time.monotonic() - at > PROFILE_MEMO_SECONDS:
            known = {}
            for model_id, workers in (await self.fleet.loaded_models()).items():
                profiles = {w.cache_profile for w in workers}
                known[model_id] = profiles.pop() if len(profiles) == 1 else None
            self._profiles = (time.monotonic(), known)
        return known.get(model)

    async def answer(self, jobs: list[JobRecord]) -> set[str]:
        """Store the jobs that hit as finished; returns their ids (the rest are for the queue)."""
        marked = [job for job in jobs if job.cache_key]
        if not marked:
            return set()
        started = time.monotonic()
        profile = await self.profile(marked[0].model)
        if profile is None:
            return set()
        entries = await self.cache.lookup([entry_digest(job.cache_key or "", profile) for job in marked])
        answered: set[str] = set()
        for job, entry in zip(marked, entries, strict=True):
            if entry is None:
                continue
            fields, turn = hit_outcome(job, entry, time.monotonic() - started)
            if await self.store.create_finished(job, fields=fields, history_append=turn,
                                                history_max_turns=self.settings.history_max_turns,
                                                history_ttl=self.settings.history_ttl_seconds):
                answered.add(job.id)
                metrics.JOBS_FINISHED.labels(job.model, self.keys.queue(job.model, job.lane), "succeeded").inc()
        if answered:
            await self.cache.count_hits(marked[0].model, len(answered))
        return answered
