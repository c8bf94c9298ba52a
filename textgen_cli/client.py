"""What the client commands share: the API URL and key options, an HTTP client, the error
envelope printed as one readable line, and following a job's token stream."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any, NoReturn

import httpx
import typer
from httpx_sse import connect_sse
from rich.console import Console

from textgen_core.settings import get_settings

err = Console(stderr=True)

DEFAULT_URL = "http://127.0.0.1:8000"
ApiUrl = Annotated[str, typer.Option("--url", envvar="TEXTGEN_URL", help="API base URL.")]
ApiKey = Annotated[str | None, typer.Option("--api-key", envvar="TEXTGEN_API_KEY",
                                            help="API key (default: the first configured key).")]


def api_client(url: str, api_key: str | None, timeout: float = 90) -> httpx.Client:
    key = api_key or get_settings().api_keys[0]
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=timeout)


def error_message(resp: httpx.Response) -> str:
    try:
        return str(resp.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return resp.text or resp.reason_phrase


def fail(resp: httpx.Response) -> NoReturn:
    err.print(f"[red]{resp.status_code}[/] {error_message(resp)}", highlight=False)
    raise typer.Exit(1)


def get_json(client: httpx.Client, path: str, **params: Any) -> Any:
    """GET ``path``; an API error or an API that does not answer ends the command with a clear line."""
    try:
        resp = client.get(path, params={k: v for k, v in params.items() if v is not None})
    except httpx.TransportError as exc:
        unreachable(client, exc)
    if resp.status_code != 200:
        fail(resp)
    return resp.json()


def unreachable(client: httpx.Client, exc: Exception) -> NoReturn:
    err.print(f"[red]cannot reach the API at {client.base_url}[/] ({exc}); start it with `.venv/bin/textgen up` "
              "or pass --url", highlight=False)
    raise typer.Exit(1)


def stream_job(client: httpx.Client, job_id: str, on_text: Callable[[str], None]) -> dict[str, Any] | None:
    """Call ``on_text`` with each piece of the job's output as it is generated; returns the final
    job record (the ``done`` event), or None when the stream ended without one."""
    with connect_sse(client, "GET", f"/v1/jobs/{job_id}/stream", timeout=httpx.Timeout(30, read=None)) as source:
        if source.response.status_code != 200:
            source.response.read()
            fail(source.response)
        for event in source.iter_sse():
            if event.event == "delta":
                on_text(json.loads(event.data)["text"])
            elif event.event == "done":
                return dict(json.loads(event.data))
            elif event.event == "error":
                err.print(f"[red]stream interrupted[/]: {json.loads(event.data).get('message')}")
                return None
    return None
