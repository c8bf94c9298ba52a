"""What a refused request costs the API: its peak RSS, and ``/health`` latency while the body is
being sent. Each row sends one maximal body that the API must refuse (no key, or a key and too
large) while another thread asks ``/health`` in a loop; the idle row is the baseline of the same run.

Starts its own Redis and the API, no worker (``textgen_cli.localstack``); the last line is one JSON object.

    .venv/bin/python bench/guard.py
    .venv/bin/python bench/guard.py --megabytes 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from textgen_cli.localstack import LocalStack  # noqa: E402

MB = 1024 * 1024


def memory_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


def body(megabytes: int) -> Iterator[bytes]:
    """A JSON document of ``megabytes`` MB, nested as deep as a hostile one would be."""
    yield b'{"items": ['
    for _ in range(megabytes):
        yield b"[" * (MB // 2) + b"]" * (MB // 2)
    yield b"]}"


def health_latencies(url: str, stop: threading.Event, out: list[float]) -> None:
    with httpx.Client(timeout=60) as client:
        while not stop.is_set():
            started = time.perf_counter()
            client.get(f"{url}/health").raise_for_status()
            out.append(time.perf_counter() - started)
            time.sleep(0.01)


def row(url: str, pid: int, name: str, send: Iterator[bytes] | None, path: str,
        headers: dict[str, str]) -> dict[str, object]:
    latencies: list[float] = []
    stop = threading.Event()
    poller = threading.Thread(target=health_latencies, args=(url, stop, latencies))
    peak_before = memory_mb(pid, "VmHWM")
    poller.start()
    started = time.perf_counter()
    status: int | None = None
    if send is None:
        time.sleep(1.0)
    else:
        status = httpx.post(f"{url}{path}", content=send, headers=headers, timeout=600).status_code
    seconds = time.perf_counter() - started
    stop.set()
    poller.join()
    return {"row": name, "status": status, "seconds": round(seconds, 2),
            "api_peak_rss_mb": round(memory_mb(pid, "VmHWM"), 1),
            "peak_growth_mb": round(memory_mb(pid, "VmHWM") - peak_before, 1),
            "health_requests": len(latencies),
            "health_p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else None,
            "health_max_ms": round(max(latencies) * 1000, 1) if latencies else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=int, default=100, help="body size (100: the upload limit)")
    args = parser.parse_args()
    json_type = {"Content-Type": "application/json"}
    with tempfile.TemporaryDirectory() as tmp, LocalStack(
        Path(tmp), extra_env={"TEXTGEN_LOG_LEVEL": "WARNING"}
    ) as stack:
        stack.start(workers=0)
        assert stack.url
        pid = stack.procs["api"].pid
        key = {"Authorization": f"Bearer {stack.api_keys[0]}"}
        httpx.get(f"{stack.url}/health")
        print(f"API RSS at start: {memory_mb(pid, 'VmRSS'):.1f} MB; bodies of {args.megabytes} MB")
        rows = [
            row(stack.url, pid, "idle (baseline)", None, "", {}),
            row(stack.url, pid, "no key, /v1/batches", body(args.megabytes), "/v1/batches", json_type),
            row(stack.url, pid, "no key, /v1/jobs", body(args.megabytes), "/v1/jobs", json_type),
            row(stack.url, pid, "key, /v1/jobs over 1 MB", body(args.megabytes), "/v1/jobs", {**json_type, **key}),
            row(stack.url, pid, "key, /v1/batches JSON over 16 MB", body(max(args.megabytes, 17)), "/v1/batches",
                {**json_type, **key}),
        ]
        for r in rows:
            print(r)
        idle = rows[0]["health_p50_ms"]
        worst = max(float(r["health_max_ms"] or 0) for r in rows[1:])
        summary = {"body_mb": args.megabytes, "api_peak_rss_mb": max(float(r["api_peak_rss_mb"]) for r in rows),
                   "peak_growth_mb": round(sum(float(r["peak_growth_mb"]) for r in rows[1:]), 1),
                   "health_idle_p50_ms": idle, "health_worst_ms_while_refusing": worst,
                   "statuses": [r["status"] for r in rows[1:]]}
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
