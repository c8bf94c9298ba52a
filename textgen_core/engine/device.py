"""Device-aware defaults: the dtype, batch size and thread count a worker runs with unless told.

Pure functions over what the machine reports (``/proc/cpuinfo`` flags, the CPUs this process
may use), so each choice is unit-tested without the hardware. bf16 only pays on CPUs that compute
it natively (AMX or AVX512-BF16); elsewhere it is emulated and slower than fp32. Where it is native
it is the default (``cpu_auto_bf16``), with int8 weights and activations in the linear layers
(``quantize.py``): on a 2-core AVX512-BF16 CPU one request decoded 2-3x as fast as in fp32, 64 at
once 2-3x, and 64 prompts prefilled in 2 s instead of 4.6-6.2 s. On a virtual machine that
reported AMX, bf16 products of 64 rows once measured 3x slower than fp32: ``cpu_auto_bf16=false``
is the way back, and ``bench/engine_step.py`` the way to tell. Greedy text is the same alone and
in a batch either way (``attention.py``, ``quantize.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

# CPU flags (as /proc/cpuinfo names them) that give native bf16 matrix arithmetic.
BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})

# Rows per decoding step when a model's max_batch is not set. On a CPU a step's cost grows with
# the rows, so 64 is where throughput stops rising for a small model; a GPU keeps gaining longer.
DEFAULT_MAX_BATCH = {"cpu": 64, "cuda": 128}


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags of the first CPU listed in ``/proc/cpuinfo`` text."""
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def read_cpu_flags(path: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    try:
        return cpu_flags(path.read_text())
    except OSError:  # not Linux: no flags known, so no bf16 by default
        return frozenset()


def auto_dtype(device: str, flags: frozenset[str], cpu_bf16: bool = True) -> str:
    """float16 on CUDA; on a CPU, bfloat16 where it is native and allowed (``cpu_bf16``), else float32."""
    if device.startswith("cuda"):
        return "float16"
    if device == "cpu" and cpu_bf16 and flags & BF16_CPU_FLAGS:
        return "bfloat16"
    return "float32"


def resolve_dtype(requested: str, device: str, flags: frozenset[str] | None = None, *,
                  cpu_bf16: bool = True) -> str:
    if requested != "auto":
        return requested
    if flags is None:
        flags = read_cpu_flags() if device == "cpu" and cpu_bf16 else frozenset()
    return auto_dtype(device, flags, cpu_bf16)


def resolve_weights(requested: str, device: str, dtype: str) -> str:
    """int8 where asked, or by default where the activations are bfloat16 on a CPU (``quantize.py``);
    full elsewhere (a GPU quantizes with vLLM's own kernels)."""
    if requested == "int8" and not (device == "cpu" and dtype == "bfloat16"):
        raise ValueError(f"weights int8 runs on a CPU with dtype bfloat16, not {device} with {dtype}; "
                         f"on a GPU use engine vllm with vllm.quantization")
    if requested == "auto":
        return "int8" if device == "cpu" and dtype == "bfloat16" else "full"
    return requested


def default_max_batch(device: str) -> int:
    return DEFAULT_MAX_BATCH["cuda" if device.startswith("cuda") else "cpu"]


def worker_threads(requested: int | None, available: int | None = None) -> int:
    """Torch threads: as asked, else one per CPU this process may run on (its affinity or cgroup
    share, not the host's count, which oversubscribes a container and slows every step)."""
    if requested:
        return requested
    if available is None:
        available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, available)


def own_parallelism() -> None:
    """Keep the calling thread (a worker's main thread, which loads the models) off OpenMP teams,
    so the engine thread's team is the process's only one. Call it before any torch work.

    torch runs a CPU kernel on an OpenMP team of the thread that calls it. Once a second thread has
    a team, libgomp counts more threads than CPUs and stops its workers spinning between parallel
    regions: every kernel in the engine thread then waits for a woken thread. On a 2-core virtual
    machine small ops (an ``exp`` of 2,000 numbers) ran 10x slower and int8 products of one row 3x.
    A team, once made, stays: this must run before the thread's first parallel kernel."""
    import torch

    torch.set_num_threads(1)

