# One target for each thing a person does. `make demo` runs the main job; `make test` the tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

TORCH_STAMP := $(VENV)/.torch

.PHONY: install install-torch install-ray demo test test-fast lint proto bench bench-deadline bench-flower experiments clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install hgo with the dev extras

# The optional PyTorch models (hgo[torch]). Pinned to 2.13.0, of which a CPU build
# (torch-2.13.0+cpu, 192 MB) is offered here; an unpinned `pip install torch` would take
# the newest CUDA build (several GB with its nvidia-* wheels). Without torch, the torch
# tests skip and say so.
$(TORCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet 'torch==2.13.0'
	touch $(TORCH_STAMP)

install-torch: $(TORCH_STAMP)  ## add PyTorch (CPU) to .venv for the cnn model and the torch tests

# The optional Ray executor of hgo-experiment (hgo[ray]; the wheel is about 79 MB). Without
# it, `hgo-experiment run --ray` says how to install it and the Ray test skips with the reason.
RAY_STAMP := $(VENV)/.ray
$(RAY_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[ray]'
	touch $(RAY_STAMP)

install-ray: $(RAY_STAMP)  ## add Ray to .venv for hgo-experiment run --ray and its test

demo: $(STAMP)  ## a local cluster training on a bundled dataset (about 1-2 minutes on 2 cores)
	$(BIN)/hgo-run --out runs/demo
	$(BIN)/hgo-plot runs/demo/round_log.jsonl --label demo --out runs/demo/plots

test: $(STAMP)  ## the whole test suite, the long runs marked slow included (what CI runs; ~16 min on 2 cores, docker tests included)
	$(BIN)/pytest -q

test-fast: $(STAMP)  ## the suite without the long runs marked slow (~4-5 min)
	$(BIN)/pytest -q -m "not slow"

lint: $(TORCH_STAMP)  ## ruff on everything, mypy strict on every package (torch installed: the adapter is typed against it)
	$(BIN)/ruff check hgo_common hgo_server hgo_worker hgo_lab tests tools bench examples
	$(BIN)/mypy
	$(BIN)/mypy --strict examples/hgo-example-plugin/src

proto: $(STAMP)  ## regenerate the committed gRPC stubs from proto/
	$(BIN)/python tools/gen_proto.py

bench: $(STAMP)  ## benchmarks that print their figures (recorded in docs/benchmarks.md; about 4 minutes)
	$(BIN)/python bench/bench_blocks.py
	$(BIN)/python bench/bench_server_round.py
	$(BIN)/python bench/bench_sessions.py
	$(BIN)/python bench/bench_network.py

MNIST_DIR ?= ../shared/data/mnist

bench-deadline: $(STAMP)  ## q = 80 live sessions at tau 60/500 ms, d 785/23,860, ingest, 4,000 sessions (~2-3 min; MNIST in MNIST_DIR)
	$(BIN)/python bench/bench_deadline.py --data-dir $(MNIST_DIR)

bench-flower: $(STAMP)  ## Flower 1.42 FedAvg vs HGO, N = 10 (builds bench/.flower-venv on first use; ~5-10 min)
	$(BIN)/python bench/bench_flower.py --nodes 10 --rounds 5 --trials 2

experiments: $(STAMP)  ## the paper's figures 3-8, CI-sized (--quick), in the simulator; full runs: docs/experiments.md
	for fig in fig3 fig4 fig4-hw fig5 fig6 fig7 fig8; do $(BIN)/hgo-experiment run $$fig --quick --out runs/experiments/$$fig || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
