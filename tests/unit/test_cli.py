import pytest
import typer

from textgen_cli.main import parse_gpus
from textgen_cli.processes import gpu_environment, worker_command, worker_name
from textgen_core.settings import Settings


def test_gpu_pinning_environment() -> None:
    assert gpu_environment(None) == {}
    assert gpu_environment(1) == {"CUDA_VISIBLE_DEVICES": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def test_parse_gpus() -> None:
    assert parse_gpus(None, None) == [None]
    assert parse_gpus(2, None) == [2]
    assert parse_gpus(None, "0,1") == [0, 1]
    with pytest.raises(typer.BadParameter):
        parse_gpus(0, "1")
    with pytest.raises(typer.BadParameter):
        parse_gpus(None, "a,b")


def test_worker_is_named_after_its_gpu_and_uses_a_non_forking_pool() -> None:
    assert worker_name(3).startswith("textgen-gpu3@")
    cmd = worker_command(Settings(_env_file=None), "w@h")
    assert cmd[cmd.index("--pool") + 1] == "threads"
    # The default model's max batch plus the slots kept for interactive jobs.
    assert cmd[cmd.index("--concurrency") + 1] == "68"  # 64 rows on a CPU by default, plus 4
    gpu = worker_command(Settings(_env_file=None), "w@h", device="cuda")
    assert gpu[gpu.index("--concurrency") + 1] == "132"  # a CUDA engine's 128 rows, plus 4
