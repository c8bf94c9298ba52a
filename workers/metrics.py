"""A worker process's own Prometheus endpoint: job and engine metrics (``textgen_core.metrics``)
plus figures read at scrape time (running and waiting jobs, GPU memory), so nothing is
sampled in the decoding loop. One port per process: ``--gpus 0,1`` gives base, base+1."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Protocol

from prometheus_client import REGISTRY, disable_created_metrics, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

disable_created_metrics()

# Gauges read at scrape time by RuntimeCollector (the registry lists the others).
RUNTIME_METRICS = ("textgen_worker_jobs_running", "textgen_worker_jobs_waiting", "textgen_gpu_memory_allocated_bytes",
                   "textgen_gpu_memory_reserved_bytes", "textgen_gpu_memory_total_bytes")


class EngineLoad(Protocol):
    @property
    def running(self) -> int: ...

    @property
    def waiting(self) -> int: ...


class ObservedWorker(Protocol):
    """What the collector reads of a worker's runtime (``workers.runtime.Runtime`` is one): named
    here, so this module need not import the runtime that starts it."""

    @property
    def name(self) -> str: ...

    @property
    def engines(self) -> Mapping[str, EngineLoad]: ...


class RuntimeCollector(Collector):
    def __init__(self, runtime: ObservedWorker):
        self.runtime = runtime

    def collect(self) -> Iterable[GaugeMetricFamily]:
        running = GaugeMetricFamily("textgen_worker_jobs_running", "Jobs in this worker's running batch.",
                                    labels=("model", "worker"))
        waiting = GaugeMetricFamily("textgen_worker_jobs_waiting",
                                    "Jobs handed to this worker's engine, waiting to join the batch.",
                                    labels=("model", "worker"))
        for model_id, engine in self.runtime.engines.items():
            running.add_metric((model_id, self.runtime.name), engine.running)
            waiting.add_metric((model_id, self.runtime.name), engine.waiting)
        yield running
        yield waiting
        yield from _gpu_memory(self.runtime.name)


def _gpu_memory(worker: str) -> Iterable[GaugeMetricFamily]:
    import torch

    if not torch.cuda.is_available():
        return
    allocated = GaugeMetricFamily("textgen_gpu_memory_allocated_bytes", "GPU memory held by tensors.",
                                  labels=("worker", "device"))
    reserved = GaugeMetricFamily("textgen_gpu_memory_reserved_bytes", "GPU memory reserved by the allocator.",
                                 labels=("worker", "device"))
    total = GaugeMetricFamily("textgen_gpu_memory_total_bytes", "GPU memory on the device.",
                              labels=("worker", "device"))
    for index in range(torch.cuda.device_count()):
        name = f"cuda:{index}"
        allocated.add_metric((worker, name), torch.cuda.memory_allocated(index))
        reserved.add_metric((worker, name), torch.cuda.memory_reserved(index))
        total.add_metric((worker, name), torch.cuda.get_device_properties(index).total_memory)
    yield allocated
    yield reserved
    yield total


def serve_metrics(runtime: ObservedWorker, port: int, host: str = "127.0.0.1") -> int | None:
    """Start the metrics endpoint; a busy port is logged, never fatal (the worker still serves jobs)."""
    REGISTRY.register(RuntimeCollector(runtime))
    if not port:
        return None
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        log.error("worker metrics port %s unavailable: %s", port, exc, extra={"port": port})
        return None
    log.info("worker metrics on %s:%s", host, port, extra={"port": port, "host": host})
    return port
