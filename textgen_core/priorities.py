"""Job priorities: 0 (highest) to 2 (lowest), ordering work inside a lane without starving any.

Three places honour a job's priority, and each ages it, so a low-priority job never waits forever:

- **The broker.** kombu's Redis transport keeps one list per queue and *priority step*, and a
  worker's BRPOP names the lists step by step, each step across all its queues (interactive and
  bulk). With one step per priority, a bulk priority-0 item would be taken before an interactive
  priority-1 job, so each lane has its own steps: interactive priorities use steps 0-2, bulk
  priorities steps 3-5 (:func:`message_priority`). Every interactive message is taken before any
  bulk one, and inside a lane the lower number first. Aging on the broker: ``textgen_core/aging.py``.
- **The engine's admission.** When more rows wait than the batch has room for, the engine takes
  them in :func:`admission_order`: by effective priority, then by arrival.
- **Aging.** A job's effective priority improves by one level per ``priority_aging_seconds`` it
  waited (:func:`effective_priority`), so a priority-2 job waits at most about two aging periods
  before it ranks with new priority-0 jobs, and is then taken before them (it arrived first).

Who may ask for what is the operator's: ``priority_ceilings`` maps an API key to the best
priority it may use, ``priority_ceiling_default`` covers every other key (:func:`ceiling_for`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from textgen_core.settings import Settings

HIGHEST = 0
LOWEST = 2
DEFAULT_PRIORITY = 1
LEVELS = tuple(range(HIGHEST, LOWEST + 1))

# Broker priority steps (``broker_transport_options["priority_steps"]``): one per lane and priority.
LANE_STEP_BASE = {"interactive": 0, "bulk": len(LEVELS)}
PRIORITY_STEPS = list(range(len(LANE_STEP_BASE) * len(LEVELS)))
# Message header: epoch seconds when the job (or batch chunk) was first put on the queue.
ENQUEUED_AT_HEADER = "enqueued_at"


def message_priority(lane: str, priority: int) -> int:
    """The Celery message priority (a broker step) of a job of ``priority`` on ``lane``."""
    return LANE_STEP_BASE.get(lane, LANE_STEP_BASE["bulk"]) + min(max(priority, HIGHEST), LOWEST)


def send_options(lane: str, priority: int, enqueued_at: float | None = None) -> dict[str, Any]:
    """``send_task`` options of a job message: its broker step, and when it was first queued (the
    ``enqueued_at`` header, read by the broker's aging and the oldest-job age gauges)."""
    return {"priority": message_priority(lane, priority),
            "headers": {ENQUEUED_AT_HEADER: time.time() if enqueued_at is None else enqueued_at}}


def lane_steps(lane: str) -> list[int]:
    """The broker steps of one lane, best first."""
    return [message_priority(lane, p) for p in LEVELS]


def effective_priority(priority: int, waited_s: float, aging_s: float) -> int:
    """``priority`` improved by one level per ``aging_s`` seconds waited, never better than 0."""
    if aging_s <= 0 or waited_s <= 0:
        return priority
    return max(HIGHEST, priority - int(waited_s // aging_s))


def admission_order(waiting: Sequence[tuple[int, float]], now: float, aging_s: float) -> list[int]:
    """Indexes of ``waiting`` (each ``(priority, arrived_at)``) in the order they should be admitted:
    lower effective priority first, and among equals the one that arrived first."""
    return sorted(range(len(waiting)),
                  key=lambda i: (effective_priority(waiting[i][0], now - waiting[i][1], aging_s), waiting[i][1]))


def ceiling_for(settings: Settings, owner: str) -> int:
    """The best (lowest) priority the API key with owner id ``owner`` may ask for."""
    for key, ceiling in settings.priority_ceilings.items():
        if settings.owner_id(key) == owner:
            return ceiling
    return settings.priority_ceiling_default
