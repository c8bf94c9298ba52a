"""``textgen batch``: submit a CSV or JSONL file as a batch, follow it with a progress bar,
and write the results; ``--id`` re-attaches to a batch that is already running."""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from textgen_cli.batch_progress import TERMINAL, batch_progress, done_count, fields, summary
from textgen_cli.client import ApiProblem, api_client, err, fail, get_json, json_body, problem, report

# How long the progress poll rides out an API that does not answer (``textgen up`` restarts a dead
# one in seconds) before it gives up and prints how to re-attach: the batch runs on regardless.
OUTAGE_SECONDS = 120.0
TRANSIENT = (502, 503, 504)  # a restarting API behind a proxy, or Redis away for a moment


def _submit(client: httpx.Client, path: Path, fields: dict[str, str]) -> dict[str, Any]:
    if not path.is_file():
        err.print(f"[red]no such file:[/] {path}")
        raise typer.Exit(2)
    with path.open("rb") as handle:
        resp = client.post("/v1/batches", files={"file": (path.name, handle)}, data=fields)
    if resp.status_code != 202:
        fail(client, resp)
    return json_body(client, resp)


def _poll(client: httpx.Client, batch_id: str, poll: float) -> dict[str, Any]:
    """The batch's record, polled again while the API is briefly away; an :class:`ApiProblem` once
    it has been away for :data:`OUTAGE_SECONDS`."""
    deadline = time.monotonic() + OUTAGE_SECONDS
    while True:
        time.sleep(poll)
        try:
            resp = client.get(f"/v1/batches/{batch_id}")
        except httpx.TransportError as exc:
            if time.monotonic() > deadline:
                raise problem(client, exc) from exc
            continue
        if resp.status_code in TRANSIENT and time.monotonic() <= deadline:
            continue
        if resp.status_code != 200:
            fail(client, resp)
        return json_body(client, resp)


def _follow(client: httpx.Client, batch: dict[str, Any], poll: float) -> dict[str, Any]:
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
                batch = _poll(client, batch["id"], poll)
    finally:
        err.print(summary(progress, task, batch["status"]), highlight=False)


def _download(client: httpx.Client, batch_id: str, output: Path) -> None:
    fmt = "csv" if output.suffix.lower() == ".csv" else "jsonl"
    with client.stream("GET", f"/v1/batches/{batch_id}/results", params={"format": fmt}) as resp:
        if resp.status_code != 200:
            resp.read()
            fail(client, resp)
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
    with api_client(url, api_key, timeout=300) as client:
        if batch_id:
            batch = get_json(client, f"/v1/batches/{batch_id}")
            err.print(f"following [bold]{batch['id']}[/] ({batch['request_counts']['total']} items)")
        elif input_file is not None:
            batch = _submit(client, input_file, fields)
            err.print(f"submitted [bold]{batch['id']}[/] ({batch['request_counts']['total']} items)")
        else:
            err.print("[red]give an input file, or --id to re-attach to a batch[/]")
            raise typer.Exit(2)
        reattach = ("the batch keeps running; re-attach with:\n"
                    f"  .venv/bin/textgen batch --id {batch['id']} -o {output}")
        try:
            batch = _follow(client, batch, poll)
            _download(client, batch["id"], output)
        except KeyboardInterrupt:
            err.print(reattach, highlight=False)
            raise typer.Exit(130) from None
        except (ApiProblem, httpx.TransportError) as exc:
            report(client, exc)
            err.print(reattach, highlight=False)
            raise typer.Exit(1) from None
    counts = batch["request_counts"]
    err.print(f"{batch['status']}: {counts['completed']} completed, {counts['failed']} failed, "
              f"{counts['canceled']} canceled, {counts.get('expired', 0)} expired -> {output}")
    if batch["status"] not in ("completed",):
        raise typer.Exit(1)


Mode = Annotated[str | None, typer.Option(help="general | recommendation | support | ecommerce")]
Output = Annotated[Path, typer.Option("--output", "-o", help="Where to write results (.csv or .jsonl).")]
BatchId = Annotated[str | None, typer.Option("--id", help="Re-attach to this batch instead of submitting.")]
