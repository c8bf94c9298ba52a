"""``/v1/webhooks``: the secret that signs this API key's webhooks."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.app.deps import KeysDep, OwnerDep, RedisDep, SettingsDep
from api.app.errors import ERROR_RESPONSES, APIError
from textgen_core.webhooks.signing import configured_secret, get_secret_async, rotate_secret_async

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses=ERROR_RESPONSES)


class WebhookSecret(BaseModel):
    object: Literal["webhook_secret"] = "webhook_secret"
    secret: str = Field(description="whsec_ secret: verify webhook-signature with any Standard Webhooks library.")
    source: Literal["settings", "generated"]


@router.get("/secret", response_model=WebhookSecret, summary="Read the secret that signs this key's webhooks")
async def read_secret(owner: OwnerDep, redis: RedisDep, keys: KeysDep, settings: SettingsDep) -> WebhookSecret:
    secret = await get_secret_async(redis, keys, settings, owner)
    source = "settings" if configured_secret(settings, owner) else "generated"
    return WebhookSecret(secret=secret, source=source)


@router.post("/secret/rotate", response_model=WebhookSecret,
             summary="Replace the generated secret (deliveries from now on use the new one)")
async def rotate_secret(owner: OwnerDep, redis: RedisDep, keys: KeysDep, settings: SettingsDep) -> WebhookSecret:
    if configured_secret(settings, owner):
        raise APIError(409, "this key's webhook secret is set in the server settings (TEXTGEN_WEBHOOK_SECRETS)",
                       code="webhook_secret_configured")
    return WebhookSecret(secret=await rotate_secret_async(redis, keys, owner), source="generated")
