"""A minimal textgen webhook receiver: verifies Standard Webhooks signatures, drops duplicates.

    .venv/bin/python examples/webhook_receiver.py --port 9000 --secret "$(curl -s localhost:8000/v1/webhooks/secret \\
        -H 'Authorization: Bearer tg-dev-key' | python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])')"

Retries of one event carry the same ``webhook-id``, so a receiver that remembers the ids it has
handled processes each event once. Answer 2xx quickly; do slow work elsewhere.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook, WebhookVerificationError

SEEN_MAX = 10_000  # ids remembered; retries of an event come within about a day


class Receiver(BaseHTTPRequestHandler):
    webhook: Webhook
    seen: OrderedDict[str, None] = OrderedDict()
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        try:
            event = self.webhook.verify(body, dict(self.headers.items()))
        except WebhookVerificationError as exc:
            self._answer(400, f"rejected: {exc}")
            return
        webhook_id = self.headers["webhook-id"]
        with self.lock:
            duplicate = webhook_id in self.seen
            self.seen[webhook_id] = None
            if len(self.seen) > SEEN_MAX:
                self.seen.popitem(last=False)
        if duplicate:
            self._answer(204, f"duplicate {webhook_id}")
            return
        self._answer(204, f"{event['type']} {event['id']} {event.get('status')}")
        handle(event)

    def _answer(self, status: int, line: str) -> None:
        print(line, flush=True)
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


def handle(event: dict[str, object]) -> None:
    """Your code goes here: the event is the job (or batch) as GET returns it, plus ``type``."""
    if event["type"] == "job.completed":
        print(json.dumps({"id": event["id"], "output": event.get("output")}), flush=True)
    elif event["type"] in ("batch.progress", "batch.completed"):
        print(json.dumps({"id": event["id"], "request_counts": event.get("request_counts")}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--secret", default=os.environ.get("TEXTGEN_WEBHOOK_SECRET"),
                        help="whsec_ secret from GET /v1/webhooks/secret (or TEXTGEN_WEBHOOK_SECRET)")
    args = parser.parse_args()
    if not args.secret:
        parser.error("--secret is required")
    Receiver.webhook = Webhook(args.secret)
    server = ThreadingHTTPServer((args.host, args.port), Receiver)
    print(f"listening on http://{args.host}:{args.port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
