"""Every Redis key and channel textgen uses, under one prefix.

Each key either carries a TTL or has an owner that deletes it (noted per key), so a Redis
scan after any run finds nothing of ours that lives forever. The few without a TTL are listed,
with their owners, in ``WITHOUT_TTL`` (a test scans Redis after a mixed workload against it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str

    def job(self, job_id: str) -> str:
        """Hash: the job record. TTL: settings.job_ttl_seconds, refreshed on every transition."""
        return f"{self.prefix}:job:{job_id}"

    def tokens(self, job_id: str) -> str:
        """Stream: text deltas of a job, then one ``end`` entry. TTL: settings.stream_ttl_seconds."""
        return f"{self.prefix}:job:{job_id}:tokens"

    def history(self, owner: str, conversation_id: str) -> str:
        """List: JSON chat messages of a conversation, capped. TTL: settings.history_ttl_seconds."""
        return f"{self.prefix}:history:{owner}:{conversation_id}"

    def worker(self, name: str) -> str:
        """String: a worker's heartbeat (models, device, dtype). TTL: a few heartbeats."""
        return f"{self.prefix}:worker:{name}"

    def workers_pattern(self) -> str:
        return f"{self.prefix}:worker:*"

    @property
    def leases(self) -> str:
        """Sorted set: job id -> lease expiry of jobs a worker holds (``textgen_core/leases.py``).
        Owner: the job scripts add on hold and claim and remove when the job ends or the lease is
        reaped; TTL: settings.job_ttl_seconds, refreshed on every add."""
        return f"{self.prefix}:leases"

    @property
    def dispatch(self) -> str:
        """Sorted set: ``batch|model|start|stop`` of batch chunks not yet dispatched, scored by a deadline
        (``textgen_core/dispatch.py``). Owner: the API adds a chunk as it sends its message, the dispatch
        task removes it once every item message is sent, the reaper drops chunks of ended batches; TTL:
        settings.job_ttl_seconds, refreshed on every add."""
        return f"{self.prefix}:dispatch"

    @property
    def dispatch_resends(self) -> str:
        """Hash: chunk (as in ``dispatch``) -> times the reaper re-sent it since it was last taken over,
        which spaces out its re-sends. Owner: the dispatch scripts, which delete a chunk's field with its
        entry; TTL: settings.job_ttl_seconds, refreshed on every re-send."""
        return f"{self.prefix}:dispatch:resends"

    @property
    def deadlines(self) -> str:
        """Sorted set: job id -> deadline (epoch seconds) of jobs that carry one (``textgen_core/deadlines.py``).
        Owner: the worker's deadline sweeper removes each member once its job has ended; TTL:
        settings.job_ttl_seconds, refreshed on every add."""
        return f"{self.prefix}:deadlines"

    @property
    def events_channel(self) -> str:
        """Pub/sub: job id and status on every terminal transition (wakes long-polls)."""
        return f"{self.prefix}:events"

    @property
    def cancel_channel(self) -> str:
        """Pub/sub: job ids whose cancel was requested while running (workers listen)."""
        return f"{self.prefix}:cancel"

    def webhook_secret(self, owner: str) -> str:
        """String: the generated ``whsec_`` signing secret of one API key. No TTL: it lives as long as
        the key; its owner replaces it with ``POST /v1/webhooks/secret/rotate``."""
        return f"{self.prefix}:webhook_secret:{owner}"

    def webhook_deliveries(self, object_id: str) -> str:
        """List: JSON records of webhook delivery attempts of a job or batch, capped at
        settings.webhook_deliveries_max. TTL: settings.job_ttl_seconds, refreshed on every attempt."""
        return f"{self.prefix}:webhook_deliveries:{object_id}"

    def webhook_disabled(self, owner: str, url_digest: str) -> str:
        """String: a webhook URL that answered 410 Gone, disabled for one API key.
        TTL: settings.webhook_disabled_ttl_seconds."""
        return f"{self.prefix}:webhook_disabled:{owner}:{url_digest}"

    def webhook_throttle(self, object_id: str, event: str) -> str:
        """String: set while a throttled event (``batch.progress``) was sent recently. TTL: the interval."""
        return f"{self.prefix}:webhook_throttle:{object_id}:{event}"

    @property
    def webhook_outbox(self) -> str:
        """Sorted set: ``event|object_id`` of completion events not yet queued, scored by when recorded
        (or last leased). Owner: whoever queues an entry removes it (the process that ended the object,
        else the webhook worker's sweeper). The scripts get this name in KEYS."""
        return f"{self.prefix}:webhook_outbox"

    @property
    def webhook_queue(self) -> str:
        """Celery queue (a Redis list owned by Celery) of webhook deliveries."""
        return f"{self.prefix}.webhooks"
    def openai_slots(self, owner: str) -> str:
        """Sorted set: ids of an API key's open OpenAI completion requests, scored by lease expiry.
        Owner: the request that adds a member removes it; TTL: the longest lease, refreshed on add."""
        return f"{self.prefix}:openai:slots:{owner}"
    # -- batches (bulk lane) ------------------------------------------------------------

    def batch(self, batch_id: str) -> str:
        """Hash: a batch record and its counts. TTL: settings.job_ttl_seconds.

        The job scripts learn a job's batch id only inside Lua, so they build this name there from
        ``batch("")``, which the caller passes (``textgen_core/scripts/fragments.py``: ``batch_key``).
        """
        return f"{self.prefix}:batch:{batch_id}"

    def batch_jobs(self, batch_id: str) -> str:
        """List: the item job ids of a batch, in input order. TTL: settings.job_ttl_seconds."""
        return f"{self.prefix}:batch:{batch_id}:jobs"

    @property
    def active_batches(self) -> str:
        """Set: ids of batches not yet terminal. Owner: the settle script removes a batch when it ends."""
        return f"{self.prefix}:batches:active"

    def owner_jobs(self, owner: str) -> str:
        """Sorted set: a caller's job ids by creation time (``GET /v1/jobs``; textgen_core/job_index.py).
        TTL: settings.job_ttl_seconds, refreshed on every add, which also drops members that old."""
        return f"{self.prefix}:jobs:owner:{owner}"

    def owner_batches(self, owner: str) -> str:
        """Sorted set: a caller's batch ids by creation time. TTL: settings.job_ttl_seconds, refreshed."""
        return f"{self.prefix}:batches:owner:{owner}"

    @property
    def batch_events_channel(self) -> str:
        """Pub/sub: batch id and status when a batch reaches a terminal state."""
        return f"{self.prefix}:batch-events"

    def file(self, file_id: str) -> str:
        """Hash: an uploaded file's metadata (OpenAI Files API). TTL: settings.batch_file_ttl_seconds."""
        return f"{self.prefix}:file:{file_id}"

    def file_content(self, file_id: str) -> str:
        """String: an uploaded file's bytes. TTL: settings.batch_file_ttl_seconds."""
        return f"{self.prefix}:file:{file_id}:content"

    def owner_files(self, owner: str) -> str:
        """Sorted set: a caller's uploaded file ids by upload time. TTL: settings.batch_file_ttl_seconds,
        refreshed on upload; ids whose file has expired are dropped when listed."""
        return f"{self.prefix}:files:owner:{owner}"

    def pending(self, owner: str) -> str:
        """String: count of the owner's accepted jobs not yet finished (the queued-jobs cap).
        Owner: the job scripts (``textgen_core/scripts/pending.py``): +1 on admission, -1 on the terminal
        transition, deleted at zero; TTL: job_ttl_seconds, refreshed on every admission."""
        return f"{self.prefix}:pending:{owner}"

    def pending_batch_items(self, owner: str) -> str:
        """String: count of the owner's batch items not yet finished (the batch-items cap).
        Owner and TTL: as :meth:`pending`; each item record names this counter in ``pending_key``."""
        return f"{self.prefix}:pending:{owner}:batch-items"

    def idempotency(self, owner: str, key_digest: str) -> str:
        """String: JSON of the first response to an ``Idempotency-Key``.
        TTL: settings.idempotency_ttl_seconds (a few minutes while the first request runs)."""
        return f"{self.prefix}:idem:{owner}:{key_digest}"

    # -- result cache (may live on its own Redis: settings.cache_redis_url) -------------

    def cache_entry(self, digest: str) -> str:
        """String: JSON of a deterministic job's result, keyed by the digest of everything that decides
        its text (``textgen_core/cache.py``). TTL: the job's cache TTL (settings.cache_ttl_seconds)."""
        return f"{self.prefix}:cache:{digest}"

    def cache_lead(self, digest: str) -> str:
        """String: the id of the job generating a cache entry (single flight). Owner: that job's worker
        deletes it when the job ends; TTL: settings.cache_lead_ttl_seconds, for a worker that died."""
        return f"{self.prefix}:cache:{digest}:lead"

    @property
    def cache_stats(self) -> str:
        """Hash: cache hits, misses and bytes written, for ``/v1/cache/stats``. TTL: 30 days, refreshed
        on every update."""
        return f"{self.prefix}:cache-stats"

    @property
    def rate_limit_prefix(self) -> str:
        """Prefix of the ``limits`` library's window counters. TTL: set by the library (two windows)."""
        return f"{self.prefix}:ratelimit"

    def queue(self, model_id: str, lane: str = "interactive") -> str:
        """Celery queue (a Redis list owned by Celery) for one model and lane."""
        safe = re.sub(r"[^A-Za-z0-9_-]", "_", model_id)
        return f"{self.prefix}.{safe}.{lane}"

    def without_ttl(self) -> dict[str, str]:
        """``WITHOUT_TTL`` as glob patterns of full key names."""
        return {pattern.format(prefix=self.prefix): owner for pattern, owner in WITHOUT_TTL.items()}


# Our keys that live without a TTL, as glob patterns, each with the owner that deletes it.
# Every other key of ours has a TTL; tests/integration/test_expiry.py holds Redis to this list.
WITHOUT_TTL: dict[str, str] = {
    "{prefix}:batches:active": "the batch settle script removes each batch as it ends (empty set: no key)",
    "{prefix}:webhook_secret:*": "lives as long as its API key; replaced by POST /v1/webhooks/secret/rotate",
    "{prefix}:webhook_outbox": "whoever queues a completion event removes it (empty set: no key)",
    "{prefix}.*": "Celery queues (lists): Celery pops every message it delivers (empty list: no key)",
}


GENERATE_TASK = "textgen.generate"
DELIVER_WEBHOOK_TASK = "textgen.deliver_webhook"
BATCH_ITEM_TASK = "textgen.batch_item"
BATCH_DISPATCH_TASK = "textgen.batch_dispatch"
LANES = ("interactive", "bulk")
