"""What the client commands share: the API URL and key options, an HTTP client, the error
envelope printed as one readable line, and following a job's token stream.

Every way a call can go wrong that the user fixes by starting the API or fixing ``--url`` (no
answer, another web server's page, a proxy's error) becomes an :class:`ApiProblem`, and
:func:`api_errors` prints it as one line: a traceback or an HTML page would say less."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, NoReturn

import httpx
import typer
from httpx_sse import SSEError, connect_sse
from rich.console import Console

from textgen_core.settings import get_settings

err = Console(stderr=True)

DEFAULT_URL = "http://127.0.0.1:8000"
ApiUrl = Annotated[str, typer.Option("--url", envvar="TEXTGEN_URL", help="API base URL.")]
ApiKey = Annotated[str | None, typer.Option("--api-key", envvar="TEXTGEN_API_KEY",
                                            help="API key (default: the first configured key).")]


class ApiProblem(Exception):
    """A call that failed, carried as the one line (rich markup) to print for it."""


def key_or_default(api_key: str | None) -> str:
    """The key given, else the first configured one (what ``make up`` serves in development)."""
    return api_key or get_settings().api_keys[0]


@contextmanager
def api_client(url: str, api_key: str | None, timeout: float = 90) -> Iterator[httpx.Client]:
    """An authenticated client whose API problems end the command with one line and exit status 1."""
    key = key_or_default(api_key)
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=timeout) as client, \
            api_errors(client):
        yield client


@contextmanager
def api_errors(client: httpx.Client, *, keep_going: bool = False) -> Iterator[None]:
    """Print an API problem raised inside as one line; then exit 1, or with ``keep_going`` carry on
    (``textgen chat``: the API may be back, restarted by ``textgen up``, by the next turn)."""
    try:
        yield
    except (ApiProblem, httpx.TransportError) as exc:
        report(client, exc)
        if not keep_going:
            raise typer.Exit(1) from None


def report(client: httpx.Client, exc: ApiProblem | httpx.TransportError) -> None:
    err.print(str(problem(client, exc)), highlight=False)


def problem(client: httpx.Client, exc: ApiProblem | httpx.TransportError) -> ApiProblem:
    if isinstance(exc, ApiProblem):
        return exc
    if isinstance(exc, SSEError):  # answered, but not with the event stream the API sends
        return not_textgen(client, str(exc))
    return ApiProblem(f"[red]cannot reach the API at {client.base_url}[/] ({exc}); start it with "
                      "`.venv/bin/textgen up` or pass --url")


def not_textgen(client: httpx.Client, what: httpx.Response | str) -> ApiProblem:
    """Another server answers at ``--url``: name what it answered (its page says nothing useful here)."""
    if isinstance(what, httpx.Response):
        kind = what.headers.get("content-type", "untyped")
        what = f"it answered HTTP {what.status_code} {what.reason_phrase}, {kind}"
    return ApiProblem(f"[red]the server at {client.base_url} is not a textgen API[/] ({what}); "
                      "pass the API's --url, or start one with `.venv/bin/textgen up`")


def error_message(resp: httpx.Response) -> str | None:
    """The message of textgen's error envelope; None where the answer has none (another server's)."""
    try:
        return str(resp.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return None


def failure(client: httpx.Client, resp: httpx.Response) -> ApiProblem:
    """The API's error as ``STATUS message``; another server's page is named, not printed."""
    message = error_message(resp)
    if message is None:
        return not_textgen(client, resp)
    return ApiProblem(f"[red]{resp.status_code}[/] {message}")


def fail(client: httpx.Client, resp: httpx.Response) -> NoReturn:
    raise failure(client, resp)


def json_body(client: httpx.Client, resp: httpx.Response) -> dict[str, Any]:
    """The JSON object every textgen answer is; anything else means ``--url`` is another server."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise not_textgen(client, resp)
    return body


def get_json(client: httpx.Client, path: str, **params: Any) -> dict[str, Any]:
    """GET ``path``; the answer's JSON, or an :class:`ApiProblem` for an error."""
    resp = client.get(path, params={k: v for k, v in params.items() if v is not None})
    if resp.status_code != 200:
        fail(client, resp)
    return json_body(client, resp)


def stream_job(client: httpx.Client, job_id: str, on_text: Callable[[str], None]) -> dict[str, Any] | None:
    """Call ``on_text`` with each piece of the job's output as it is generated; returns the final
    job record (the ``done`` event), or None when the stream ended without one."""
    with connect_sse(client, "GET", f"/v1/jobs/{job_id}/stream", timeout=httpx.Timeout(30, read=None)) as source:
        if source.response.status_code != 200:
            source.response.read()
            fail(client, source.response)
        for event in source.iter_sse():
            if event.event == "delta":
                on_text(json.loads(event.data)["text"])
            elif event.event == "done":
                return dict(json.loads(event.data))
            elif event.event == "error":
                err.print(f"[red]stream interrupted[/]: {json.loads(event.data).get('message')}")
                return None
    return None
