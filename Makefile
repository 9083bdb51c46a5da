# Two commands do everything on a fresh machine:
#   make run    create .venv if needed, install, run the whole pipeline (dvc repro)
#   make test   create .venv if needed, install, run the test suite
# Both are idempotent: the install step reruns only when pyproject.toml or this file changed.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU wheel from the local disk; a looser spec pulls a multi-GB CUDA build. GPU users: TORCH_SPEC=
TORCH_SPEC ?= torch==2.13.0
LLAMA_CPP_VERSION := 0.3.36
# -DGGML_NATIVE=OFF: a -march=native build uses AMX here and crashes on every quantized GGUF
# (llama.cpp issue #20824). GPU users: LLAMA_CMAKE_ARGS="-DGGML_CUDA=on"
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF
STAMP := $(VENV)/.installed

.PHONY: install run test clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	if [ -n "$(TORCH_SPEC)" ]; then $(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"; fi
	# llama-cpp-python compiles (5-10 min on 2 cores); --no-cache-dir because pip's wheel cache ignores CMAKE_ARGS
	$(BIN)/python -c "import importlib.metadata as m; assert m.version('llama_cpp_python') == '$(LLAMA_CPP_VERSION)'" 2>/dev/null \
	  || CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip install --quiet --no-cache-dir "llama-cpp-python==$(LLAMA_CPP_VERSION)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

test: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest

clean-venv:
	rm -rf $(VENV)
