# tether task runner. `make demo` and `make test` each do all of their own set-up.
SHELL := /bin/bash
.DEFAULT_GOAL := help

UV_BIN := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
UV := $(UV_BIN)
export UV_PYTHON_DOWNLOADS := never
export PATH := $(HOME)/.local/bin:$(PATH)

.PHONY: help uv env demo test lint typecheck pytest bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

uv:  ## install uv if it is missing
	@command -v uv >/dev/null 2>&1 || test -x $(HOME)/.local/bin/uv || \
		(echo "installing uv with pip…" && python3 -m pip install --quiet --user --break-system-packages uv 2>/dev/null || python3 -m pip install --quiet --user uv)

env: uv  ## create .venv from uv.lock
	@$(UV) sync --frozen --quiet

demo: env  ## run tether's main job: the on-call agent demo on the embedded store
	@$(UV) run --frozen tether demo

lint: env  ## ruff lint + format check, mypy --strict on src/, import-linter layers and cycles
	$(UV) run --frozen ruff check src tests benchmarks
	$(UV) run --frozen ruff format --check src tests benchmarks
	$(UV) run --frozen mypy
	$(UV) run --frozen lint-imports

pytest: env
	$(UV) run --frozen pytest

test: lint pytest  ## the whole suite: lint, type checks, tests (SQLite and PostgreSQL)

bench: env  ## run the benchmarks and write benchmarks/RESULTS.md
	@command -v wrk >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq wrk) || \
		echo "wrk could not be installed: the gateway benchmark will say so"
	@$(UV) run --frozen python -m benchmarks._gateway.litellm_side || \
		echo "LiteLLM's environment (.bench/litellm) could not be created: its rows will say why"
	$(UV) run --frozen python -m benchmarks.run

clean:  ## remove the environment and local state
	rm -rf .venv .tether .mypy_cache .ruff_cache .pytest_cache
