"""``/v1/conversations``: the history kept for a ``conversation_id``."""

from __future__ import annotations

from fastapi import APIRouter

from api.app.deps import OwnerDep, StoreDep
from api.app.errors import ERROR_RESPONSES, not_found
from api.jobs.schemas import Conversation, Deleted

router = APIRouter(prefix="/v1/conversations", tags=["conversations"], responses=ERROR_RESPONSES)


@router.get("/{conversation_id}", response_model=Conversation, summary="Read a conversation's history")
async def get_conversation(conversation_id: str, owner: OwnerDep, store: StoreDep) -> Conversation:
    messages = await store.history(owner, conversation_id)
    if messages is None:
        raise not_found("conversation", "conversation_id")
    return Conversation(id=conversation_id, messages=messages)


@router.delete("/{conversation_id}", response_model=Deleted, summary="Forget a conversation")
async def delete_conversation(conversation_id: str, owner: OwnerDep, store: StoreDep) -> Deleted:
    if not await store.delete_history(owner, conversation_id):
        raise not_found("conversation", "conversation_id")
    return Deleted(id=conversation_id, object="conversation")
