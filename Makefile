# Orthanc DPP plugin: set-up, run, test, benchmark.
# Every target installs only what is missing, so running one twice is safe.

SHELL := /bin/bash
PYTHON := /usr/bin/python3
VENV := .venv
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
RUN_PACKAGES := orthanc orthanc-python python3-venv
# Extra Orthanc options for `make run`, e.g. ORTHANC_FLAGS=--verbose.
ORTHANC_FLAGS ?=
# Unit tests need no Orthanc and no database, only DCMTK and shellcheck as checkers.
UNIT_PACKAGES := python3-venv dcmtk shellcheck
# chromium: the protocol library page's browser tests (driven by Playwright, no browser download).
TEST_PACKAGES := $(RUN_PACKAGES) $(UNIT_PACKAGES) postgresql orthanc-postgresql openssl curl chromium

# Newer Orthanc stacks for `make test-all`: Debian roots made by tools/stacks.py.
STACKS := trixie sid
# `make test-docker`: Debian's Docker engine (its compose and buildx plugins
# come from Debian unstable's packages, see tools/docker_images.py).
DOCKER_PACKAGES := docker.io

.PHONY: run test test-all test-docker unit integration lint bench setup-run setup-test \
	setup-unit .packages-run .packages-test .packages-unit .packages-stacks .packages-docker

run: setup-run
	mkdir -p data
	exec /usr/sbin/Orthanc $(ORTHANC_FLAGS) orthanc.json

test: setup-test lint
	$(VENV)/bin/python -m pytest

# The whole suite on Debian 12 (here), then on Debian 13 and unstable roots,
# then the Docker image built and run.
test-all: test .packages-stacks
	$(SUDO) $(PYTHON) tools/stacks.py test $(STACKS)
	$(MAKE) test-docker

# The Docker image and the compose set-up of docs/docker.md, built and run for real on
# stand-ins for the two base images (no registry is reachable here); starts
# (and then stops) a Docker engine if none runs. tests/docker.
test-docker: setup-test .packages-stacks .packages-docker
	$(SUDO) $(PYTHON) tools/docker_images.py test

unit: setup-unit
	$(VENV)/bin/python -m pytest tests/unit

integration: setup-test
	$(VENV)/bin/python -m pytest tests/integration

lint: setup-unit
	$(VENV)/bin/ruff check plugin dpp_tools tests bench docker tools
	$(VENV)/bin/ruff format --check plugin dpp_tools tests bench docker tools
	$(VENV)/bin/mypy

# Every benchmark here (Debian 12), then C-STORE and REST upload on the newer
# stacks, whose Python plugins can release the interpreter lock; BENCH_STACKS=
# skips them.
BENCH_STACKS ?= $(STACKS)
bench: setup-test $(if $(BENCH_STACKS),.packages-stacks)
	$(VENV)/bin/python -m bench
	$(if $(BENCH_STACKS),$(SUDO) $(PYTHON) tools/stacks.py bench $(BENCH_STACKS) -- store)

setup-run: .packages-run $(VENV)/.runtime

setup-test: .packages-test $(VENV)/.dev

setup-unit: .packages-unit $(VENV)/.dev

# Debian packages: install the missing ones only (sudo when not root).
.packages-run .packages-test .packages-unit .packages-stacks .packages-docker:
	@want="$(or $(if $(filter .packages-test,$@),$(TEST_PACKAGES)),$(if $(filter .packages-unit,$@),$(UNIT_PACKAGES)),$(if $(filter .packages-stacks,$@),debootstrap),$(if $(filter .packages-docker,$@),$(DOCKER_PACKAGES)),$(RUN_PACKAGES))"; \
	missing=""; \
	for p in $$want; do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "Installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime: requirements.txt | $(VENV)/bin/python
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt | $(VENV)/bin/python
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $(VENV)/.runtime $@
