# byzctl: `make run` and `make test` do all the set-up on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install run test test-full lint bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv and install byzctl (editable, with the dev, loggers, serve and browser extras)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,loggers,serve,browser]'
	touch $(STAMP)

run: install ## run the embedded default experiment (ARGS="topology=ps ..." adds overrides)
	$(VENV)/bin/byzctl run $(ARGS)

test: install ## the fast test suite (no slow, no gpu)
	$(PY) -m pytest -m "not slow and not gpu" $(PYTEST_ARGS)

test-full: install ## every test, slow end-to-end runs included (gpu ones skip without CUDA)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install ## ruff and mypy
	$(VENV)/bin/ruff check byzctl tests
	$(VENV)/bin/mypy byzctl

bench: install ## aggregator benchmark against the torch.mean floor
	$(VENV)/bin/byzctl bench aggregators

clean: ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
