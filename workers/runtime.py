"""Per-process worker state: models loaded once, one engine per model, and two helper threads.

The pool is ``threads`` (see ``textgen worker``): concurrent tasks share this process, so
they share the engines and land in the same batches; nothing forks after CUDA is touched.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from textgen_core import metrics
from textgen_core.aging import BrokerAging
from textgen_core.batch_store import BatchStore
from textgen_core.cache import ResultCache, model_profile
from textgen_core.dispatch import Chunk, ChunkLeases
from textgen_core.engine.batching import Engine
from textgen_core.engine.device import default_max_batch, own_parallelism, worker_threads
from textgen_core.engine.loader import LoadedModel, load
from textgen_core.executor import JobExecutor
from textgen_core.keys import Keys
from textgen_core.leases import JobLeases, Reaped
from textgen_core.messages import BulkSender, Sender, webhook_delivery
from textgen_core.orphans import OrphanItems
from textgen_core.settings import ModelSpec, Settings, get_settings
from textgen_core.store import JobStore
from textgen_core.webhook_events.emitter import WebhookEmitter
from textgen_core.webhook_events.job_events import JobWebhooks
from workers.aging import start_aging
from workers.lanes import BulkGate
from workers.metrics import serve_metrics

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    name: str
    settings: Settings
    client: redis.Redis
    store: JobStore
    models: dict[str, LoadedModel]
    engines: dict[str, Any]  # an Engine, or a VllmEngine for models with engine "vllm"
    executor: JobExecutor
    webhooks: JobWebhooks
    batches: BatchStore
    leases: JobLeases
    chunks: ChunkLeases
    gates: dict[str, BulkGate]
    sender: BulkSender  # Celery behind it, handed in by workers.app at boot
    started_at: float = field(default_factory=time.time)
    metrics_port: int | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def heartbeat_payload(self) -> str:
        return json.dumps({
            "name": self.name,
            "started_at": self.started_at,
            "metrics_port": self.metrics_port,
            "models": [
                {
                    "id": model_id,
                    "device": m.device,
                    "dtype": m.dtype,
                    "max_batch": self.engines[model_id].max_batch,
                    "context_length": m.context_length,
                    "load_seconds": round(m.load_seconds, 2),
                    "cache_profile": self.executor.cache.profiles.get(model_id) if self.executor.cache else None,
                    "running": self.engines[model_id].running,
                    "waiting": self.engines[model_id].waiting,
                }
                for model_id, m in self.models.items()
            ],
        })

    def _heartbeat_loop(self) -> None:
        key = self.store.keys.worker(self.name)
        period = self.settings.heartbeat_seconds
        while True:
            try:
                self.client.set(key, self.heartbeat_payload(), ex=max(2, int(period * 3)))
                self.leases.renew()
                self.chunks.renew()
            except redis.RedisError as exc:
                log.warning("heartbeat failed: %s", exc)
            if self._stop.wait(period):
                break
        try:
            self.client.delete(key)
        except redis.RedisError:
            pass

    def _cancel_loop(self) -> None:
        """Cancels requested while a job runs arrive on a channel; stop the row at the next step."""
        while not self._stop.is_set():
            try:
                pubsub = self.client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self.store.keys.cancel_channel)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message and message["type"] == "message":
                        self.executor.cancel(message["data"])
            except redis.RedisError as exc:
                log.warning("cancel listener reconnecting: %s", exc)
                self._stop.wait(1.0)

    def start_threads(self) -> None:
        for target, name in ((self._heartbeat_loop, "heartbeat"), (self._cancel_loop, "cancel-listener")):
            threading.Thread(target=target, name=f"textgen-{name}", daemon=True).start()
        start_aging(BrokerAging(self.client, self.store.keys, list(self.engines), self.settings.priority_aging_seconds),
                    self._stop)

    def start_reaper(self, resend: Callable[[Reaped], None], resend_chunk: Callable[[Chunk], None]) -> None:
        from workers.reaper import start_reaper

        orphans = OrphanItems(self.client, self.store.keys, list(self.engines))
        start_reaper(self.leases, self.chunks, orphans, self.settings.lease_reap_seconds, resend, resend_chunk,
                     self._stop)

    def stop(self) -> None:
        self._stop.set()
        for engine in self.engines.values():
            engine.stop()


_runtime: Runtime | None = None


def start_runtime(model_ids: list[str], name: str, sender: BulkSender) -> Runtime:
    """Load every served model once and start the engines; called when the worker boots."""
    global _runtime
    if _runtime is not None:
        return _runtime
    settings = get_settings()
    threads = worker_threads(settings.torch_threads)
    own_parallelism()  # the engines' threads run the kernels, `threads` each
    # A few quick retries ride out a Redis restart (stale connections, a second or two down); the
    # scripts are safe to run again (a lost claim or reap is left to lapse and reaped, see leases.py).
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True, health_check_interval=30,
                                  retry=Retry(ExponentialBackoff(cap=1.0, base=0.1), 6))
    store = JobStore(
        client,
        Keys(settings.key_prefix),
        job_ttl=settings.job_ttl_seconds,
        stream_ttl=settings.stream_ttl_seconds,
        stream_maxlen=settings.stream_maxlen,
        lease_seconds=settings.lease_seconds,
    )
    models: dict[str, LoadedModel] = {}
    engines: dict[str, Any] = {}
    for model_id in model_ids:
        spec = settings.model(model_id)
        assert spec is not None
        if settings.worker_dtype:
            spec = spec.model_copy(update={"dtype": settings.worker_dtype})
        if spec.engine == "vllm":
            models[model_id], engines[model_id] = start_vllm(spec, settings, store)
            continue
        loaded = load(spec, settings.cache_dir, cpu_bf16=settings.cpu_auto_bf16)
        log.info("loaded %s on %s (%s) in %.1fs", model_id, loaded.device, loaded.dtype, loaded.load_seconds,
                 extra={"model": model_id, "device": loaded.device, "load_seconds": round(loaded.load_seconds, 3)})
        metrics.MODEL_LOAD_SECONDS.labels(model_id, loaded.device, loaded.dtype).set(loaded.load_seconds)
        models[model_id] = loaded
        engines[model_id] = Engine(
            loaded,
            max_batch=spec.max_batch or default_max_batch(loaded.device),
            batch_wait_s=settings.batch_wait_ms / 1000,
            time_limit_s=settings.generation_time_limit_seconds,
            on_step=store.append_deltas,
            interactive_headroom=settings.interactive_headroom,
            bulk_rows_with_interactive=settings.bulk_rows_with_interactive,
            bulk_prefill_rows=settings.bulk_prefill_rows,
            priority_aging_s=settings.priority_aging_seconds,
            threads=threads,
        ).start()
    webhooks = JobWebhooks(store, webhook_emitter(client, store.keys, sender), settings.webhook_output_interval_seconds,
                           settings.webhook_batch_progress_seconds, settings.webhook_outbox_grace_seconds)
    store.on_terminal = webhooks.completed
    keys = Keys(settings.key_prefix)
    executor = JobExecutor(
        store=store,
        settings=settings,
        worker_name=name,
        engines=dict(engines),
        tokenizers={model_id: m.tokenizer for model_id, m in models.items()},
        webhooks=webhooks,
        cache=result_cache(settings, client, keys, models),
    )
    gates = {
        model_id: BulkGate(client, keys.queue(model_id, "interactive"), engine.max_batch)
        for model_id, engine in engines.items()
    }
    _runtime = Runtime(name=name, settings=settings, client=client, store=store, models=models,
                       engines=engines, executor=executor, webhooks=webhooks,
                       batches=BatchStore(client, keys, ttl=settings.job_ttl_seconds,
                                          stream_ttl=settings.stream_ttl_seconds),
                       leases=JobLeases(client, keys, lease_seconds=settings.lease_seconds,
                                        ttl=settings.job_ttl_seconds),
                       chunks=ChunkLeases(client, keys, lease_seconds=settings.lease_seconds,
                                          ttl=settings.job_ttl_seconds),
                       gates=gates, sender=sender)
    _runtime.metrics_port = serve_metrics(_runtime, settings.worker_metrics_port, settings.worker_metrics_host)
    _runtime.start_threads()
    return _runtime


def start_vllm(spec: ModelSpec, settings: Settings, store: JobStore) -> tuple[LoadedModel, Any]:
    """Load ``spec`` into vLLM's async engine (imported only here: vLLM lives in its own environment)."""
    from textgen_core.engine.vllm_engine import VllmEngine, load_for_vllm

    loaded = load_for_vllm(spec, settings.cache_dir, settings.worker_dtype)
    engine = VllmEngine(spec, loaded, max_batch=spec.max_batch,
                        max_num_seqs=spec.vllm.max_num_seqs or spec.max_batch + settings.interactive_headroom,
                        time_limit_s=settings.generation_time_limit_seconds, on_step=store.append_deltas,
                        tensor_parallel=settings.worker_tensor_parallel).start()
    loaded.load_seconds += engine.load_seconds
    log.info("loaded %s into vLLM on %s (%s) in %.1fs", spec.id, loaded.device, loaded.dtype, loaded.load_seconds,
             extra={"model": spec.id, "device": loaded.device, "load_seconds": round(loaded.load_seconds, 3)})
    metrics.MODEL_LOAD_SECONDS.labels(spec.id, loaded.device, loaded.dtype).set(loaded.load_seconds)
    return loaded, engine


def result_cache(settings: Settings, client: redis.Redis, keys: Keys, models: dict[str, LoadedModel]) -> ResultCache:
    """The cache every claimed job consults; jobs the API did not mark cacheable pass straight through."""
    cache_client = client
    if settings.cache_redis_url:
        cache_client = redis.Redis.from_url(settings.cache_redis_url, decode_responses=True, health_check_interval=30)
    profiles = {model_id: model_profile(m, settings.cache_dir) for model_id, m in models.items()}
    return ResultCache(cache_client, keys, profiles, wait_seconds=settings.cache_wait_seconds,
                       lead_ttl=settings.cache_lead_ttl_seconds)


def webhook_emitter(client: redis.Redis, keys: Keys, sender: Sender) -> WebhookEmitter:
    """Queues webhook events on the webhooks queue (``emit`` is the one call for any event)."""

    def send(request: dict[str, object]) -> None:
        sender.send(webhook_delivery(keys, request))

    return WebhookEmitter(client, keys, send)


def runtime() -> Runtime:
    if _runtime is None:
        raise RuntimeError("worker runtime not started (the worker_init signal did not run)")
    return _runtime


def stop_runtime() -> None:
    if _runtime is not None:
        _runtime.stop()
