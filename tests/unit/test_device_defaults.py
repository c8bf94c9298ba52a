"""The device-aware defaults: bf16 only where the CPU computes it natively."""

from pathlib import Path

import pytest

from textgen_core.engine.device import (
    auto_dtype,
    cpu_flags,
    default_max_batch,
    resolve_dtype,
    resolve_weights,
    worker_threads,
)
from textgen_core.settings import ModelSpec, Settings

SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
COOPER_LAKE = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n"
SKYLAKE = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n"
GRAVITON = "processor\t: 0\nFeatures\t: fp asimd sve\n"


def test_bf16_on_cpus_with_amx_or_avx512_bf16_only() -> None:
    assert auto_dtype("cpu", cpu_flags(SAPPHIRE_RAPIDS)) == "bfloat16"
    assert auto_dtype("cpu", cpu_flags(COOPER_LAKE)) == "bfloat16"
    assert auto_dtype("cpu", frozenset({"amx_bf16"})) == "bfloat16"
    # AVX512 without its bf16 extension would emulate bf16, slower than fp32.
    assert auto_dtype("cpu", cpu_flags(SKYLAKE)) == "float32"
    assert auto_dtype("cpu", cpu_flags(GRAVITON)) == "float32"
    assert auto_dtype("cpu", cpu_flags("")) == "float32"


def test_cuda_gets_float16_and_an_explicit_dtype_always_wins() -> None:
    assert auto_dtype("cuda", frozenset()) == "float16"
    assert auto_dtype("cuda:1", cpu_flags(SAPPHIRE_RAPIDS)) == "float16"
    assert resolve_dtype("float32", "cpu", cpu_flags(SAPPHIRE_RAPIDS)) == "float32"
    assert resolve_dtype("auto", "cpu", cpu_flags(SKYLAKE)) == "float32"
    assert resolve_dtype("auto", "cpu", cpu_flags(COOPER_LAKE), cpu_bf16=True) == "bfloat16"


def test_a_worker_picks_bf16_on_a_native_cpu_unless_turned_off() -> None:
    assert Settings(_env_file=None).cpu_auto_bf16 is True
    assert resolve_dtype("auto", "cpu", cpu_flags(SAPPHIRE_RAPIDS)) == "bfloat16"
    assert auto_dtype("cpu", cpu_flags(SAPPHIRE_RAPIDS), cpu_bf16=False) == "float32"
    assert resolve_dtype("auto", "cpu", cpu_flags(SAPPHIRE_RAPIDS), cpu_bf16=False) == "float32"
    assert resolve_dtype("auto", "cpu", cpu_bf16=False) == "float32"


def test_int8_weights_go_with_bf16_activations_on_a_cpu_only() -> None:
    assert resolve_weights("auto", "cpu", "bfloat16") == "int8"
    assert resolve_weights("auto", "cpu", "float32") == "full"
    assert resolve_weights("auto", "cuda", "float16") == "full"
    assert resolve_weights("full", "cpu", "bfloat16") == "full"
    assert resolve_weights("int8", "cpu", "bfloat16") == "int8"
    for device, dtype in (("cpu", "float32"), ("cuda", "bfloat16")):
        with pytest.raises(ValueError, match="vllm.quantization"):
            resolve_weights("int8", device, dtype)


def test_auto_reads_this_machines_cpuinfo() -> None:
    flags = cpu_flags(Path("/proc/cpuinfo").read_text()) if Path("/proc/cpuinfo").exists() else frozenset()
    expected = "bfloat16" if {"amx_bf16", "avx512_bf16"} & flags else "float32"
    assert resolve_dtype("auto", "cpu", cpu_bf16=True) == expected


def test_batch_size_and_threads_default_per_device() -> None:
    assert ModelSpec(id="m").max_batch is None
    assert default_max_batch("cpu") == 64
    assert default_max_batch("cuda:0") > default_max_batch("cpu")
    assert worker_threads(None, available=2) == 2
    assert worker_threads(3, available=2) == 3
    assert worker_threads(None) >= 1
