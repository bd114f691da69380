# The README's two commands. Each creates .venv when missing and installs everything.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Azurite, the Azure Blob server of the storage tests, from npm into this ignored folder, where
# tests/integration/loopback_stores.py looks for it
AZURITE := .test-servers/node_modules/.bin/azurite-blob

.PHONY: demo test test-integration bench install clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade "pip>=24" setuptools wheel
	# Real torchvision: torch 2.14.1 + torchvision 0.29.1 (on this machine kind's disk for py3.11).
	$(BIN)/pip install torch==2.14.1 torchvision==0.29.1
	# sam2 1.1.0 is an sdist: build it pure-Python, against the torch above (no second torch).
	SAM2_BUILD_CUDA=0 $(BIN)/pip install --no-build-isolation sam2==1.1.0
	# the gcs and azure extras: the storage tests run gs:// and az:// OUTDIRs end to end
	$(BIN)/pip install -e ".[dev,gcs,azure]"
	# pyogrio's GDAL opens GeoParquet (segments.parquet) through the duckdb wheel (remote_samsing/_gdal_parquet.py)
	$(BIN)/python -m remote_samsing._gdal_parquet
	touch $(STAMP)

$(AZURITE):
	@if command -v npm >/dev/null; then \
		npm install --prefix .test-servers --no-save --no-fund --no-audit azurite@3.37.0; \
	else \
		echo "npm not found: the Azure storage tests will be skipped (install Node.js and run make again)"; \
	fi

install: $(STAMP) $(AZURITE)

demo: $(STAMP)
	$(BIN)/python -m remote_samsing.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q --ignore=tests/integration

# End-to-end runs: CLI subprocesses, notebooks, loopback clusters, the benchmark smoke run.
test-integration: $(STAMP) $(AZURITE)
	$(BIN)/python -m pytest -q tests/integration

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) demo-output
