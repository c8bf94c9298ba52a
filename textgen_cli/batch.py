"""``textgen batch``: submit a CSV or JSONL file as a batch, follow it with a progress bar,
and write the results; ``--id`` re-attaches to a batch that is already running."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

err = Console(stderr=True)
TERMINAL = ("completed", "failed", "canceled", "cancelled")


def _fail(resp: httpx.Response) -> typer.Exit:
    try:
        message = resp.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = resp.text
    err.print(f"[red]{resp.status_code}[/] {message}")
    return typer.Exit(1)


def _submit(client: httpx.Client, path: Path, fields: dict[str, str]) -> dict:
    if not path.is_file():
        err.print(f"[red]no such file:[/] {path}")
        raise typer.Exit(2)
    with path.open("rb") as handle:
        resp = client.post("/v1/batches", files={"file": (path.name, handle)}, data=fields)
    if resp.status_code != 202:
        raise _fail(resp)
    return resp.json()


def _rate_and_eta(batch: dict) -> str:
    rate, eta = batch.get("items_per_second"), batch.get("eta_seconds")
    parts = [f"{rate:.2f} items/s" if rate else "-- items/s"]
    parts.append(f"ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}" if eta is not None else "ETA --")
    counts = batch["request_counts"]
    if counts["failed"]:
        parts.append(f"[red]{counts['failed']} failed[/]")
    return "  ".join(parts)


def _follow(client: httpx.Client, batch: dict, poll: float) -> dict:
    counts = batch["request_counts"]
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[info]}"), console=err) as progress:
        task = progress.add_task(batch["id"], total=counts["total"], info="")
        while True:
            counts = batch["request_counts"]
            done = counts["completed"] + counts["failed"] + counts["canceled"]
            progress.update(task, completed=done, info=f"{batch['status']}  {_rate_and_eta(batch)}")
            if batch["status"] in TERMINAL:
                return batch
            time.sleep(poll)
            resp = client.get(f"/v1/batches/{batch['id']}")
            if resp.status_code != 200:
                raise _fail(resp)
            batch = resp.json()


def _download(client: httpx.Client, batch_id: str, output: Path) -> None:
    fmt = "csv" if output.suffix.lower() == ".csv" else "jsonl"
    with client.stream("GET", f"/v1/batches/{batch_id}/results", params={"format": fmt}) as resp:
        if resp.status_code != 200:
            resp.read()
            raise _fail(resp)
        with output.open("wb") as handle:
            for chunk in resp.iter_bytes():
                handle.write(chunk)


def run_batch(
    url: str,
    api_key: str,
    input_file: Path | None,
    output: Path,
    batch_id: str | None,
    fields: dict[str, str],
    poll: float,
) -> None:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {api_key}"}, timeout=300) as client:
        if batch_id:
            resp = client.get(f"/v1/batches/{batch_id}")
            if resp.status_code != 200:
                raise _fail(resp)
            batch = resp.json()
        elif input_file is not None:
            batch = _submit(client, input_file, fields)
            err.print(f"submitted [bold]{batch['id']}[/] ({batch['request_counts']['total']} items)")
        else:
            err.print("[red]give an input file, or --id to re-attach to a batch[/]")
            raise typer.Exit(2)
        try:
            batch = _follow(client, batch, poll)
        except KeyboardInterrupt:
            err.print(f"\nthe batch keeps running; re-attach with:\n  textgen batch --id {batch['id']} -o {output}")
            raise typer.Exit(130) from None
        _download(client, batch["id"], output)
    counts = batch["request_counts"]
    err.print(f"{batch['status']}: {counts['completed']} completed, {counts['failed']} failed, "
              f"{counts['canceled']} canceled -> {output}")
    if batch["status"] not in ("completed",):
        raise typer.Exit(1)


Mode = Annotated[str | None, typer.Option(help="general | recommendation | support | ecommerce")]
Output = Annotated[Path, typer.Option("--output", "-o", help="Where to write results (.csv or .jsonl).")]
BatchId = Annotated[str | None, typer.Option("--id", help="Re-attach to this batch instead of submitting.")]
