# `make demo` and `make test` set everything up themselves on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.ssmc-installed
# torch 2.13.0 CPU: pip takes the local wheel when the machine has one; installing it before
# the package keeps pip from resolving `torch` to the multi-GB CUDA build.
TORCH  ?= torch==2.13.0

.PHONY: setup demo test test-all gpu-test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,bench,fleet,hf]'
	touch $@

demo: $(STAMP)
	$(VENV)/bin/ssmc demo ir/mamba.yaml

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m 'not gpu'

gpu-test: $(STAMP)
	SSMC_GPU_TESTS=1 $(PY) -m pytest -q -m gpu

bench: $(STAMP)
	$(PY) -m pytest -q benchmarks --benchmark-only -m '' 

clean:
	rm -rf $(VENV) .ssmc_cache .pytest_cache
