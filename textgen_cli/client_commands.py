"""Client commands that read the platform: ``textgen models``, ``textgen jobs``, ``textgen status``.

Each is a thin view of an existing API endpoint (``/v1/models``, ``/v1/jobs``, ``/ready``,
``/metrics``, ``/openapi.json``), so what they print is what any client of the API sees."""

from __future__ import annotations

import json
import time
from importlib.metadata import version
from typing import Annotated, Any

import httpx
import typer
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from textgen_cli.client import DEFAULT_URL, ApiKey, ApiUrl, api_client, get_json, json_body

out = Console()
AsJson = Annotated[bool, typer.Option("--json", help="Print the API's JSON instead of a table.")]


def models(url: ApiUrl = DEFAULT_URL, api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """List the models the API serves and the workers that have each loaded."""
    with api_client(url, api_key) as client:
        cards = get_json(client, "/v1/models")["data"]
    if as_json:
        print(json.dumps(cards, indent=2))
        return
    table = Table("model", "workers", "device", "dtype", "max batch", "context", box=None)
    for card in cards:
        table.add_row(card["id"], ", ".join(card["workers"]) or "[yellow]none loaded[/]", card["device"] or "-",
                      card["dtype"] or "-", str(card["max_batch"]), str(card["context_length"] or "-"))
    out.print(table)


def _age(created_at: float) -> str:
    seconds = max(0, int(time.time() - created_at))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _preview(job: dict[str, Any], width: int = 40) -> str:
    given = job["input"].get("prompt") or next(
        (m["content"] for m in reversed(job["input"].get("messages") or []) if m.get("role") == "user"), "")
    text = " ".join(str(given).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def jobs(
    url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = None,
    limit: Annotated[int, typer.Option(help="Jobs to show (1-100).")] = 20,
    status: Annotated[str | None, typer.Option(help="queued | running | succeeded | failed | canceled")] = None,
    lane: Annotated[str | None, typer.Option(help="interactive | bulk (batch items)")] = None,
    batch: Annotated[str | None, typer.Option("--batch", help="Only the items of this batch id.")] = None,
    after: Annotated[str | None, typer.Option(help="Continue after this job id (the hint printed below).")] = None,
    as_json: AsJson = False,
) -> None:
    """List your jobs, newest first (GET /v1/jobs)."""
    with api_client(url, api_key) as client:
        page = get_json(client, "/v1/jobs", limit=limit, status=status, lane=lane, batch_id=batch, after=after)
    if as_json:
        print(json.dumps(page, indent=2))
        return
    table = Table(box=None)
    # Whole, to paste into other commands (job and response ids differ in length).
    table.add_column("id", no_wrap=True, min_width=max((len(job["id"]) for job in page["data"]), default=2))
    for name, width in (("status", 9), ("lane", 11), ("created", 7)):
        table.add_column(name, no_wrap=True, min_width=width)
    table.add_column("prompt", no_wrap=True, overflow="ellipsis")
    for job in page["data"]:
        table.add_row(job["id"], job["status"], job["lane"], _age(job["timings"]["created_at"]), _preview(job))
    out.print(table if page["data"] else "no jobs")
    if page["has_more"]:
        out.print(f"more: .venv/bin/textgen jobs --after {page['last_id']}", highlight=False)


def _queue_depths(client: httpx.Client) -> list[tuple[str, str, int]]:
    """The queue depths from ``/metrics``; none where it cannot be read (metrics are an extra)."""
    try:
        text = client.get("/metrics").text
        return [(s.labels["model"], s.labels["lane"], int(s.value))
                for family in text_string_to_metric_families(text) if family.name == "textgen_queue_depth"
                for s in family.samples]
    except (httpx.HTTPError, ValueError, KeyError):
        return []


def status(url: ApiUrl = DEFAULT_URL, api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """The platform at a glance: readiness, workers, queue depths, models and versions."""
    with api_client(url, api_key) as client:
        ready = json_body(client, client.get("/ready"))  # 503 while not ready: its body still says why
        cards = get_json(client, "/v1/models")["data"]
        api_version = get_json(client, "/openapi.json")["info"]["version"]
        queues = _queue_depths(client)
    report = {"status": ready["status"], "redis": ready["redis"], "workers": ready["workers"],
              "models": [{"id": c["id"], "workers": c["workers"], "device": c["device"]} for c in cards],
              "queues": [{"model": m, "lane": lane, "depth": depth} for m, lane, depth in queues],
              "versions": {"api": api_version, "cli": version("textgen")}}
    if as_json:
        print(json.dumps(report, indent=2))
        return
    colour = "green" if report["status"] == "ready" else "yellow"
    out.print(f"[{colour}]{report['status']}[/] at {url}  (Redis {'up' if report['redis'] else '[red]down[/]'}; "
              f"API {api_version}, CLI {report['versions']['cli']})", highlight=False)
    out.print(f"workers: {', '.join(report['workers']) or '[yellow]none[/]'}", highlight=False)
    table = Table("model", "loaded on", "interactive queue", "bulk queue", box=None)
    depth = {(m, lane): d for m, lane, d in queues}
    for card in cards:
        table.add_row(card["id"], ", ".join(card["workers"]) or "[yellow]no worker[/]",
                      str(depth.get((card["id"], "interactive"), "-")), str(depth.get((card["id"], "bulk"), "-")))
    out.print(table)


def register(app: typer.Typer) -> None:
    for command in (models, jobs, status):
        app.command()(command)
