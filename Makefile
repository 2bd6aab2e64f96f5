# seqrec: `make demo` runs the whole pipeline on generated data; `make test` runs the test suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export GX_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 180
export PREFECT_HOME ?= $(CURDIR)/outputs/.prefect
export DASK_TEMPORARY_DIRECTORY ?= $(CURDIR)/outputs/.dask

.PHONY: install demo test bench bench-100m bench-gpu server worker dashboard chromium clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	@(command -v npm >/dev/null && $(MAKE) -s datadocs-assets) || echo "npm unavailable: GX Data Docs will not be built"
	$(BIN)/seqrec run --config configs/demo.yaml

test: $(STAMP)
	@mkdir -p $(PREFECT_HOME)  # Prefect does not create missing parents (a fresh clone has no outputs/)
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py --write BENCHMARKS.md

# The 100M-event point of the memory target (about an hour on 2 cores, 6.2 GB of data under outputs/bench):
# its records join those of `make bench` in outputs/bench/results.jsonl (and the committed benchmarks/records.jsonl)
# and BENCHMARKS.md is re-rendered; `make bench` keeps them.
bench-100m: $(STAMP)
	$(BIN)/python benchmarks/run_all.py --only generate,pipeline --scales 100000000 --days 28 --domains marketplace --write BENCHMARKS.md

# The GPU paths on CUDA with AMP next to CPU (GRU4Rec, SASRec, one InfoNCE epoch, recommend): one JSON line per part,
# exit 1 when a GPU-trained model's metric strays from the CPU one's; on a machine without CUDA it says so and measures
# nothing. Needs a CUDA build of torch (the package index's Linux x86-64 wheels are; this machine's local wheel is CPU-only).
bench-gpu: $(STAMP)
	$(BIN)/python benchmarks/bench_gpu.py

# Debian's chromium for the headless-browser tests (they skip with a reason without it).
chromium:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

clean:
	rm -rf outputs

# ---- Operations (Prefect server, work pool, deployments, worker) ---------------------------
PREFECT_PORT ?= 4200
PREFECT_URL := http://127.0.0.1:$(PREFECT_PORT)
SERVER_LOG := outputs/prefect-server.log

# Start a local Prefect server in the background (127.0.0.1 only), wait for it, register deployments.
server: $(STAMP)
	@mkdir -p outputs
	@if curl -sf $(PREFECT_URL)/api/health >/dev/null; then echo "Prefect server already up at $(PREFECT_URL)"; \
	else nohup $(BIN)/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT) >$(SERVER_LOG) 2>&1 & echo $$! >outputs/prefect-server.pid; \
	for i in $$(seq 60); do curl -sf $(PREFECT_URL)/api/health >/dev/null && break; sleep 1; done; \
	curl -sf $(PREFECT_URL)/api/health >/dev/null || { echo "server did not start, see $(SERVER_LOG)"; exit 1; }; fi
	@echo "Prefect UI: $(PREFECT_URL)  (API $(PREFECT_URL)/api, stop: kill \$$(cat outputs/prefect-server.pid))"
	$(MAKE) deploy

# Create the process work pool (if missing), register every deployment of deployments/prefect.yaml, and the `gpu` tag's
# concurrency limit (one training task at a time) and the automation on failed nightly runs.
deploy: $(STAMP)
	PREFECT_API_URL=$(PREFECT_URL)/api $(BIN)/prefect work-pool inspect seqrec-process >/dev/null 2>&1 || \
	PREFECT_API_URL=$(PREFECT_URL)/api $(BIN)/prefect work-pool create seqrec-process --type process
	PREFECT_API_URL=$(PREFECT_URL)/api $(BIN)/prefect --no-prompt deploy --all --prefect-file deployments/prefect.yaml
	@# one training task at a time on the GPU: train_model runs carry the `gpu` tag
	PREFECT_API_URL=$(PREFECT_URL)/api $(BIN)/prefect concurrency-limit inspect gpu >/dev/null 2>&1 || \
	PREFECT_API_URL=$(PREFECT_URL)/api $(BIN)/prefect concurrency-limit create gpu 1
	@# a failed nightly run becomes a triggered automation (deployments/automations.yaml)
	PREFECT_API_URL=$(PREFECT_URL)/api $(BIN)/prefect automation inspect seqrec-nightly-failed >/dev/null 2>&1 || \
	PREFECT_API_URL=$(PREFECT_URL)/api $(BIN)/prefect automation create --from-file deployments/automations.yaml

# Run scheduled and triggered flow runs of the seqrec-process pool (foreground; Ctrl-C stops it).
worker: $(STAMP)
	PREFECT_API_URL=$(PREFECT_URL)/api $(BIN)/prefect worker start --pool seqrec-process --type process
.PHONY: deploy

RUN_DIR ?= outputs/demo
DASHBOARD_PORT ?= 8050
# Live dashboard at http://127.0.0.1:$(DASHBOARD_PORT)/ (replays $(RUN_DIR)/split/test.npz; Ctrl-C stops it).
dashboard: $(STAMP)
	$(BIN)/seqrec dashboard --run-dir $(RUN_DIR) --port $(DASHBOARD_PORT)

# The CDN assets of Great Expectations Data Docs, pinned in vendor/datadocs (seqrec.quality.datadocs serves them locally).
DATADOCS_STAMP := vendor/datadocs/node_modules/.installed
$(DATADOCS_STAMP): vendor/datadocs/package-lock.json
	npm ci --prefix vendor/datadocs --no-audit --no-fund
	touch $(DATADOCS_STAMP)

datadocs-assets: $(DATADOCS_STAMP)
.PHONY: datadocs-assets
