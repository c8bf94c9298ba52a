"""``textgen batch``: submit a CSV or JSONL file as a batch, follow it with a progress bar,
and write the results; ``--id`` re-attaches to a batch that is already running."""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console

from textgen_cli.batch_progress import TERMINAL, batch_progress, done_count, fields, summary

err = Console(stderr=True)


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


def _follow(client: httpx.Client, batch: dict, poll: float) -> dict:
    """Show progress until the batch ends; on Ctrl-C, print the last line once and re-raise."""
    progress = batch_progress(err)
    task = progress.add_task("batch", total=batch["request_counts"]["total"], completed=done_count(batch),
                             **fields(batch))
    try:
        # Off a terminal (a log, a pipe) nothing redraws: only the last line is written, below.
        with progress if err.is_terminal else nullcontext():
            while True:
                progress.update(task, completed=done_count(batch), **fields(batch))
                if batch["status"] in TERMINAL:
                    return batch
                time.sleep(poll)
                resp = client.get(f"/v1/batches/{batch['id']}")
                if resp.status_code != 200:
                    raise _fail(resp)
                batch = resp.json()
    finally:
        err.print(summary(progress, task, batch["status"]), highlight=False)


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
            err.print(f"following [bold]{batch['id']}[/] ({batch['request_counts']['total']} items)")
        elif input_file is not None:
            batch = _submit(client, input_file, fields)
            err.print(f"submitted [bold]{batch['id']}[/] ({batch['request_counts']['total']} items)")
        else:
            err.print("[red]give an input file, or --id to re-attach to a batch[/]")
            raise typer.Exit(2)
        try:
            batch = _follow(client, batch, poll)
        except KeyboardInterrupt:
            err.print("the batch keeps running; re-attach with:\n"
                      f"  .venv/bin/textgen batch --id {batch['id']} -o {output}", highlight=False)
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
