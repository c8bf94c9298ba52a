"""The operator's priority ceilings, enforced before anything is stored or queued."""

from __future__ import annotations

from api.app.errors import APIError
from textgen_core.priorities import ceiling_for
from textgen_core.settings import Settings


def check_priority(settings: Settings, owner: str, priority: int, param: str = "priority") -> None:
    """A 403 when this key asks for a better priority than the operator allows it: refused rather
    than lowered quietly, so a client never believes its work ranks higher than it does."""
    ceiling = ceiling_for(settings, owner)
    if priority < ceiling:
        raise APIError(403, f"priority {priority} is above this API key's ceiling; it may use {ceiling} "
                            f"to 2 (the operator sets ceilings with TEXTGEN_PRIORITY_CEILINGS)",
                       code="priority_not_allowed", param=param)
