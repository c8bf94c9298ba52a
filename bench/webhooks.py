"""Webhook delivery cost: guard + sign + POST + record, per attempt, against a local receiver.

Prints figures only. Uses the bundled redis-server and an in-process receiver on 127.0.0.1.
    python bench/webhooks.py [attempts]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import redis

from textgen_cli.redis_server import start_redis
from textgen_core.keys import Keys
from textgen_core.settings import Settings
from textgen_core.webhook_events.emitter import make_delivery
from textgen_core.webhooks.delivery import Outcome, WebhookDeliverer


class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real receiver would

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(204)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


def main(attempts: int = 500) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        redis_url, proc = start_redis(Path(tmp), appendonly=False)
        server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            settings = Settings(_env_file=None, redis_url=redis_url, key_prefix="bench", webhook_allow_private=True)
            client = redis.Redis.from_url(redis_url, decode_responses=True)
            url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
            payload = {"id": "job_bench", "object": "job", "status": "succeeded", "output": "x" * 2000}
            with WebhookDeliverer(client, Keys("bench"), settings) as deliverer:
                seconds = []
                for n in range(attempts):
                    request = make_delivery(owner="bench", url=url, event="job.completed", object_id=f"job_{n}",
                                            payload=payload)
                    started = time.perf_counter()
                    assert deliverer.attempt(request).outcome is Outcome.delivered
                    seconds.append(time.perf_counter() - started)
            total = sum(seconds)
            ms = sorted(s * 1000 for s in seconds)
            print(f"{attempts} attempts, one thread: {attempts / total:.0f}/s; per attempt p50 "
                  f"{statistics.median(ms):.2f} ms, p95 {ms[int(len(ms) * 0.95)]:.2f} ms (2 KB output)")
        finally:
            server.shutdown()
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 500)
