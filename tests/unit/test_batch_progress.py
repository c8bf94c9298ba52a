"""The progress line of ``textgen batch`` at 80 columns (rendered by rich into a recording console)."""

from __future__ import annotations

import io
import time

from rich.console import Console

from textgen_cli.batch_progress import batch_progress, fields, summary


def batch(done: int, failed: int = 0, status: str = "in_progress", total: int = 50_000, age: float = 3725,
          rate: float | None = 12.5) -> dict:
    return {"id": "batch_6a1f0c3e9d2b47a8b1c05e7f", "status": status, "created_at": int(time.time() - age),
            "finished_at": time.time() if status == "completed" else None, "items_per_second": rate,
            "request_counts": {"total": total, "completed": done - failed, "failed": failed, "canceled": 0}}


def render(record: dict, width: int = 80) -> list[str]:
    console = Console(file=io.StringIO(), width=width, force_terminal=True, color_system=None, record=True)
    progress = batch_progress(console)
    task = progress.add_task("batch", total=record["request_counts"]["total"], **fields(record))
    progress.update(task, completed=record["request_counts"]["completed"] + record["request_counts"]["failed"])
    console.print(progress.get_renderable())
    return [line for line in console.export_text().splitlines() if line.strip()] + [summary(progress, task,
                                                                                             record["status"])]


def test_the_line_fits_80_columns_with_count_percent_rate_eta_elapsed_and_failures() -> None:
    line, final = render(batch(12_345, failed=17))
    assert len(line) <= 80
    for part in ("12345/50000", "25%", "12.50 items/s", "ETA 0:50:12", "17 failed"):
        assert part in line, (part, line)
    # Elapsed since created_at (whole seconds, so the render may land a second later).
    assert "1:02:05" in line or "1:02:06" in line, line
    assert "batch_" not in line  # the id is printed once above, not squeezed into every frame
    assert final.startswith("in_progress 12345/50000 25% 12.50 items/s ETA") and "17 failed" in final


def test_before_any_rate_is_known_and_when_done() -> None:
    line, _ = render(batch(0, rate=None, age=5))
    assert "0/50000" in line and "-- items/s" in line and "ETA --" in line and "0:00:05" in line
    assert "failed" not in line
    _, final = render(batch(50_000, status="completed", total=50_000))
    assert final.startswith("completed 50000/50000 100%") and "done" in final


def test_elapsed_counts_from_the_batch_created_at_not_from_when_the_display_started() -> None:
    line, _ = render(batch(10, age=2 * 3600 + 5))
    assert "2:00:05" in line
