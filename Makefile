# llmtune: two commands for users (make run, make test); the rest for developers.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The stamp is older than pyproject.toml or this Makefile after either changes, so `make` reinstalls then.
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
# llama-cpp-python (runs models: load, bench, tune, quantize) is this extra;
# llmtune installed without it still plans (inspect, fit, the app's panes).
ENGINE_EXTRA := engine

.PHONY: run test bench screenshots model tools lint typecheck clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# llama.cpp's RPC backend (llmtune rpc-server, --rpc HOST:PORT) is built in:
# RPC hosts are devices to llama.cpp like local GPUs.
LLAMA_CMAKE_ARGS := -DGGML_RPC=on
# llama.cpp's AMX kernels (Intel Xeon Sapphire Rapids and newer) crash the worker
# with SIGSEGV in this llama.cpp (ggml-org/llama.cpp#20824, seen here on the first
# prompt): x86_64 builds leave them out.
ifeq ($(shell uname -m),x86_64)
LLAMA_CMAKE_ARGS += -DCMAKE_C_FLAGS=-mno-amx-int8 -DCMAKE_CXX_FLAGS=-mno-amx-int8
NO_AMX := "AMX_INT8 = 1" not in llama_cpp.llama_print_system_info().decode()
else
NO_AMX := True
endif
# pip's wheel cache does not key on CMAKE_ARGS: a wheel built earlier without
# RPC (or with AMX) is reused silently, so the install checks the library it
# got and rebuilds once, without the cache, when it is not the one asked for.
BUILD_OK := import sys, llama_cpp; sys.exit(0 if llama_cpp.llama_supports_rpc() and $(NO_AMX) else 1)
LLAMA_VERSION := import llama_cpp; print(llama_cpp.__version__)

$(STAMP): pyproject.toml Makefile | $(BIN)/python
	@echo "Installing llmtune[$(ENGINE_EXTRA)] into $(VENV): llama-cpp-python compiles llama.cpp from source once (5 to 10 minutes on 2 cores); the rest takes seconds..."
	CMAKE_ARGS="$$CMAKE_ARGS $(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip install --quiet -e '.[$(ENGINE_EXTRA)]'
	@if ! $(BIN)/python -c '$(BUILD_OK)' 2>/dev/null; then \
		echo "Rebuilding llama-cpp-python from source: the wheel pip had cached was not built with $(LLAMA_CMAKE_ARGS)..."; \
		CMAKE_ARGS="$$CMAKE_ARGS $(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip install --quiet --no-cache-dir \
			--force-reinstall --no-deps "llama-cpp-python==$$($(BIN)/python -c '$(LLAMA_VERSION)')"; fi
	@touch $@

$(TEST_STAMP): pyproject.toml $(STAMP)
	@echo "Installing the test tools into $(VENV) (seconds)..."
	$(BIN)/python -m pip install --quiet -e '.[$(ENGINE_EXTRA),test]'
	@touch $@

## model: fetch the demo model (SmolLM2-135M-Instruct Q4_1) into the user cache and print its path
model: $(STAMP)
	@$(BIN)/python -m llmtune.model.demo

## run: open llmtune on the demo model
run: $(STAMP)
	@model=$$($(BIN)/python -m llmtune.model.demo) && $(BIN)/llmtune "$$model"

## test: the whole suite
test: $(TEST_STAMP)
	@$(BIN)/python -m llmtune.model.demo >/dev/null
	$(BIN)/python -m pytest -q

## bench: benchmarks under tests/bench (speed and memory targets; not part of make test)
bench: $(TEST_STAMP)
	@$(BIN)/python -m llmtune.model.demo >/dev/null
	@set -e; for script in tests/bench/*.py; do \
		echo "== $$script"; $(BIN)/python "$$script"; done

## tools: build llama.cpp's own tools (llama-fit-params, llama-bench, llama-server,
## llama-perplexity, llama-quantize, ggml-rpc-server) from the llama.cpp vendored in the
## pinned llama-cpp-python, once, into the user cache; prints their folder
tools: $(STAMP)
	@$(BIN)/python -m llmtune.engine.tools

## screenshots: regenerate screenshots/*.svg from the real app
screenshots: $(TEST_STAMP)
	@$(BIN)/python -m llmtune.model.demo >/dev/null
	$(BIN)/python scripts/screenshots.py

lint: $(TEST_STAMP)
	$(BIN)/ruff check tui tests scripts
	$(BIN)/ruff format --check tui tests scripts
	$(BIN)/lint-imports --no-cache

typecheck: $(TEST_STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
