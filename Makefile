# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEPS := $(VENV)/.deps-installed
# NVFlare itself, a test-only peer, in a venv of its own so that flare never imports it. Only what its TCP cell
# needs is installed (the peer script skips nvflare/__init__.py and the job stack it pulls in).
NVFLARE_VENV := .venv-nvflare
NVFLARE_VERSION := 2.7.2
NVFLARE := $(NVFLARE_VENV)/.installed-$(NVFLARE_VERSION)
export VIRTUAL_ENV := $(abspath $(VENV))

.PHONY: run test test-rust test-python bench wheel build clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(DEPS): $(BIN)/python requirements-dev.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

$(NVFLARE):
	$(PYTHON) -m venv $(NVFLARE_VENV)
	$(NVFLARE_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
		nvflare==$(NVFLARE_VERSION) msgpack cryptography cffi numpy
	touch $@

# Builds the extension (release: the same artifacts serve tests, benchmarks and the wheel) and installs flare
# into .venv in editable mode.
build: $(DEPS)
	$(BIN)/maturin develop --release --quiet

run: build
	cd examples/hello-pt && $(abspath $(BIN))/python job.py

test: build test-rust test-python

test-rust:
	cargo fmt --all --check
	timeout 1200 cargo test --workspace --release
	cargo run --quiet --release -p embed-rust

test-python: build wheel $(NVFLARE)
	$(BIN)/python -m mypy.stubtest flare._sfm
	$(BIN)/python -m pytest

bench: build
	$(BIN)/python benches/run_all.py

wheel: $(DEPS)
	$(BIN)/maturin build --release --quiet --out dist

clean:
	rm -rf $(VENV) $(NVFLARE_VENV) dist target
