"""``textgen chat``: an interactive conversation that streams each reply as it is generated.

The conversation lives on the server (``conversation_id``: the API adds its history to every
turn), so the REPL only keeps the id; ``/reset`` forgets the history and starts a new one."""

from __future__ import annotations

import sys
import uuid
from typing import Annotated, Any

import httpx
import typer

from textgen_cli.client import (
    DEFAULT_URL,
    ApiKey,
    ApiUrl,
    api_client,
    api_errors,
    err,
    fail,
    failure,
    get_json,
    json_body,
    report,
    stream_job,
)

HELP = "/reset starts a new conversation, /exit (or Ctrl-D) quits, Ctrl-C stops a reply"


class Chat:
    def __init__(self, client: httpx.Client, params: dict[str, Any]):
        self.client = client
        self.params = params
        self.conversation = self._new_id()

    @staticmethod
    def _new_id() -> str:
        return f"chat-{uuid.uuid4().hex[:12]}"

    def reset(self) -> None:
        """Forget the conversation on the server and start a new one; an API that does not answer
        keeps the old one, so ``/reset`` can be tried again once it is back."""
        resp = self.client.delete(f"/v1/conversations/{self.conversation}")
        if resp.status_code not in (200, 404):  # 404: nothing said yet
            report(self.client, failure(self.client, resp))
        self.conversation = self._new_id()
        print(f"(new conversation {self.conversation})", flush=True)

    def turn(self, prompt: str) -> None:
        """Send one message and print the reply as it streams; Ctrl-C cancels the job."""
        resp = self.client.post("/v1/jobs", json={"prompt": prompt, "conversation_id": self.conversation,
                                                  **self.params})
        if resp.status_code != 202:
            fail(self.client, resp)
        job_id = json_body(self.client, resp)["id"]
        try:
            job = stream_job(self.client, job_id, lambda text: print(text, end="", flush=True))
        except KeyboardInterrupt:
            print("\n(stopped)", flush=True)
            self.client.post(f"/v1/jobs/{job_id}/cancel")
            return
        except httpx.TransportError:
            print(flush=True)  # end a reply cut short before the line that says why
            raise
        print(flush=True)
        if job is not None and job["status"] != "succeeded":
            err.print(f"[red]job {job['status']}[/]: {(job.get('error') or {}).get('message', '')}", highlight=False)


def chat(
    url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = None,
    model: Annotated[str | None, typer.Option(help="Model id (default: the server's default).")] = None,
    mode: Annotated[str, typer.Option(help="general | recommendation | support | ecommerce")] = "general",
    max_tokens: Annotated[int, typer.Option(help="Tokens to generate at most per reply.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 for greedy.")] = 0.7,
) -> None:
    """Chat with a model: each reply streams as it is generated, and the conversation is kept."""
    params: dict[str, Any] = {"mode": mode, "max_tokens": max_tokens, "temperature": temperature}
    if model:
        params["model"] = model
    with api_client(url, api_key, timeout=300) as client:
        ids = [card["id"] for card in get_json(client, "/v1/models")["data"]]
        if model and model not in ids:
            err.print(f"[red]model {model!r} not found[/]; models served: {', '.join(ids)}", highlight=False)
            raise typer.Exit(1)
        session = Chat(client, params)
        print(f"textgen chat with {model or 'the default model'} at {url}, conversation {session.conversation}.\n"
              f"{HELP}.", flush=True)
        while True:
            try:
                line = input("you> ").strip()
            except EOFError:
                print(flush=True)
                return
            except KeyboardInterrupt:
                print(flush=True)
                continue
            if not line:
                continue
            if line in ("/exit", "/quit"):
                return
            if line.startswith("/") and line != "/reset":
                print(f"unknown command {line.split()[0]}: {HELP}", file=sys.stderr, flush=True)
                continue
            with api_errors(client, keep_going=True):  # the API may be back by the next line
                if line == "/reset":
                    session.reset()
                else:
                    session.turn(line)


def register(app: typer.Typer) -> None:
    app.command()(chat)
