"""Choosing the vLLM backend is configuration: the model entry, the worker's Python, GPU groups."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from textgen_cli import processes
from textgen_cli.processes import VllmEnvironmentMissing, tensor_parallel_groups, worker_command
from textgen_core.settings import Settings


def settings(**entry: object) -> Settings:
    return Settings(_env_file=None, models=[{"id": "m", **entry}], default_model="m")


def test_a_model_runs_on_transformers_unless_it_asks_for_vllm() -> None:
    plain = settings().models[0]
    assert plain.engine == "transformers"
    spec = settings(engine="vllm", vllm={"tensor_parallel_size": 2, "max_num_seqs": 64}).models[0]
    assert spec.engine == "vllm" and spec.vllm.tensor_parallel_size == 2 and spec.vllm.max_num_seqs == 64
    assert spec.vllm.enable_prefix_caching is True


@pytest.mark.parametrize("entry", [{"engine": "tensorrt"}, {"engine": "vllm", "vllm": {"tensor_parallel_size": 0}},
                                   {"engine": "vllm", "vllm": {"gpu_memory_utilization": 1.5}}])
def test_bad_engine_settings_are_refused(entry: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        settings(**entry)


def test_a_transformers_worker_runs_on_this_python() -> None:
    assert worker_command(settings(), "w@h")[0] == sys.executable


def test_a_vllm_worker_without_its_environment_says_how_to_make_it(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    monkeypatch.setattr(processes, "VLLM_VENV", tmp_path / ".venv-vllm")
    monkeypatch.setattr(processes.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(VllmEnvironmentMissing, match="make install-vllm"):
        worker_command(settings(engine="vllm"), "w@h")


def test_a_vllm_worker_runs_on_the_vllm_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    python = tmp_path / ".venv-vllm" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.touch()
    monkeypatch.setattr(processes, "VLLM_VENV", tmp_path / ".venv-vllm")
    monkeypatch.setattr(processes.importlib.util, "find_spec", lambda name: None)
    assert worker_command(settings(engine="vllm"), "w@h")[0] == str(python)
    assert worker_command(Settings(_env_file=None, models=[{"id": "m", "engine": "vllm"}], default_model="m",
                                   vllm_python="/opt/vllm/bin/python"), "w@h")[0] == "/opt/vllm/bin/python"


def test_tensor_parallel_groups_split_the_gpus() -> None:
    assert tensor_parallel_groups([0, 1], 2) == [[0, 1]]
    assert tensor_parallel_groups([0, 1, 2, 3], 2) == [[0, 1], [2, 3]]
    with pytest.raises(ValueError, match="multiple of 2"):
        tensor_parallel_groups([0, 1, 2], 2)
    with pytest.raises(ValueError):
        tensor_parallel_groups([None], 2)


def test_worker_tensor_parallel_starts_one_process_per_gpu_group(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from textgen_cli import main

    started: list[tuple[str, dict[str, str]]] = []
    monkeypatch.setattr(main.Supervisor, "start", lambda self, name, cmd, env: started.append((name, env)))
    monkeypatch.setattr(main.Supervisor, "dead", lambda self: "gpu0-1")  # end the supervision loop at once
    monkeypatch.setattr(main, "_stop_on_signals", lambda: None)
    result = CliRunner().invoke(main.app, ["worker", "--gpus", "0,1,2,3", "--tensor-parallel", "2"])
    assert result.exit_code == 1  # "a worker exited", as the stubbed supervisor reports
    assert [name for name, _ in started] == ["gpu0-1", "gpu2-3"]
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in started] == ["0,1", "2,3"]
    assert all(env["TEXTGEN_WORKER_TENSOR_PARALLEL"] == "2" for _, env in started)
    bad = CliRunner().invoke(main.app, ["worker", "--gpus", "0,1,2", "--tensor-parallel", "2"])
    assert bad.exit_code == 2 and "multiple of 2" in bad.output


def test_textgen_up_without_the_vllm_environment_exits_with_the_fix(monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from textgen_cli import main

    monkeypatch.setattr(processes, "VLLM_VENV", tmp_path / ".venv-vllm")
    monkeypatch.setattr(processes.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setenv("TEXTGEN_MODELS", '[{"id": "smollm2-135m-instruct", "engine": "vllm"}]')
    main.get_settings.cache_clear()
    try:
        result = CliRunner().invoke(main.app, ["up"])
    finally:
        main.get_settings.cache_clear()
    assert result.exit_code == 2
    assert "make install-vllm" in " ".join(result.output.split())


def test_the_cache_profile_names_the_engine() -> None:
    from textgen_core.cache import model_profile
    from textgen_core.engine.loader import LoadedModel

    spec = settings().models[0].model_copy(update={"source": "hub", "location": "org/model", "revision": "abc"})
    ours = LoadedModel(spec=spec, model=None, tokenizer=None, device="cpu", dtype="float32", context_length=2048,
                       eos_token_ids=frozenset({2}), load_seconds=0.0)
    theirs = LoadedModel(**{**ours.__dict__, "engine": "vllm-0.32.0"})
    cache_dir = Path("/nonexistent")
    assert model_profile(ours, cache_dir) == "org/model@abc|cpu|float32|transformers"
    assert model_profile(theirs, cache_dir) == "org/model@abc|cpu|float32|vllm-0.32.0"
    int8 = LoadedModel(**{**ours.__dict__, "dtype": "bfloat16", "weights": "int8"})
    assert model_profile(int8, cache_dir) == "org/model@abc|cpu|bfloat16+int8|transformers"
