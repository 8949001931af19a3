# The two commands: `make demo` and `make test`. Both set themselves up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOME_DIR ?= lockgate-home
# C sources the install compiles (setup.py): a change reinstalls
NATIVE := src/lockgate/monitor/_ringwrite.c

.PHONY: demo test lint typecheck pytest proto docs bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed-demo: pyproject.toml setup.py $(NATIVE) | $(BIN)/python
	tools/ensure-compiler.sh $(BIN)/python
	$(BIN)/pip install -q -e '.[demo]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml setup.py $(NATIVE) | $(BIN)/python
	tools/ensure-compiler.sh $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

demo: $(VENV)/.installed-demo
	$(BIN)/lockgate serve --home $(HOME_DIR) --demo --worker examples/pipeline.toml

test: lint typecheck pytest

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks loadtests tools examples
	$(BIN)/ruff format --check src tests benchmarks loadtests tools examples

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

pytest: $(VENV)/.installed-dev
	tools/ensure-prometheus.sh
	tools/ensure-postgres.sh
	tools/ensure-perf-analyzer.sh $(BIN)/perf_analyzer
	$(BIN)/pytest -q

proto: $(VENV)/.installed-dev
	$(BIN)/python tools/gen_proto.py

docs: $(VENV)/.installed-dev
	$(BIN)/python tools/gen_docs.py

bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/serve_bench.py

clean:
	rm -rf $(VENV) $(HOME_DIR) .pytest_cache .mypy_cache .ruff_cache .benchmarks
