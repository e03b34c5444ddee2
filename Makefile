# slurm-flex: the two commands a new machine needs are `make demo` and `make test`;
# `make unit` runs the fast tests without a cluster.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# Which Slurm the cluster tests and the demo run on: 22.05 (the host's), 24.11 (Debian 13's in a
# chroot, see scripts/devcluster) or both (tests only; the demo then uses 22.05).
export SLURMFLEX_SLURM ?= both

.PHONY: demo demo-beckn demo-stress test unit venv lint typecheck bench cluster-up cluster-down fed-up fed-down clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	scripts/demo

# A grid operator buys "reduce 2 kW" over Beckn v2 (DEG demand flex) and watches it delivered.
demo-beckn: venv
	scripts/demo-beckn

# Seed 004's day on the two-cluster federation: a stress event at Cambridge moves load to
# Manchester, the SunSpec battery covers the gap, and the two orders are settled.
demo-stress: venv
	scripts/demo-stress

# `devcluster up` first installs the host's Slurm, munge and lua5.1 (the Lua tests check for
# lua5.1 when they are collected); the cluster tests then bring up their own clusters
# (tests/conftest.py), one per Slurm series, bootstrapping the 24.11 chroot on first use.
# scripts/test-deps installs chromium, in which a test renders the HTML report.
test: venv
	scripts/devcluster up
	scripts/test-deps
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Everything that needs no cluster (the daemon's logic runs on the fake Slurm): under a minute.
unit: venv
	$(PY) -m pytest -q -m "not slurm" $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check slurm_flex daemon grid beckn job_submit tests bench

typecheck: venv
	rm -rf build && $(PIP) install -q --no-deps --target build/typecheck .
	cd build/typecheck && ../../$(VENV)/bin/mypy --config-file ../../setup.cfg -p slurm_flex

bench: venv
	$(PY) bench/run_all.py

cluster-up:
	scripts/devcluster up

cluster-down:
	scripts/devcluster down

# The two-cluster Slurm federation (cambridge, manchester; MariaDB + slurmdbd): scripts/fedcluster.
fed-up:
	scripts/fedcluster up

fed-down:
	scripts/fedcluster down

clean:
	scripts/devcluster down || true
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache
