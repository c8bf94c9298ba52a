"""One signing secret per API key, and the Standard Webhooks headers made with it.

A secret comes from ``settings.webhook_secrets`` when the operator set one for the key;
otherwise the first reader generates one and keeps it in Redis (``SET NX``, so the API and
every worker agree on the same secret).
"""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime

import redis
import redis.asyncio as aioredis
from standardwebhooks import Webhook

from textgen_core.keys import Keys
from textgen_core.settings import Settings


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def configured_secret(settings: Settings, owner: str) -> str | None:
    """The secret the operator configured for this owner's API key, if any."""
    return next((s for key, s in settings.webhook_secrets.items() if settings.owner_id(key) == owner), None)


def get_secret(client: redis.Redis, keys: Keys, settings: Settings, owner: str) -> str:
    configured = configured_secret(settings, owner)
    if configured:
        return configured
    key = keys.webhook_secret(owner)
    client.set(key, new_secret(), nx=True)
    return str(client.get(key))


async def get_secret_async(client: aioredis.Redis, keys: Keys, settings: Settings, owner: str) -> str:
    configured = configured_secret(settings, owner)
    if configured:
        return configured
    key = keys.webhook_secret(owner)
    await client.set(key, new_secret(), nx=True)
    return str(await client.get(key))


async def rotate_secret_async(client: aioredis.Redis, keys: Keys, owner: str) -> str:
    """Replace the generated secret; events already queued are signed with the new one."""
    secret = new_secret()
    await client.set(keys.webhook_secret(owner), secret)
    return secret


def signed_headers(secret: str, webhook_id: str, body: str, now: datetime | None = None) -> dict[str, str]:
    """``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` for one attempt."""
    moment = now or datetime.now(UTC)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": Webhook(secret).sign(webhook_id, moment, body),
        "content-type": "application/json",
    }
