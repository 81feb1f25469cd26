# rillet — run `make help` for the targets.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml setup.py
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is required ($(PYTHON) not found)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,eval]'
	touch $(STAMP)

install: $(STAMP) ## Create the virtualenv and install rillet with its dev tools

demo: $(STAMP) ## The whole product on the emulators (simulate, train, stream, predict, summary)
	$(BIN)/rillet demo

test: $(STAMP) ## The whole test suite, emulators included (they are started and stopped by the tests)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

test-unit: $(STAMP) ## Unit tests only
	$(BIN)/python -m pytest -q tests/unit

lint: $(STAMP) ## ruff + mypy
	$(BIN)/ruff check pipelines models tests bench terraform/check_schema.py
	$(BIN)/ruff format --check pipelines models tests bench terraform/check_schema.py
	$(BIN)/mypy pipelines models bench

checkov: ## checkov on terraform/ and dataflow/Dockerfile, offline, from its own venv (.venv-checkov)
	bash terraform/check.sh

terraform-schema: $(STAMP) ## terraform/ against the Google provider's schema (arguments, blocks, enum values), offline
	$(BIN)/python terraform/check_schema.py

emulators-up: $(STAMP) ## Start the emulators and create the resources
	$(BIN)/rillet local up

emulators-down: $(STAMP) ## Stop the emulators this checkout started
	$(BIN)/rillet local down

replay-eval: $(STAMP) ## Handbook chain: backfill, warm store, train, stream the test week, evaluate, report
	$(BIN)/rillet replay-eval --preset handbook --work-dir .rillet/replay-eval

bench-e2e: $(STAMP) ## Read-only vs full pipeline throughput and latency (last line JSON)
	$(BIN)/python -m bench.e2e

bench-scaleout: $(STAMP) ## Keyed stages' per-key work on a handbook week, replayed on 1..256 workers (last line JSON)
	$(BIN)/python -m bench.scaleout

bench-backfill: $(STAMP) ## Beam backfill vs pandas groupby-rolling on the handbook dataset (last line JSON)
	$(BIN)/python -m bench.backfill

bench-windows: $(STAMP) ## Feature engine vs Beam SlidingWindows per-event cost, ratios 1..1440 (last line JSON)
	$(BIN)/python -m bench.windows

bench-continual: $(STAMP) ## Static vs weekly retrained (8 handbook weeks) + a streaming run with swaps and shadow scoring (last line JSON)
	$(BIN)/python -m bench.continual --work-dir .rillet/continual

bench-drift: $(STAMP) ## Drift alerts: a handbook stretch replayed unchanged, then with a shift at a known time (last line JSON)
	$(BIN)/python -m bench.drift --work-dir .rillet/drift

bench-memory: $(STAMP) ## Keyed stages' memory under a small --window_cache_mb vs a large one, warm store, backlog (last line JSON)
	$(BIN)/python -m bench.memory

bench-swaps: $(STAMP) ## Model swaps in a scoring process: refresh time, scoring stalls, gc pauses, memory (last line JSON)
	$(BIN)/python -m bench.serving_swaps --work-dir .rillet/bench-swaps

bench-new-feature: $(STAMP) ## A feature added to a live payments job: partial backfill, warm, challenger, restart, shadow, promote (last line JSON)
	$(BIN)/python -m bench.new_feature --work-dir .rillet/bench-new-feature

chaos: $(STAMP) ## 20k+ transactions through SIGKILLs, bad input, Bigtable/Datastore outages; checks every store (last line JSON)
	$(BIN)/python -m bench.chaos --work-dir .rillet/chaos

chaos-overload: $(STAMP) ## Input at twice the job's capacity for 60 s: backlog, memory and drain (last line JSON)
	$(BIN)/python -m bench.chaos --work-dir .rillet/chaos-overload --preset handbook \
	  --min-transactions 130000 --kills 0 --outages "" --rate 550 --overload-s 60 --overload-rate 2200

chaos-dataflow: $(STAMP) ## The keyed stages, inference and sinks run as Dataflow streaming would: 4 workers x 4 threads, retries, moved keys, zombies (last line JSON)
	$(BIN)/python -m bench.chaos_dataflow --work-dir .rillet/chaos-dataflow

clean: ## Remove local state, data and models (not the virtualenv)
	rm -rf .rillet artifacts

.PHONY: help install demo test test-unit lint checkov terraform-schema emulators-up emulators-down replay-eval bench-e2e \
	bench-scaleout bench-backfill bench-windows bench-continual bench-drift bench-memory bench-swaps bench-new-feature chaos \
	chaos-overload chaos-dataflow clean
