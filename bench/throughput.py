"""Throughput: the same prompts through (a) one-at-a-time ``generate``, (b) offline batched
``generate`` at its best batch size, (c) the engine in-process and (d) the full stack
(HTTP API -> Redis -> Celery worker -> engine), all greedy, in one run on one machine.

    python bench/throughput.py [--prompts 64] [--max-tokens 64] [--dtype auto]

Prints a table of tokens/s, then one JSON object as the last line. Tokens are counted as
each path really generates them (up to and including EOS, never padding), so rows that
stop early cost the offline path idle slots, as they would in production.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from textgen_cli.localstack import LocalStack  # noqa: E402
from textgen_core.engine.batching import Engine  # noqa: E402
from textgen_core.engine.device import own_parallelism, worker_threads  # noqa: E402
from textgen_core.engine.loader import LoadedModel, load  # noqa: E402
from textgen_core.jobs import SamplingParams  # noqa: E402
from textgen_core.modes import Mode, build_messages  # noqa: E402
from textgen_core.settings import DEFAULT_MODEL_ID, Settings  # noqa: E402

TOPICS = ["a lighthouse", "coffee", "the ocean", "a bicycle", "mountains", "a violin", "rain", "a library",
          "the moon", "bread", "a garden", "trains", "winter", "a city at night", "honeybees", "a river"]


T = TypeVar("T")

def prompts(n: int) -> list[str]:
    return [f"Write a short paragraph about {TOPICS[i % len(TOPICS)]} (note {i})." for i in range(n)]


def chat_ids(lm: LoadedModel, prompt: str) -> list[int]:
    messages = build_messages(Mode.general, prompt=prompt)
    return list(lm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                 return_dict=False))


def generated_tokens(row: torch.Tensor, eos: frozenset[int], pad: int) -> int:
    count = 0
    for token in row.tolist():
        count += 1
        if token in eos:
            return count
    return count


def naive(lm: LoadedModel, ids: list[list[int]], max_tokens: int) -> float:
    total, started = 0, time.perf_counter()
    for seq in ids:
        out = lm.model.generate(torch.tensor([seq], device=lm.device), max_new_tokens=max_tokens, do_sample=False,
                                pad_token_id=lm.tokenizer.pad_token_id)
        total += generated_tokens(out[0, len(seq):], lm.eos_token_ids, lm.tokenizer.pad_token_id)
    return total / (time.perf_counter() - started)


def offline(lm: LoadedModel, ids: list[list[int]], max_tokens: int, batch: int) -> float:
    pad = lm.tokenizer.pad_token_id
    total, started = 0, time.perf_counter()
    for i in range(0, len(ids), batch):
        chunk = ids[i:i + batch]
        width = max(len(s) for s in chunk)
        input_ids = torch.tensor([[pad] * (width - len(s)) + s for s in chunk], device=lm.device)
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in chunk], device=lm.device)
        out = lm.model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_tokens,
                                do_sample=False, pad_token_id=pad)
        total += sum(generated_tokens(row[width:], lm.eos_token_ids, pad) for row in out)
    return total / (time.perf_counter() - started)


def alone_in_a_thread(work: Callable[[], T]) -> T:
    """``work`` in a thread of its own with the worker's torch threads, gone when it returns: its
    OpenMP team goes with it, so the engine thread's is the only one later (``device.own_parallelism``;
    with two teams, the engine's small kernels ran 10x slower)."""
    out: list[T] = []

    def run() -> None:
        torch.set_num_threads(worker_threads(None))
        out.append(work())

    thread = threading.Thread(target=run, name="baseline")
    thread.start()
    thread.join()
    if not out:
        raise RuntimeError("the baseline thread failed (its traceback is above)")
    return out[0]


def engine(lm: LoadedModel, ids: list[list[int]], max_tokens: int, batch: int) -> float:
    eng = Engine(lm, max_batch=batch).start()
    params = SamplingParams(temperature=0, max_tokens=max_tokens)
    started = time.perf_counter()
    futures = [eng.submit(f"b{i}", seq, params) for i, seq in enumerate(ids)]
    total = sum(f.result().completion_tokens for f in futures)
    elapsed = time.perf_counter() - started
    eng.stop()
    return total / elapsed


def transformers_cb(lm: LoadedModel, ids: list[list[int]], max_tokens: int) -> float | None:
    """transformers' own continuous-batching manager (``generate_batch``), for comparison; None where
    it refuses the model (it takes only its own attention implementations, not the engine's)."""
    from transformers import GenerationConfig

    eos = sorted(lm.eos_token_ids)
    config = GenerationConfig(max_new_tokens=max_tokens, do_sample=False, eos_token_id=eos,
                              pad_token_id=lm.tokenizer.pad_token_id)
    started = time.perf_counter()
    try:
        outputs = lm.model.generate_batch(ids, generation_config=config, max_new_tokens=max_tokens)
    except ValueError as exc:
        print(f"(e) transformers generate_batch skipped: {exc}", flush=True)
        return None
    total = sum(len(o.generated_tokens) for o in outputs.values())
    return total / (time.perf_counter() - started)


async def _stack_run(stack: LocalStack, texts: list[str], max_tokens: int) -> tuple[float, list[int]]:
    headers = {"Authorization": f"Bearer {stack.api_keys[0]}"}
    limits = httpx.Limits(max_connections=len(texts) + 8)
    async with httpx.AsyncClient(base_url=stack.url, headers=headers, timeout=600, limits=limits) as client:
        async def one(text: str) -> dict[str, Any]:
            resp = await client.post("/v1/jobs", json={"prompt": text, "temperature": 0, "max_tokens": max_tokens,
                                                         "cache": False})
            resp.raise_for_status()
            job = resp.json()
            while job["status"] in ("queued", "running"):
                job = (await client.get(f"/v1/jobs/{job['id']}", params={"wait": 60})).json()
            return job

        started = time.perf_counter()
        jobs = await asyncio.gather(*(one(t) for t in texts))
        elapsed = time.perf_counter() - started
    failed = [j for j in jobs if j["status"] != "succeeded"]
    if failed:
        raise RuntimeError(f"{len(failed)} jobs did not succeed: {failed[0]}")
    total = sum(j["usage"]["completion_tokens"] for j in jobs)
    return total / elapsed, [j["batch_size"] for j in jobs]


def stack(texts: list[str], max_tokens: int, batch: int, dtype: str) -> tuple[float, list[int]]:
    with tempfile.TemporaryDirectory() as tmp, LocalStack(
        Path(tmp), models=[{"id": DEFAULT_MODEL_ID, "max_batch": batch, "dtype": dtype}]
    ) as st:
        st.start()
        asyncio.run(_stack_run(st, texts[:2], 4))  # warm-up
        return asyncio.run(_stack_run(st, texts, max_tokens))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--batch-sizes", default="8,16,32,64", help="offline batch sizes to try")
    parser.add_argument("--naive-prompts", type=int, default=16,
                        help="prompts for the one-at-a-time path (a rate; a subset keeps the run short)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="auto: as a worker picks it (bfloat16 with int8 weights on a native-bf16 CPU)")
    parser.add_argument("--no-transformers-cb", dest="transformers_cb", action="store_false",
                        help="skip transformers' continuous-batching manager")
    args = parser.parse_args()

    settings = Settings(_env_file=None)
    own_parallelism()  # as a worker does: no OpenMP team in this thread (alone_in_a_thread)
    spec = settings.model(DEFAULT_MODEL_ID).model_copy(update={"dtype": args.dtype})  # type: ignore[union-attr]
    lm = load(spec, settings.cache_dir, cpu_bf16=settings.cpu_auto_bf16)
    texts = prompts(args.prompts)
    ids = [chat_ids(lm, t) for t in texts]
    print(f"model {spec.id} on {lm.device} ({lm.dtype}, {lm.weights} weights), "
          f"{args.prompts} prompts x {args.max_tokens} new tokens, "
          f"greedy, torch threads {worker_threads(None)}", flush=True)

    rows: list[tuple[str, float]] = []

    def baselines(lm: LoadedModel = lm) -> tuple[float, dict[int, float]]:  # not a closure: lm is deleted below
        with torch.inference_mode():
            naive(lm, ids[:1], 4)  # warm-up: first calls allocate and pick kernels
            naive_tok_s = naive(lm, ids[: args.naive_prompts], args.max_tokens)
            rows.append((f"(a) naive, one at a time ({args.naive_prompts} prompts)", naive_tok_s))
            print(f"{rows[-1][0]:<48} {naive_tok_s:8.1f} tok/s", flush=True)
            by_batch = {}
            for b in [int(x) for x in args.batch_sizes.split(",")]:
                if b > len(ids):
                    continue
                by_batch[b] = offline(lm, ids, args.max_tokens, b)
                print(f"{f'    offline batch {b}':<48} {by_batch[b]:8.1f} tok/s", flush=True)
            return naive_tok_s, by_batch

    naive_tok_s, by_batch = alone_in_a_thread(baselines)
    best = max(by_batch, key=lambda b: by_batch[b])
    rows.append((f"(b) offline batched generate, best batch {best}", by_batch[best]))
    engine_tok_s = engine(lm, ids, args.max_tokens, best)
    rows.append((f"(c) engine in-process, max batch {best}", engine_tok_s))
    print(f"{rows[-1][0]:<48} {engine_tok_s:8.1f} tok/s", flush=True)
    cb_tok_s = (alone_in_a_thread(lambda lm=lm: transformers_cb(lm, ids, args.max_tokens))
                if args.transformers_cb else None)
    if cb_tok_s is not None:
        rows.append(("(e) transformers generate_batch (its own CB)", cb_tok_s))
        print(f"{rows[-1][0]:<48} {cb_tok_s:8.1f} tok/s", flush=True)
    lm_dtype, lm_weights = lm.dtype, lm.weights
    del lm
    stack_tok_s, sizes = stack(texts, args.max_tokens, best, args.dtype)
    rows.append(("(d) full stack: API -> Redis -> Celery -> engine", stack_tok_s))

    print()
    print(f"{'path':<48} {'tok/s':>8} {'x naive':>8}")
    for name, value in rows:
        print(f"{name:<48} {value:8.1f} {value / naive_tok_s:8.1f}")
    print(f"stack batch sizes seen: median {statistics.median(sizes)}, max {max(sizes)}")
    print(json.dumps({
        "naive_tok_s": round(naive_tok_s, 1),
        "offline_tok_s": round(by_batch[best], 1),
        "offline_best_batch": best,
        "engine_tok_s": round(engine_tok_s, 1),
        "transformers_cb_tok_s": round(cb_tok_s, 1) if cb_tok_s is not None else None,
        "stack_tok_s": round(stack_tok_s, 1),
        "stack_vs_offline": round(stack_tok_s / by_batch[best], 2),
        "stack_vs_naive": round(stack_tok_s / naive_tok_s, 1),
        "dtype": lm_dtype,
        "weights": lm_weights,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }))


if __name__ == "__main__":
    main()
