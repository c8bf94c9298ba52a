"""The API's part in webhooks: the URL check at submit, and the completion events of what the
API itself ends (a job canceled while queued; a batch whose last items a cancel ended).
Deliveries are queued, never made here."""

from __future__ import annotations

import logging

from api.app.errors import APIError
from api.app.state import AppState, batch_store
from textgen_core.webhook_events.emitter import AsyncWebhookEmitter
from textgen_core.webhook_events.outbox import AsyncOutbox
from textgen_core.webhooks.records import url_digest
from textgen_core.webhooks.urls import UnsafeWebhookURL, resolve_async

log = logging.getLogger(__name__)


def install_webhooks(state: AppState) -> None:
    """Give the app its emitter and outbox, and hook the outbox to the store's terminal transitions."""
    emitter = AsyncWebhookEmitter(state.redis, state.keys, state.queue.enqueue_webhook)
    state.webhooks = emitter
    outbox = AsyncOutbox(state.redis, state.keys, emitter, state.store, batch_store(state),
                         lease_seconds=state.settings.webhook_outbox_grace_seconds)
    state.webhook_outbox = outbox

    async def completed(job_id: str) -> None:
        await outbox.job_ended(job_id)

    state.store.on_terminal = completed
    settings = state.settings
    if settings.webhook_allow_loopback and not settings.webhook_allow_private:
        log.warning("webhooks to loopback receivers (localhost) are allowed because TEXTGEN_ENV=%s; other private "
                    "addresses need TEXTGEN_WEBHOOK_ALLOW_PRIVATE=true", settings.env)


async def flush_batch_completed(state: AppState, batch_id: str) -> None:
    """Queue ``batch.completed`` if the API's own call just settled the batch (a cancel)."""
    if state.webhook_outbox is None:
        return
    try:
        await state.webhook_outbox.flush("batch.completed", batch_id)
    except Exception:  # the sweeper queues it later; the cancel itself stands
        log.exception("could not queue batch.completed for %s", batch_id)


async def check_webhook_url(state: AppState, owner: str, url: str) -> None:
    """422 naming ``webhook`` for a URL that will not be delivered to (DNS resolved off the loop)."""
    try:
        await resolve_async(url, state.settings.webhook_allow_private, state.settings.webhook_allow_loopback)
    except UnsafeWebhookURL as exc:
        raise APIError(422, f"webhook: {exc}", code="webhook_url_refused", param="webhook") from exc
    if await state.redis.exists(state.keys.webhook_disabled(owner, url_digest(url))):
        raise APIError(422, "webhook: this URL answered 410 Gone, so deliveries to it are disabled for this "
                       "API key", code="webhook_disabled", param="webhook")
