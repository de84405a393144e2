# One target for each thing a person does. `make demo` runs the main job; `make test` the tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all lint proto bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install hgo with the dev extras

demo: $(STAMP)  ## a local cluster training on a bundled dataset (about 1-2 minutes on 2 cores)
	$(BIN)/hgo-run --out runs/demo
	$(BIN)/hgo-plot runs/demo/round_log.jsonl --label demo --out runs/demo/plots

test: $(STAMP)  ## the test suite CI runs (the long experiment runs included when HGO_SLOW=1)
	$(BIN)/pytest -q $(if $(HGO_SLOW),,-m "not slow")

test-all: $(STAMP)  ## every test, the long experiment runs included
	$(BIN)/pytest -q

lint: $(STAMP)  ## ruff on everything, mypy strict on the core
	$(BIN)/ruff check hgo_common hgo_server hgo_worker tests tools bench
	$(BIN)/mypy

proto: $(STAMP)  ## regenerate the committed gRPC stubs from proto/
	$(BIN)/python tools/gen_proto.py

bench: $(STAMP)  ## benchmarks that print their figures (recorded in docs/benchmarks.md; about 4 minutes)
	$(BIN)/python bench/bench_blocks.py
	$(BIN)/python bench/bench_server_round.py
	$(BIN)/python bench/bench_sessions.py
	$(BIN)/python bench/bench_network.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
