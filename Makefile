# The two commands: `make run` and `make test`. Everything else is set up by them.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install -q --disable-pip-version-check
# `make run` needs the runtime only; `make test` (and the tools) the development extras too.
# Separate stamps, so switching between the two installs only what is missing.
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: install install-run run test lint typecheck alerts pytest docs bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(PIP) -e .
	touch $@

# the development extras include the runtime, so the run stamp is fresh too
$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(PIP) -e '.[dev]'
	touch $@ $(RUN_STAMP)

install-run: $(RUN_STAMP)

## Runtime and development extras (pytest, playwright, mypy, ruff, hypothesis).
install: $(DEV_STAMP)

## Start the gateway on the embedded default (memory store + sandbox providers) and print a curl.
run: install-run
	$(BIN)/gateway serve --print-curl

## Everything CI runs: lint, types, the whole test suite.
test: install lint typecheck alerts pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

## Prometheus alert rules: syntax check and unit tests (promtool, Debian package `prometheus`).
## Missing promtool fails under CI=true and is skipped with a note otherwise.
alerts:
	@if command -v promtool >/dev/null 2>&1; then \
		promtool check config grafana/prometheus.yml && \
		promtool check rules grafana/alerts/*.yml && \
		promtool test rules grafana/alerts/tests/*.yml; \
	elif [ "$$CI" = "true" ]; then \
		echo "make alerts: promtool is not installed (CI=true)"; exit 1; \
	else \
		echo "make alerts: promtool not installed (apt-get install prometheus); skipped"; \
	fi

pytest: install
	$(BIN)/pytest -q --durations=30

## Rewrite the README's JSON examples from a running gateway's real answers (the test that
## checks them: tests/api/test_readme_examples.py).
docs: install
	README_EXAMPLES=update $(BIN)/pytest -q tests/api/test_readme_examples.py

## Load benchmark (wrk vs a bare aiohttp baseline), the routing micro benchmark and the adaptive
## routing simulation; all run even when one misses its target, and make fails if any did.
bench: install
	@command -v wrk >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq wrk)
	@status=0; \
	$(BIN)/python bench/routing_micro.py || status=$$?; \
	$(BIN)/python bench/routing_adapt.py || status=$$?; \
	$(BIN)/python bench/run.py || status=$$?; \
	exit $$status

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
