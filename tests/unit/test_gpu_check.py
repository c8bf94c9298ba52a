"""bench/gpu_check.sh, the parts a machine without a GPU can check: its arguments, its plan and
its budget (``--dry-run`` runs nothing)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.sh"


def gpu_check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=30, cwd=ROOT)


def test_dry_run_plans_fp16_engine_tests_and_both_benchmarks() -> None:
    done = gpu_check("--dry-run")
    assert done.returncode == 0, done.stderr
    steps = re.findall(r"^== (.+?) \(limit (\d+)s\)", done.stdout, re.M)
    names = [name for name, _ in steps]
    assert names[-5:] == ["throughput", "vllm venv", "install vllm (CUDA)", "install model package (vllm venv)",
                          "peers"]
    assert "load in fp16 on CUDA" in names and "engine tests" in names
    assert "--dtype float16" in done.stdout and "pip install --quiet vllm" in done.stdout
    assert done.stdout.rstrip().endswith("dry run: nothing was run")


def test_the_engine_tests_it_selects_exist() -> None:
    plan = gpu_check("--dry-run", "--skip-install").stdout
    selection = re.search(r'-k (.+)$', next(line for line in plan.splitlines() if "engine tests" in line)).group(1)
    tests = re.findall(r"^def (test_\w+)", (ROOT / "tests/integration/test_engine.py").read_text(), re.M)
    for term in selection.split(" or "):
        assert any(term in t for t in tests), f"-k {term!r} selects no engine test"
    assert "install torch" not in plan


def test_the_budget_bounds_every_step_and_bad_arguments_are_refused() -> None:
    plan = gpu_check("--dry-run", "--budget-s", "100", "--no-peers").stdout
    assert all(int(limit) <= 100 for limit in re.findall(r"\(limit (\d+)s\)", plan))
    assert "peers" not in plan
    octal_looking = gpu_check("--dry-run", "--budget-s", "0100", "--no-peers").stdout  # 100 s, not 64
    assert "install torch (limit 100s)" in octal_looking  # its 120 s cut to the budget, read in base 10
    spent = gpu_check("--dry-run", "--budget-s", "0")
    assert spent.returncode == 0 and "budget is spent" in spent.stdout and "== " not in spent.stdout
    for bad in (["--bogus"], ["--budget-s", "soon"]):
        refused = gpu_check(*bad)
        assert refused.returncode == 2 and bad[-1] in refused.stderr
    assert "--dry-run" in gpu_check("--help").stdout
