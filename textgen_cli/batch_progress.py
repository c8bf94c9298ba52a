"""The progress line of ``textgen batch``, made to read whole at 80 columns.

``12/40 30% 1.25 items/s ETA 0:00:22 0:00:09 2 failed`` beside a bar that takes what room is
left. The batch id is printed once above it, not in it. The rate is rich's estimate over the
last minute of updates (items finish in groups, so a per-poll rate saw-tooths), seeded with the
server's own rate on re-attach; elapsed counts from the batch's ``created_at``, so it does not
restart when you re-attach.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TaskProgressColumn
from rich.text import Text

SPEED_WINDOW_SECONDS = 60.0


def clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def rate(task: Task) -> float | None:
    return task.speed or task.fields.get("server_rate") or None


class RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = rate(task)
        return Text(f"{speed:.2f} items/s" if speed else "-- items/s", style="progress.data.speed")


class EtaColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed, total = rate(task), task.total or 0
        if task.fields.get("ended_at"):
            return Text("done", style="progress.remaining")
        if not speed:
            return Text("ETA --", style="progress.remaining")
        return Text(f"ETA {clock((total - task.completed) / speed)}", style="progress.remaining")


class SinceCreatedColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        end = task.fields.get("ended_at") or time.time()
        return Text(clock(end - task.fields["created_at"]), style="progress.elapsed")


class FailuresColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        failed = task.fields.get("failed", 0)
        return Text(f"{failed} failed", style="red") if failed else Text("")


def batch_progress(console: Console) -> Progress:
    """A transient display: when it stops, :func:`summary` prints the one line that stays."""
    return Progress(BarColumn(bar_width=None), MofNCompleteColumn(), TaskProgressColumn(), RateColumn(), EtaColumn(),
                    SinceCreatedColumn(), FailuresColumn(), console=console, transient=True,
                    speed_estimate_period=SPEED_WINDOW_SECONDS)


def fields(batch: dict[str, Any]) -> dict[str, Any]:
    """The task fields that one batch record sets."""
    counts = batch["request_counts"]
    ended = batch.get("finished_at") if batch["status"] in TERMINAL else None
    return {"created_at": batch["created_at"], "failed": counts["failed"], "ended_at": ended,
            "server_rate": batch.get("items_per_second")}


def done_count(batch: dict[str, Any]) -> int:
    counts = batch["request_counts"]
    return int(counts["completed"] + counts["failed"] + counts["canceled"] + counts.get("expired", 0))


def summary(progress: Progress, task_id: Any, status: str) -> str:
    """The display's line as plain text, prefixed with the batch's status (printed once at the end)."""
    task = progress.tasks[task_id]
    parts = [column.render(task) for column in progress.columns[1:]]
    return " ".join([status, *(part.plain.strip() for part in parts if isinstance(part, Text) and part.plain.strip())])


TERMINAL = ("completed", "failed", "canceled", "cancelled", "expired")
