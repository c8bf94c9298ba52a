"""Batch benchmark: a bulk batch end to end against the offline batched limit, and interactive
latency under the bulk backlog against the same on an idle system, in one run.

The offline limit is the engine alone, in this process, with every prompt submitted at once (no
Redis, Celery or HTTP). Then a local stack (``textgen_cli.localstack``: its own Redis, one
worker, the API) serves interactive probes on the idle system, takes the batch, serves the same
probes while the backlog runs, and probes the idle system again; the offline limit is measured
again at the end. Baselines are the means of before and after, so a drifting machine load
skews neither ratio. Each probe's time is split into queueing (accepted ->
claimed by the worker) and generation (claimed -> finished) to show where latency goes.
Targets: interactive p95 under the backlog <= 2x idle; batch tokens/s >= 0.8x offline.

    .venv/bin/python bench/batch.py                            # 2,000 items
    .venv/bin/python bench/batch.py --items 300 --probes 12    # a few minutes
    TEXTGEN_TORCH_THREADS=1 .venv/bin/python bench/batch.py    # on a CPU shared with other work

Prints figures; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from textgen_cli.localstack import LocalStack  # noqa: E402
from textgen_core.settings import DEFAULT_MODEL_ID, Settings  # noqa: E402

PRODUCTS = Path(__file__).resolve().parent.parent / "examples" / "products.csv"


def prompts(n: int) -> list[str]:
    names = [line.split(",")[1] for line in PRODUCTS.read_text().splitlines()[1:]]
    return [f"Write one sentence of product copy for: {names[i % len(names)]} (variant {i})." for i in range(n)]


def offline_limit(n: int, max_tokens: int, max_batch: int) -> dict[str, float]:
    """Tokens/s of the engine alone, all prompts submitted at once on the bulk lane."""
    from textgen_core.engine.batching import Engine
    from textgen_core.engine.device import own_parallelism, worker_threads
    from textgen_core.engine.loader import load
    from textgen_core.jobs import SamplingParams
    from textgen_core.modes import Mode, build_messages

    settings = Settings(_env_file=None)
    own_parallelism()  # as the worker does, so both sides compute alike
    spec = settings.model(DEFAULT_MODEL_ID)
    assert spec is not None
    loaded = load(spec, settings.cache_dir, cpu_bf16=settings.cpu_auto_bf16)
    engine = Engine(loaded, max_batch=max_batch, threads=worker_threads(settings.torch_threads)).start()
    params = SamplingParams(max_tokens=max_tokens, temperature=0)
    ids = [loaded.tokenizer.apply_chat_template(build_messages(Mode.general, prompt=p), add_generation_prompt=True,
                                                tokenize=True, return_dict=False) for p in prompts(n)]
    engine.submit("warm-up", list(ids[0]), params.model_copy(update={"max_tokens": 2})).result()
    started = time.perf_counter()
    futures = [engine.submit(f"offline-{i}", list(x), params, lane="bulk") for i, x in enumerate(ids)]
    tokens = sum(f.result().completion_tokens for f in futures)
    elapsed = time.perf_counter() - started
    engine.stop()
    return {"items": n, "tokens": tokens, "seconds": round(elapsed, 2), "tokens_per_s": round(tokens / elapsed, 1),
            "items_per_s": round(n / elapsed, 2)}


class PeakRSS(threading.Thread):
    def __init__(self, pids: dict[str, int]):
        super().__init__(daemon=True)
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.peak = dict.fromkeys(pids, 0)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.25):
            for name, proc in self.procs.items():
                try:
                    self.peak[name] = max(self.peak[name], proc.memory_info().rss)
                except psutil.Error:
                    pass


def probe(client: httpx.Client, i: int, max_tokens: int) -> dict[str, Any]:
    """One interactive job, waited for as a client would; its latency and where it went."""
    started = time.perf_counter()
    job = client.post("/v1/jobs", json={"prompt": f"Say hello number {i}.", "max_tokens": max_tokens,
                                        "temperature": 0, "cache": False}).json()
    while job["status"] in ("queued", "running"):
        job = client.get(f"/v1/jobs/{job['id']}", params={"wait": 30}).json()
    timings = job["timings"]
    return {"seconds": time.perf_counter() - started, "queue": timings["queue_seconds"] or 0.0,
            "generation": timings["generation_seconds"] or 0.0, "batch_size": job.get("batch_size") or 0,
            "tokens": (job.get("usage") or {}).get("completion_tokens", 0), "finished_at": timings["finished_at"]}


def probes(client: httpx.Client, count: int, gap: float, max_tokens: int,
           until: threading.Event | None = None) -> list[dict[str, Any]]:
    out = []
    for i in range(count):
        if until is not None and until.is_set():
            break
        out.append(probe(client, i, max_tokens))
        time.sleep(gap)
    return out


def p95(values: list[float]) -> float:
    if not values:
        return float("nan")
    return round(statistics.quantiles(values, n=20, method="inclusive")[-1] if len(values) >= 2 else values[0], 3)


def summary(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {"jobs": len(runs), "p95_s": p95([r["seconds"] for r in runs]),
            "median_s": round(statistics.median(r["seconds"] for r in runs), 3),
            "queue_p95_s": p95([r["queue"] for r in runs]),
            "generation_p95_s": p95([r["generation"] for r in runs]),
            "batch_size_max": max(r["batch_size"] for r in runs)}


def run_batch(client: httpx.Client, n: int, max_tokens: int, probe_count: int, probe_gap: float,
              probe_tokens: int) -> dict[str, Any]:
    items = [{"custom_id": f"item-{i}", "prompt": p} for i, p in enumerate(prompts(n))]
    started = time.perf_counter()
    resp = client.post("/v1/batches", json={"items": items, "max_tokens": max_tokens, "temperature": 0,
                                            "cache": False})
    submit_s = time.perf_counter() - started
    assert resp.status_code == 202, resp.text
    batch = resp.json()
    print(f"submitted {n} items in {submit_s:.2f} s", flush=True)
    done = threading.Event()
    busy: list[dict[str, Any]] = []

    def probing() -> None:
        with httpx.Client(base_url=client.base_url, headers=client.headers, timeout=600) as own:
            time.sleep(2)  # the backlog is running by now
            busy.extend(probes(own, probe_count, probe_gap, probe_tokens, until=done))

    prober = threading.Thread(target=probing, daemon=True)
    prober.start()
    while batch["status"] not in ("completed", "failed", "canceled"):
        time.sleep(0.5)
        batch = client.get(f"/v1/batches/{batch['id']}").json()
    elapsed = time.perf_counter() - started
    done.set()
    prober.join()
    tokens = 0
    with client.stream("GET", f"/v1/batches/{batch['id']}/results") as results:
        for line in results.iter_lines():
            if line:
                tokens += (json.loads(line)["usage"] or {}).get("completion_tokens", 0)
    # Only probes that finished while the batch still ran measure latency under the backlog.
    finished = batch["finished_at"]
    under = [r for r in busy if r["finished_at"] <= finished]
    return {"batch": batch, "submit_s": submit_s, "elapsed": elapsed, "tokens": tokens, "busy": under,
            "probe_seconds": sum(r["seconds"] for r in under)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--max-tokens", type=int, default=32, help="new tokens per batch item")
    parser.add_argument("--offline-items", type=int, default=96, help="prompts for the offline limit")
    parser.add_argument("--probes", type=int, default=20, help="interactive jobs per phase")
    parser.add_argument("--probe-gap", type=float, default=2.0, help="seconds between interactive jobs")
    parser.add_argument("--probe-tokens", type=int, default=32, help="new tokens per interactive job")
    parser.add_argument("--max-batch", type=int, default=16, help="the model's max_batch, offline and on the stack")
    args = parser.parse_args()

    load_before = os.getloadavg()
    print(f"offline limit: {args.offline_items} prompts x {args.max_tokens} tokens through the engine alone ...",
          flush=True)
    offline = [offline_limit(args.offline_items, args.max_tokens, args.max_batch)]
    print(f"  {offline[0]}", flush=True)

    with tempfile.TemporaryDirectory(prefix="textgen-bench-") as tmp, LocalStack(
        Path(tmp), models=[{"id": DEFAULT_MODEL_ID, "max_batch": args.max_batch}],
        # A throughput run, not a test of the per-key limits.
        extra_env={"TEXTGEN_LOG_LEVEL": "WARNING", "TEXTGEN_MAX_QUEUED_BATCH_ITEMS_PER_KEY": "0",
                   "TEXTGEN_BATCH_TOKENS_PER_DAY": "0"},
    ) as stack:
        stack.start()
        rss = PeakRSS({"api": stack.procs["api"].pid, "worker": stack.procs["worker0"].pid})
        rss.start()
        with stack.client(timeout=600) as client:
            probes(client, 2, 0, args.probe_tokens)  # warm-up
            idle = probes(client, args.probes, args.probe_gap, args.probe_tokens)
            print(f"interactive, idle: {summary(idle)}", flush=True)
            run = run_batch(client, args.items, args.max_tokens, args.probes, args.probe_gap, args.probe_tokens)
            busy = run["busy"]
            print(f"interactive, under the bulk backlog: {summary(busy) if busy else 'none finished in time'}")
            # Baselines before and after the batch, pooled: a machine whose load drifts skews neither way.
            after = probes(client, args.probes, args.probe_gap, args.probe_tokens)
            print(f"interactive, idle again: {summary(after)}", flush=True)
            idle += after
        rss.stop.set()
    print("offline limit again ...", flush=True)
    offline.append(offline_limit(args.offline_items, args.max_tokens, args.max_batch))
    print(f"  {offline[1]}", flush=True)

    batch, elapsed = run["batch"], run["elapsed"]
    batch_tps = run["tokens"] / elapsed
    offline_tps = statistics.mean(o["tokens_per_s"] for o in offline)
    idle_s, busy_s = summary(idle), summary(busy) if busy else None
    figures = {
        "items": args.items,
        "max_tokens": args.max_tokens,
        "batch_status": batch["status"],
        "counts": batch["request_counts"],
        "submit_seconds": round(run["submit_s"], 3),
        "batch_seconds": round(elapsed, 1),
        "items_per_s": round(args.items / elapsed, 2),
        "tokens_per_s": round(batch_tps, 1),
        "offline_items_per_s": round(statistics.mean(o["items_per_s"] for o in offline), 2),
        "offline_tokens_per_s": round(offline_tps, 1),  # the mean of the runs before and after the stack
        "batch_vs_offline": round(batch_tps / offline_tps, 3),
        "interactive_idle": idle_s,
        "interactive_under_backlog": busy_s,
        "interactive_p95_ratio": round(busy_s["p95_s"] / idle_s["p95_s"], 2) if busy_s else None,
        # Share of the batch's time during which an interactive job was in flight.
        "interactive_share_of_batch": round(run["probe_seconds"] / elapsed, 3),
        "peak_rss_mb": {name: round(v / 2**20, 1) for name, v in rss.peak.items()},
        "load_average": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    print(f"batch: {figures['items_per_s']} items/s, {figures['tokens_per_s']} tokens/s "
          f"({figures['batch_vs_offline']}x offline); interactive p95 {figures['interactive_p95_ratio']}x idle")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
