"""Where a decoding step's milliseconds go: the engine in-process, greedy, at a few batch sizes and
torch thread counts, its steps split into the model's forward (decode), prefill, and the rest
(sampling, stop strings, streaming, the cache's bookkeeping: the engine's own Python).

    python bench/engine_step.py [--batches 1,64] [--threads 1,2] [--max-tokens 64] [--dtype auto]
                                [--library-decode]

``--library-decode`` runs every configuration a second time with decoding steps and prefills
through the library's forward instead of the engine's own (``decode.py``), alternating the two, and
prints the ratio. Prints one line per configuration, then one JSON object as the last line. The machine's load
average is printed with it: on a shared machine the figures move with it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from textgen_core.engine.batching import Engine  # noqa: E402
from textgen_core.engine.device import own_parallelism  # noqa: E402
from textgen_core.engine.loader import LoadedModel, load  # noqa: E402
from textgen_core.jobs import SamplingParams  # noqa: E402
from textgen_core.modes import Mode, build_messages  # noqa: E402
from textgen_core.settings import DEFAULT_MODEL_ID, Settings  # noqa: E402

TOPICS = ["a lighthouse", "coffee", "the ocean", "a bicycle", "mountains", "a violin", "rain", "a library"]


class TimedModel:
    """The model, with the seconds its decode (one token per row) and prefill calls took."""

    def __init__(self, model: Any):
        self.model, self.forward = model, model.forward  # the engine reads the forward's signature
        self.decode_s = self.prefill_s = 0.0
        self.decode_calls = 0

    def __call__(self, *, input_ids: torch.Tensor, **kwargs: Any) -> Any:
        started = time.perf_counter()
        out = self.model(input_ids=input_ids, **kwargs)
        self.count(input_ids, time.perf_counter() - started)
        return out

    def count(self, input_ids: torch.Tensor, took: float) -> None:
        if input_ids.shape[1] == 1:
            self.decode_s += took
            self.decode_calls += 1
        else:
            self.prefill_s += took


class TimedDecoder:
    """The engine's own decoding step and prefill (decode.py), their seconds counted as the model's."""

    def __init__(self, decoder: Any, timed: TimedModel):
        self.decoder, self.timed = decoder, timed
        self.prefills = decoder.prefills

    def prefill(self, ids: torch.Tensor, *args: Any) -> Any:
        started = time.perf_counter()
        out = self.decoder.prefill(ids, *args)
        self.timed.prefill_s += time.perf_counter() - started
        return out

    def __call__(self, next_ids: torch.Tensor, *args: Any) -> torch.Tensor:
        started = time.perf_counter()
        out = self.decoder(next_ids, *args)
        self.timed.count(next_ids, time.perf_counter() - started)
        return out


def chat_ids(lm: LoadedModel, prompt: str) -> list[int]:
    return list(lm.tokenizer.apply_chat_template(build_messages(Mode.general, prompt=prompt),
                                                 add_generation_prompt=True, tokenize=True, return_dict=False))


def run(lm: LoadedModel, batch: int, max_tokens: int, threads: int | None = None, *,
        library_decode: bool = False) -> dict[str, float]:
    eng = Engine(lm, max_batch=batch, batch_wait_s=0.05, threads=threads)
    timed = TimedModel(lm.model)
    eng.model = timed
    eng.decoder = None if library_decode or eng.decoder is None else TimedDecoder(eng.decoder, timed)
    eng.start()
    params = SamplingParams(temperature=0, max_tokens=max_tokens)
    prompts = [chat_ids(lm, f"Write a short paragraph about {TOPICS[i % len(TOPICS)]} (note {i}).")
               for i in range(batch)]
    eng.submit("warm", prompts[0], SamplingParams(temperature=0, max_tokens=4)).result()
    timed.decode_s = timed.prefill_s = 0.0
    timed.decode_calls = 0
    steps0 = eng.steps
    started = time.perf_counter()
    futures = [eng.submit(f"r{i}", p, params) for i, p in enumerate(prompts)]
    tokens = sum(f.result().completion_tokens for f in futures)
    wall = time.perf_counter() - started
    steps = eng.steps - steps0
    eng.stop()
    other = wall - timed.decode_s - timed.prefill_s
    return {"tok_s": tokens / wall, "step_ms": 1000 * (wall - timed.prefill_s) / max(steps, 1),
            "forward_ms": 1000 * timed.decode_s / max(timed.decode_calls, 1),
            "other_ms": 1000 * other / max(steps, 1), "prefill_s": timed.prefill_s, "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--weights", default="auto", choices=["auto", "int8", "full"])
    parser.add_argument("--library-decode", action="store_true",
                        help="also decode and prefill through transformers' forward")
    args = parser.parse_args()
    settings = Settings(_env_file=None)
    spec = settings.model(DEFAULT_MODEL_ID).model_copy(update={"dtype": args.dtype, "weights": args.weights})  # type: ignore[union-attr]
    own_parallelism()  # as a worker does: the engine thread alone runs kernels (device.py)
    lm = load(spec, settings.cache_dir, cpu_bf16=settings.cpu_auto_bf16)
    torch.set_grad_enabled(False)
    figures: dict[str, dict[str, float]] = {}
    for threads in [int(t) for t in args.threads.split(",")]:
        for batch in [int(b) for b in args.batches.split(",")]:
            for library in ([False, True] if args.library_decode else [False]):
                f = run(lm, batch, args.max_tokens, threads, library_decode=library)
                name = f"b{batch}_t{threads}" + ("_library" if library else "")
                figures[name] = {k: round(v, 2) for k, v in f.items()}
                print(f"batch {batch:3d} threads {threads}{' library decode' if library else ''}: "
                      f"{f['tok_s']:7.1f} tok/s  step {f['step_ms']:6.1f} ms (forward {f['forward_ms']:6.1f}, "
                      f"rest {f['other_ms']:5.1f})  prefill {f['prefill_s']:.2f}s  load {os.getloadavg()[0]:.2f}",
                      flush=True)
            if args.library_decode:
                ours, theirs = figures[f"b{batch}_t{threads}"], figures[f"b{batch}_t{threads}_library"]
                ours["vs_library"] = round(ours["tok_s"] / theirs["tok_s"], 2)
                print(f"  own decoding step vs the library's: {ours['vs_library']:.2f}x", flush=True)
    print(json.dumps({"dtype": lm.dtype, "weights": lm.weights, "load_avg": round(os.getloadavg()[0], 2), **figures}))


if __name__ == "__main__":
    main()
