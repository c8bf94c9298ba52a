"""The app state: every long-lived part the routes reach, built once by ``api.main`` at start."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from api.app.events import EventHub
from api.app.fleet import Fleet
from api.app.prompt_budget import PromptBudget
from api.app.queueing import JobQueue
from api.app.ratelimit import RateLimits
from api.cache.answer import CacheAnswers
from textgen_core.batch_store import AsyncBatchStore
from textgen_core.keys import Keys
from textgen_core.settings import Settings
from textgen_core.store import AsyncJobStore
from textgen_core.webhook_events.emitter import AsyncWebhookEmitter
from textgen_core.webhook_events.outbox import AsyncOutbox


@dataclass
class AppState:
    settings: Settings
    redis: aioredis.Redis
    keys: Keys
    store: AsyncJobStore
    hub: EventHub
    queue: JobQueue
    limits: RateLimits
    prompts: PromptBudget
    fleet: Fleet
    webhooks: AsyncWebhookEmitter | None = None  # set by api.webhooks.service.install_webhooks
    webhook_outbox: AsyncOutbox | None = None  # likewise
    cache: CacheAnswers | None = None  # set by api.main (None: no result cache, as in route tests)


def batch_store(state: AppState) -> AsyncBatchStore:
    """Batches and their items (cheap to build: it holds the shared Redis client)."""
    return AsyncBatchStore(state.redis, state.keys, ttl=state.settings.job_ttl_seconds,
                           stream_ttl=state.settings.stream_ttl_seconds)
