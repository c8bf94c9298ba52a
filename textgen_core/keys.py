"""Every Redis key and channel textgen uses, under one prefix.

Each key either carries a TTL or has an owner that deletes it (noted per key), so a Redis
scan after any run finds nothing of ours that lives forever.
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
    def events_channel(self) -> str:
        """Pub/sub: job id and status on every terminal transition (wakes long-polls)."""
        return f"{self.prefix}:events"

    @property
    def cancel_channel(self) -> str:
        """Pub/sub: job ids whose cancel was requested while running (workers listen)."""
        return f"{self.prefix}:cancel"

    def pending(self, owner: str) -> str:
        """String: count of the owner's accepted jobs not yet finished (the queued-jobs cap).
        Owner: the job scripts (``textgen_core/pending.py``): +1 on admission, -1 on the terminal
        transition, deleted at zero; TTL: job_ttl_seconds, refreshed on every admission."""
        return f"{self.prefix}:pending:{owner}"

    def idempotency(self, owner: str, key_digest: str) -> str:
        """String: JSON of the first response to an ``Idempotency-Key``.
        TTL: settings.idempotency_ttl_seconds (a few minutes while the first request runs)."""
        return f"{self.prefix}:idem:{owner}:{key_digest}"

    @property
    def rate_limit_prefix(self) -> str:
        """Prefix of the ``limits`` library's window counters. TTL: set by the library (two windows)."""
        return f"{self.prefix}:ratelimit"

    def queue(self, model_id: str, lane: str = "interactive") -> str:
        """Celery queue (a Redis list owned by Celery) for one model and lane."""
        safe = re.sub(r"[^A-Za-z0-9_-]", "_", model_id)
        return f"{self.prefix}.{safe}.{lane}"


GENERATE_TASK = "textgen.generate"
LANES = ("interactive", "bulk")
