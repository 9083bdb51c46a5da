# Two commands do everything on a fresh machine:
#   make run    create .venv if needed, install, run the whole pipeline (dvc repro)
#   make test   create .venv if needed, install, run the test suite
#   make serve  serve a variant made by `make run` (VARIANT=Q4_K_M PORT=8080), OpenAI-compatible
#   make lint   ruff: lint and format check (CI runs it before the tests)
# Both are idempotent: the install step reruns only when pyproject.toml or this file changed.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU wheel from the local disk; a looser spec pulls a multi-GB CUDA build. GPU users: TORCH_SPEC=
TORCH_SPEC ?= torch==2.13.0
LLAMA_CPP_VERSION := 0.3.36
# -DGGML_NATIVE=OFF: a -march=native build uses AMX here and crashes on every quantized GGUF
# (llama.cpp issue #20824). But NATIVE=OFF alone targets AVX2 and leaves AVX-512 unused (measured here:
# Q4_K_M decodes ~30% slower), so the AVX-512 extensions this CPU reports are switched on by name; never AMX.
# GPU users: LLAMA_CMAKE_ARGS="-DGGML_CUDA=on"
CPU_FLAGS := $(shell grep -m1 '^flags' /proc/cpuinfo 2>/dev/null)
LLAMA_ISA := $(if $(filter avx512f,$(CPU_FLAGS)),-DGGML_AVX512=ON) \
  $(if $(filter avx512vbmi,$(CPU_FLAGS)),-DGGML_AVX512_VBMI=ON) \
  $(if $(filter avx512_vnni,$(CPU_FLAGS)),-DGGML_AVX512_VNNI=ON) \
  $(if $(filter avx512_bf16,$(CPU_FLAGS)),-DGGML_AVX512_BF16=ON)
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF $(strip $(LLAMA_ISA))
LLAMA_BUILT := $(VENV)/llama-cpp-cmake-args
STAMP := $(VENV)/.installed
# llama.cpp's own convert_hf_to_gguf.py (+ gguf-py) from the sdist of the llama-cpp-python we build
CONVERTER_DIR := $(VENV)/share/llama.cpp-$(LLAMA_CPP_VERSION)
SDIST := $(VENV)/sdist/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz
VENDOR := llama_cpp_python-$(LLAMA_CPP_VERSION)/vendor/llama.cpp
# llama.cpp's own programs (eval through llama-server, imatrix, serve), built from that same source
LLAMA_TOOLS := llama-server llama-quantize llama-imatrix llama-perplexity llama-bench

.PHONY: install run test lint prune plots browser serve clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	if [ -n "$(TORCH_SPEC)" ]; then $(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"; fi
	# every later install keeps that torch (gptqmodel and friends would otherwise pull a CUDA build)
	echo "$(TORCH_SPEC)" > $(VENV)/constraints.txt
	test -f $(SDIST) || $(BIN)/python -m pip download --quiet --no-deps --no-binary :all: -d $(VENV)/sdist "llama-cpp-python==$(LLAMA_CPP_VERSION)"
	# llama-cpp-python compiles from that sdist (5-10 min on 2 cores), again when the version or the
	# CMake args changed; --no-cache-dir: pip's wheel cache ignores CMAKE_ARGS
	($(BIN)/python -c "import importlib.metadata as m; assert m.version('llama_cpp_python') == '$(LLAMA_CPP_VERSION)'" 2>/dev/null \
	  && [ "$$(cat $(LLAMA_BUILT) 2>/dev/null)" = "$(LLAMA_CMAKE_ARGS)" ]) \
	  || { CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" PIP_CONSTRAINT=$(VENV)/constraints.txt $(BIN)/python -m pip install --quiet --no-cache-dir --force-reinstall --no-deps "$(SDIST)" \
	       && echo "$(LLAMA_CMAKE_ARGS)" > $(LLAMA_BUILT); }
	rm -rf $(CONVERTER_DIR) $(CONVERTER_DIR).tmp && mkdir -p $(CONVERTER_DIR).tmp
	tar -xzf $(SDIST) -C $(CONVERTER_DIR).tmp --strip-components=3 $(VENDOR)/convert_hf_to_gguf.py $(VENDOR)/conversion $(VENDOR)/gguf-py $(VENDOR)/LICENSE
	mv $(CONVERTER_DIR).tmp $(CONVERTER_DIR)
	# llama.cpp's programs from the same source and args: ~6 min on 2 cores, again only when those change
	tools/build_llama_tools.sh $(SDIST) $(LLAMA_CPP_VERSION) $(BIN) $(VENV)/llama-tools-build "$(LLAMA_CMAKE_ARGS)" $(LLAMA_TOOLS)
	PIP_CONSTRAINT=$(VENV)/constraints.txt $(BIN)/python -m pip install --quiet -e ".[dev]"
	# tcmalloc, which the model-making stages preload (ecommerce_slm/allocator.py): a training step 5-29%
	# cheaper, the same numbers. Debian's package where apt-get and root are at hand; elsewhere a note
	ldconfig -p 2>/dev/null | grep -q libtcmalloc_minimal.so.4 \
	  || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && apt-get update -qq \
	       && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libtcmalloc-minimal4 >/dev/null; } \
	  || echo "note: libtcmalloc_minimal.so.4 not installed (Debian: libtcmalloc-minimal4): training runs on glibc's malloc, 5-29% slower"
	# the page `dvc plots show` fills, with vega inlined (.dvc/config: plots.html_template): works offline
	$(BIN)/python -m tools.plots_page
	touch $(STAMP)

run: install prune
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

# drop lock entries and outputs of stages removed from dvc.yaml (e.g. a level taken out of gguf.levels)
prune: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m tools.prune

# a variant the pipeline made, OpenAI-compatible on 127.0.0.1:PORT, answers held to the cart schema; Ctrl-C stops
VARIANT ?=
PORT ?= 8080
serve: install
	$(BIN)/python -m tools.serve $(if $(VARIANT),--variant $(VARIANT)) --port $(PORT)

# the frontiers as DVC draws them (dvc_plots/index.html), checked in headless Chromium with the network off
plots: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc plots show
	$(BIN)/python -m tools.browser_check dvc_plots/index.html reports/report.html --minimum 3 --screenshots reports/screens

# Debian's Chromium, for the offline-rendering checks (tests skip them without it)
browser:
	command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

test: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean-venv:
	rm -rf $(VENV)
