"""Batch benchmark: a bulk batch end to end against the offline batched limit, and interactive
latency under a bulk backlog against an idle system.

Starts its own Redis, one worker and the API (as the tests do), then prints figures; the last
line is one JSON object. Targets: interactive p95 under the backlog <= 2x idle; batch tokens/s
end to end >= 0.8x the offline limit.

    .venv/bin/python bench/batch.py                 # 2,000 items
    .venv/bin/python bench/batch.py --items 200     # a quick run
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from textgen_cli.processes import api_command, child_env, worker_command  # noqa: E402
from textgen_cli.redis_server import free_port, start_redis  # noqa: E402
from textgen_core.settings import Settings, get_settings  # noqa: E402

PRODUCTS = Path(__file__).resolve().parent.parent / "examples" / "products.csv"


def prompts(n: int) -> list[str]:
    names = [line.split(",")[1] for line in PRODUCTS.read_text().splitlines()[1:]]
    return [f"Write one sentence of product copy for: {names[i % len(names)]} (variant {i})." for i in range(n)]


def offline_limit(n: int, max_tokens: int) -> dict[str, float]:
    """Tokens/s of the engine alone, all prompts submitted at once (no Redis, Celery or HTTP)."""
    from textgen_core.engine.batching import Engine
    from textgen_core.engine.loader import load
    from textgen_core.jobs import SamplingParams
    from textgen_core.modes import Mode, build_messages

    settings = get_settings()
    spec = settings.model(settings.default_model)
    assert spec is not None
    loaded = load(spec, settings.cache_dir)
    engine = Engine(loaded, max_batch=spec.max_batch).start()
    params = SamplingParams(max_tokens=max_tokens, temperature=0)
    ids = [loaded.tokenizer.apply_chat_template(build_messages(Mode.general, prompt=p), add_generation_prompt=True,
                                                tokenize=True, return_dict=False) for p in prompts(n)]
    started = time.perf_counter()
    futures = [engine.submit(f"offline-{i}", list(x), params, lane="bulk") for i, x in enumerate(ids)]
    tokens = sum(f.result().completion_tokens for f in futures)
    elapsed = time.perf_counter() - started
    engine.stop()
    return {"items": n, "tokens": tokens, "seconds": round(elapsed, 2), "tokens_per_s": round(tokens / elapsed, 1)}


class PeakRSS(threading.Thread):
    def __init__(self, procs: dict[str, subprocess.Popen[bytes]]):
        super().__init__(daemon=True)
        self.procs = {name: psutil.Process(p.pid) for name, p in procs.items()}
        self.peak = dict.fromkeys(procs, 0)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.25):
            for name, proc in self.procs.items():
                try:
                    self.peak[name] = max(self.peak[name], proc.memory_info().rss)
                except psutil.Error:
                    pass


def interactive_latencies(client: httpx.Client, count: int, gap: float, max_tokens: int) -> list[float]:
    out = []
    for i in range(count):
        started = time.perf_counter()
        job = client.post("/v1/jobs", json={"prompt": f"Say hello number {i}.", "max_tokens": max_tokens,
                                            "temperature": 0}).json()
        while job["status"] in ("queued", "running"):
            job = client.get(f"/v1/jobs/{job['id']}", params={"wait": 30}).json()
        out.append(time.perf_counter() - started)
        time.sleep(gap)
    return out


def p95(values: list[float]) -> float:
    return round(statistics.quantiles(values, n=20)[-1] if len(values) >= 2 else values[0], 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--offline-items", type=int, default=64)
    parser.add_argument("--probes", type=int, default=10, help="interactive jobs per phase")
    args = parser.parse_args()

    print(f"offline limit: {args.offline_items} prompts x {args.max_tokens} tokens through the engine alone ...")
    offline = offline_limit(args.offline_items, args.max_tokens)
    print(f"  {offline}")

    root = Path(tempfile.mkdtemp(prefix="textgen-bench-"))
    redis_url, redis_proc = start_redis(root / "redis")
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    env = child_env(TEXTGEN_REDIS_URL=redis_url, TEXTGEN_KEY_PREFIX=prefix, TEXTGEN_ENV="test",
                    TEXTGEN_LOG_LEVEL="WARNING")
    port = free_port()
    procs = {
        "api": subprocess.Popen(api_command("127.0.0.1", port, "warning"), env=env,
                                stdout=(root / "api.log").open("ab"), stderr=subprocess.STDOUT),
        "worker": subprocess.Popen(worker_command(Settings(_env_file=None), "bench@local", loglevel="WARNING"),
                                   env=env, stdout=(root / "worker.log").open("ab"), stderr=subprocess.STDOUT),
    }
    rss = PeakRSS(procs)
    rss.start()
    key = get_settings().api_keys[0]
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"},
                          timeout=600) as client:
            deadline = time.monotonic() + 300
            while True:
                try:
                    if client.get("/ready").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"stack not ready; logs in {root}")
                time.sleep(0.5)
            interactive_latencies(client, 2, 0, args.max_tokens)  # warm up
            idle = interactive_latencies(client, args.probes, 0.2, args.max_tokens)
            print(f"interactive, idle: p95 {p95(idle)} s over {len(idle)} jobs")

            items = [{"custom_id": f"item-{i}", "prompt": p} for i, p in enumerate(prompts(args.items))]
            started = time.perf_counter()
            resp = client.post("/v1/batches", json={"items": items, "max_tokens": args.max_tokens,
                                                    "temperature": 0})
            submit_s = time.perf_counter() - started
            assert resp.status_code == 202, resp.text
            batch = resp.json()
            print(f"submitted {args.items} items in {submit_s:.2f} s")
            time.sleep(2)
            busy = interactive_latencies(client, args.probes, 1.0, args.max_tokens)
            print(f"interactive, under the bulk backlog: p95 {p95(busy)} s over {len(busy)} jobs")
            while batch["status"] not in ("completed", "failed", "canceled"):
                time.sleep(1)
                batch = client.get(f"/v1/batches/{batch['id']}").json()
            elapsed = time.perf_counter() - started
            tokens = 0
            with client.stream("GET", f"/v1/batches/{batch['id']}/results") as results:
                for line in results.iter_lines():
                    if line:
                        tokens += (json.loads(line)["usage"] or {}).get("completion_tokens", 0)
    finally:
        rss.stop.set()
        for proc in procs.values():
            proc.terminate()
            proc.wait(30)
        redis_proc.terminate()

    batch_tps = tokens / elapsed
    figures = {
        "items": args.items,
        "max_tokens": args.max_tokens,
        "batch_status": batch["status"],
        "counts": batch["request_counts"],
        "submit_seconds": round(submit_s, 3),
        "batch_seconds": round(elapsed, 1),
        "items_per_s": round(args.items / elapsed, 2),
        "tokens_per_s": round(batch_tps, 1),
        "offline_tokens_per_s": offline["tokens_per_s"],
        "batch_vs_offline": round(batch_tps / offline["tokens_per_s"], 3),
        "interactive_p95_idle_s": p95(idle),
        "interactive_p95_under_backlog_s": p95(busy),
        "interactive_ratio": round(p95(busy) / p95(idle), 2),
        "peak_rss_mb": {name: round(v / 2**20, 1) for name, v in rss.peak.items()},
    }
    print(f"batch: {figures['items_per_s']} items/s, {figures['tokens_per_s']} tokens/s "
          f"({figures['batch_vs_offline']}x offline); interactive p95 {figures['interactive_ratio']}x idle")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
