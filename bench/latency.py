"""Latency of one interactive job: time to first token (over SSE) and end to end, p50/p95,
on an idle worker and on a worker busy with a backlog, in one run.

    python bench/latency.py [--samples 10] [--max-tokens 32] [--backlog 32] [--backlog-tokens 128]

The backlog is submitted on the same (interactive) lane, so the busy figures include the
wait in the queue. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from textgen_cli.localstack import LocalStack  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def one(client: httpx.Client, max_tokens: int) -> tuple[float, float]:
    """Submit, follow the SSE stream; return (time to first delta, end to end) in seconds."""
    started = time.perf_counter()
    job = client.post("/v1/jobs", json={"prompt": "Give me one tip for better sleep.", "temperature": 0, "cache": False,
                                        "max_tokens": max_tokens}).json()
    first = None
    with client.stream("GET", f"/v1/jobs/{job['id']}/stream") as resp:
        for line in resp.iter_lines():
            if line.startswith("event: delta") and first is None:
                first = time.perf_counter() - started
            if line.startswith("event: done"):
                break
    total = time.perf_counter() - started
    return (first if first is not None else total), total


def measure(client: httpx.Client, samples: int, max_tokens: int) -> dict[str, float]:
    ttft, e2e = [], []
    for _ in range(samples):
        a, b = one(client, max_tokens)
        ttft.append(a)
        e2e.append(b)
    return {"ttft_p50": pct(ttft, 0.5), "ttft_p95": pct(ttft, 0.95), "e2e_p50": pct(e2e, 0.5),
            "e2e_p95": pct(e2e, 0.95)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--backlog", type=int, default=32)
    parser.add_argument("--backlog-tokens", type=int, default=128)
    parser.add_argument("--max-batch", type=int, default=16)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, LocalStack(
        Path(tmp), models=[{"id": "smollm2-135m-instruct", "max_batch": args.max_batch}]
    ) as stack:
        stack.start()
        with stack.client() as client:
            one(client, 4)  # warm-up
            idle = measure(client, args.samples, args.max_tokens)
            print("idle:", {k: round(v, 3) for k, v in idle.items()}, flush=True)

            backlog_ids: list[str] = []

            def flood() -> None:
                for i in range(args.backlog):
                    backlog_ids.append(client.post("/v1/jobs", json={
                        "prompt": f"Write a long story about planet number {i}.", "temperature": 0,
                        "max_tokens": args.backlog_tokens}).json()["id"])

            flooder = threading.Thread(target=flood)
            flooder.start()
            flooder.join()
            busy = measure(client, args.samples, args.max_tokens)
            print("busy:", {k: round(v, 3) for k, v in busy.items()}, flush=True)
            for job_id in backlog_ids:
                client.post(f"/v1/jobs/{job_id}/cancel")
    result = {f"idle_{k}": round(v, 3) for k, v in idle.items()}
    result |= {f"busy_{k}": round(v, 3) for k, v in busy.items()}
    result |= {"busy_vs_idle_e2e_p95": round(busy["e2e_p95"] / idle["e2e_p95"], 2),
               "backlog": args.backlog, "max_batch": args.max_batch}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
