"""The API's part in webhooks: the URL check at submit, and ``job.completed`` for a job that the
API itself ends (canceling it while queued). Deliveries are queued, never made here."""

from __future__ import annotations

import logging

from api.deps import AppState
from api.errors import APIError
from textgen_core.webhooks.events import AsyncWebhookEmitter, job_payload
from textgen_core.webhooks.records import url_digest
from textgen_core.webhooks.urls import UnsafeWebhookURL, resolve_async

log = logging.getLogger(__name__)


def install_webhooks(state: AppState) -> None:
    """Give the app its emitter and hook ``job.completed`` to the store's terminal transitions."""
    emitter = AsyncWebhookEmitter(state.redis, state.keys, state.queue.enqueue_webhook)
    state.webhooks = emitter

    async def completed(job_id: str) -> None:
        owner = await state.redis.hget(state.keys.job(job_id), "owner")
        job = await state.store.get(job_id, owner) if owner else None
        if job is not None and job.webhook:
            await emitter.emit(owner=job.owner, url=job.webhook, event="job.completed", object_id=job.id,
                               payload=job_payload(job), events_filter=job.webhook_events_filter)

    state.store.on_terminal = completed


async def check_webhook_url(state: AppState, owner: str, url: str) -> None:
    """422 naming ``webhook`` for a URL that will not be delivered to (DNS resolved off the loop)."""
    try:
        await resolve_async(url, state.settings.webhook_allow_private)
    except UnsafeWebhookURL as exc:
        raise APIError(422, f"webhook: {exc}", code="webhook_url_refused", param="webhook") from exc
    if await state.redis.exists(state.keys.webhook_disabled(owner, url_digest(url))):
        raise APIError(422, "webhook: this URL answered 410 Gone, so deliveries to it are disabled for this "
                       "API key", code="webhook_disabled", param="webhook")
