# Every task of the project; `make help` lists them.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install system-deps demo test lint typecheck pytest bench clean

help: ## List every task
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install the project with its test tools

system-deps: ## Install the Debian packages the tests need (espeak-ng, sox, graphviz) when missing
	@command -v espeak-ng >/dev/null && command -v sox >/dev/null && command -v dot >/dev/null || { \
	  echo "Installing espeak-ng, sox (test audio) and graphviz (flow diagrams) from Debian"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng sox graphviz >/dev/null; }

demo: install ## Run one phone complaint end to end on embedded defaults and print the case
	$(BIN)/callcenter demo

test: install system-deps lint typecheck pytest ## Run ruff, mypy and every test

lint: install ## Check style and formatting with ruff
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install ## Check types with mypy (strict for package code)
	$(BIN)/mypy

pytest: install ## Run the test suite (needs PostgreSQL and Redis on 127.0.0.1)
	$(BIN)/pytest

bench: install ## Run the benchmarks under benchmarks/ and print their ratios
	$(BIN)/python -m benchmarks

clean: ## Remove the virtual environment, caches and the demo's instance folder
	rm -rf $(VENV) instance .mypy_cache .ruff_cache .pytest_cache
