# One command per job. Each sets up .venv first (CPU torch wheel unless a GPU is present).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
REF_VENV  ?= .venv-ref
REF_STAMP := $(REF_VENV)/.installed
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: setup train test test-slow test-reference test-gpu bench clean

$(STAMP): pyproject.toml
	bash scripts/setup.sh $(VENV) $(PY)
	touch $(STAMP)

setup: $(STAMP)                          ## create .venv and install the project

train: $(STAMP)                          ## the embedded default: digits, 4 async workers, 2 shards
	$(BIN)/ps-train $(ARGS)

test: $(STAMP)                           ## the default test run (< 10 min on 2 cores)
	$(BIN)/python -m pytest -q --durations=15 $(ARGS)

test-slow: $(STAMP)                      ## the slow tests (full-size models, long runs)
	$(BIN)/python -m pytest -q -m slow --durations=15 $(ARGS)

$(REF_STAMP): pyproject.toml scripts/setup_reference.sh
	bash scripts/setup_reference.sh $(REF_VENV) $(PY)
	touch $(REF_STAMP)

test-reference: $(REF_STAMP)             ## torchvision/timm equivalence, in .venv-ref (~6 GB, torch 2.14.1)
	bash scripts/test_reference.sh $(REF_VENV) $(ARGS)

test-gpu: $(STAMP)                       ## GPU tests (on a machine with CUDA)
	$(BIN)/python -m pytest -q -m gpu $(ARGS)

bench: $(STAMP)                          ## benchmarks; results go to docs/benchmarks.md
	$(BIN)/python benchmarks/bench_shard_update.py
	$(BIN)/python benchmarks/bench_worker.py

clean:
	rm -rf $(VENV) $(REF_VENV) runs .pytest_cache
