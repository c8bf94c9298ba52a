"""Command lines and environments for the platform's processes (used by the CLI and the tests)."""

from __future__ import annotations

import ctypes
import importlib.util
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from textgen_core.engine.device import default_max_batch
from textgen_core.settings import ModelSpec, Settings


def gpu_environment(gpu: int | None) -> dict[str, str]:
    """Environment that pins a worker to one GPU; must be set before torch is imported."""
    if gpu is None:
        return {}
    return {"CUDA_VISIBLE_DEVICES": str(gpu), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def gpu_group_environment(gpus: list[int]) -> dict[str, str]:
    """Environment that gives one worker several GPUs (vLLM tensor parallelism across them)."""
    return {"CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus)), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def tensor_parallel_groups(devices: list[int | None], tensor_parallel: int) -> list[list[int]]:
    """``--gpus 0,1,2,3 --tensor-parallel 2`` -> [[0, 1], [2, 3]]: one worker process per group."""
    gpus = [d for d in devices if d is not None]
    if not gpus or len(gpus) % tensor_parallel:
        raise ValueError(f"--tensor-parallel {tensor_parallel} needs --gpus with a multiple of "
                         f"{tensor_parallel} GPU indexes, e.g. --gpus {','.join(map(str, range(tensor_parallel)))}")
    return [gpus[i:i + tensor_parallel] for i in range(0, len(gpus), tensor_parallel)]


def worker_name(gpu: int | None, index: int = 0) -> str:
    device = f"gpu{gpu}" if gpu is not None else ("cpu" if index == 0 else f"cpu{index}")
    return f"textgen-{device}@{socket.gethostname()}"


class VllmEnvironmentMissing(RuntimeError):
    """A served model runs on vLLM and no Python with vLLM is at hand."""


VLLM_VENV = Path(__file__).resolve().parents[1] / ".venv-vllm"


def worker_python(settings: Settings, served: list[ModelSpec]) -> str:
    """The Python a worker runs on: vLLM models need the environment that has vLLM (its pins differ
    from ours, so it is a second one, ``make install-vllm``); every other worker runs on this one."""
    vllm_models = [m.id for m in served if m.engine == "vllm"]
    if not vllm_models:
        return sys.executable
    if settings.vllm_python:
        return settings.vllm_python
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    python = VLLM_VENV / "bin" / "python"
    if not python.exists():
        raise VllmEnvironmentMissing(
            f"model {', '.join(vllm_models)} runs on vLLM, whose worker needs the environment {VLLM_VENV}: "
            "run `make install-vllm` (or set TEXTGEN_VLLM_PYTHON to a Python that has vLLM and textgen)"
        )
    return str(python)


def worker_command(settings: Settings, name: str, concurrency: int | None = None,
                   loglevel: str | None = None, device: str = "cpu") -> list[str]:
    """A Celery worker on the threads pool: concurrent tasks share one process, one model copy
    and one batching engine; the pool never forks, so CUDA stays safe."""
    served = [m for m in settings.models if not settings.worker_models or m.id in settings.worker_models]
    # Bulk items hold at most max_batch slots per model; the headroom keeps slots free for
    # interactive jobs however deep the bulk backlog (see workers/lanes.py).
    slots = concurrency or sum((m.max_batch or default_max_batch(device)) + settings.interactive_headroom
                               for m in served)
    return [
        # --quiet: no banner (the settings are in the ready message and the heartbeat).
        worker_python(settings, served), "-m", "celery", "--quiet", "-A", "workers.app", "worker",
        "--pool", "threads", "--concurrency", str(slots), "--hostname", name,
        "--loglevel", (loglevel or settings.log_level).upper(), "--without-gossip", "--without-mingle",
    ]


def webhook_worker_name() -> str:
    return f"textgen-webhooks@{socket.gethostname()}"


def webhook_worker_command(settings: Settings, name: str, loglevel: str | None = None) -> list[str]:
    """The webhook worker: no model, only the webhooks queue; threads, because deliveries wait on I/O."""
    from textgen_core.keys import Keys

    return [
        sys.executable, "-m", "celery", "--quiet", "-A", "workers.webhook_app", "worker",
        "--pool", "threads", "--concurrency", str(settings.webhook_worker_concurrency), "--hostname", name,
        "--queues", Keys(settings.key_prefix).webhook_queue,
        "--loglevel", (loglevel or settings.log_level).upper(), "--without-gossip", "--without-mingle",
    ]


def worker_metrics_env(settings: Settings, index: int) -> dict[str, str]:
    """The n-th worker process on a machine serves metrics on base port + n (0 stays off)."""
    base = settings.worker_metrics_port
    return {"TEXTGEN_WORKER_METRICS_PORT": str(base + index if base else 0)}


def flower_command(settings: Settings, host: str = "0.0.0.0", port: int | None = None) -> list[str]:
    """Flower on the platform's broker; basic auth from settings. ``--config`` instead of ``-A``:
    Flower needs the broker and queues only, not the worker code (and its torch)."""
    return [
        sys.executable, "-m", "celery", "--config", "celeryconfig", "flower",
        f"--address={host}", f"--port={port or settings.flower_port}",
        f"--basic-auth={settings.flower_basic_auth}", "--persistent=False",
        f"--logging={settings.log_level.lower()}",
    ]


INSTANCE_HEADER = "X-Textgen-Instance"


def api_command(host: str, port: int, loglevel: str = "info", instance: str | None = None) -> list[str]:
    """uvicorn serving the API; ``instance`` goes out as a header on every response, so whoever
    started it can tell its own API from another server answering on the same port."""
    extra = ["--header", f"{INSTANCE_HEADER}:{instance}"] if instance else []
    return [sys.executable, "-m", "uvicorn", "api.main:app", "--host", host, "--port", str(port),
            "--log-level", loglevel.lower(), "--no-access-log", *extra]


def child_env(**overrides: str) -> dict[str, str]:
    return {**os.environ, **overrides}


_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _end_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def supervised_popen_kwargs() -> dict[str, Any]:
    """Popen arguments for a supervised child: its own process group, so a terminal's Ctrl-C
    reaches the supervisor alone (which stops the children in order), and on Linux a SIGTERM
    when the supervisor dies, however it dies (no orphans holding ports)."""
    return {"process_group": 0, "preexec_fn": _end_with_parent}
