"""Command lines and environments for the platform's processes (used by the CLI and the tests)."""

from __future__ import annotations

import os
import socket
import sys

from textgen_core.settings import Settings


def gpu_environment(gpu: int | None) -> dict[str, str]:
    """Environment that pins a worker to one GPU; must be set before torch is imported."""
    if gpu is None:
        return {}
    return {"CUDA_VISIBLE_DEVICES": str(gpu), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def worker_name(gpu: int | None, index: int = 0) -> str:
    device = f"gpu{gpu}" if gpu is not None else ("cpu" if index == 0 else f"cpu{index}")
    return f"textgen-{device}@{socket.gethostname()}"


def worker_command(settings: Settings, name: str, concurrency: int | None = None,
                   loglevel: str | None = None) -> list[str]:
    """A Celery worker on the threads pool: concurrent tasks share one process, one model copy
    and one batching engine; the pool never forks, so CUDA stays safe."""
    served = [m for m in settings.models if not settings.worker_models or m.id in settings.worker_models]
    # Bulk items hold at most max_batch slots per model; the headroom keeps slots free for
    # interactive jobs however deep the bulk backlog (see workers/lanes.py).
    slots = concurrency or sum(m.max_batch + settings.interactive_headroom for m in served)
    return [
        sys.executable, "-m", "celery", "-A", "workers.app", "worker",
        "--pool", "threads", "--concurrency", str(slots), "--hostname", name,
        "--loglevel", (loglevel or settings.log_level).upper(), "--without-gossip", "--without-mingle",
    ]


def api_command(host: str, port: int, loglevel: str = "info") -> list[str]:
    return [sys.executable, "-m", "uvicorn", "api.main:app", "--host", host, "--port", str(port),
            "--log-level", loglevel.lower(), "--no-access-log"]


def child_env(**overrides: str) -> dict[str, str]:
    return {**os.environ, **overrides}
