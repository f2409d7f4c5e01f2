# byzctl: `make run` and `make test` do all the set-up on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install run test test-full lint bench clean slurm slurm-stop

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv and install byzctl (editable, with the dev, loggers, serve, browser, slurm and ray extras)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,loggers,serve,browser,slurm,ray]'
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

SLURM_DIR ?= /tmp/byzctl-slurm
slurm: install ## start a one-machine SLURM cluster (root; Debian slurm-wlm + munge) under SLURM_DIR
	$(PY) tests/slurm_cluster.py start $(SLURM_DIR)
	@echo "now: export SLURM_CONF=$(SLURM_DIR)/slurm.conf   (stop it with: make slurm-stop)"

slurm-stop: ## stop the cluster `make slurm` started
	$(PY) tests/slurm_cluster.py stop $(SLURM_DIR)

clean: ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
