# The README's two commands. Each creates .venv when missing and installs everything.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-integration bench install clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade "pip>=24" setuptools wheel
	# Real torchvision: torch 2.14.1 + torchvision 0.29.1 (on this machine kind's disk for py3.11).
	$(BIN)/pip install torch==2.14.1 torchvision==0.29.1
	# sam2 1.1.0 is an sdist: build it pure-Python, against the torch above (no second torch).
	SAM2_BUILD_CUDA=0 $(BIN)/pip install --no-build-isolation sam2==1.1.0
	$(BIN)/pip install -e ".[dev]"
	# pyogrio's GDAL opens GeoParquet (segments.parquet) through the duckdb wheel (remote_samsing/_gdal_parquet.py)
	$(BIN)/python -m remote_samsing._gdal_parquet
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m remote_samsing.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q --ignore=tests/integration

# End-to-end runs: CLI subprocesses, notebooks, loopback clusters, the benchmark smoke run.
test-integration: $(STAMP)
	$(BIN)/python -m pytest -q tests/integration

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) demo-output
