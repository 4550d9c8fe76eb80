# The README's two commands: `make run` (set up, demo roster, dagster dev) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned to the CPU/CUDA build this machine keeps on disk; a newer one is a multi-GB download.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
DAGSTER_HOME ?= $(CURDIR)/var/dagster_home
PORT ?= 3000
PYTEST_ARGS ?=
MANIFESTS_DIR ?= deploy/manifests
export DAGSTER_HOME

.PHONY: install run check-defs demo test test-fast manifests dagster-home clean

$(BIN)/.installed: pyproject.toml deploy/install_musiq.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e '.[dev]'
	bash deploy/install_musiq.sh $(BIN)/python
	touch $@

install: $(BIN)/.installed

# The instance config lives in instance/, not the repo root: `dg dev` runs from the root and
# warns about a dagster.yaml there that DAGSTER_HOME does not use.
dagster-home:
	mkdir -p $(DAGSTER_HOME)
	cp instance/dagster.yaml $(DAGSTER_HOME)/dagster.yaml

# `dg dev` reads the project from [tool.dg] in pyproject.toml. exec: Ctrl-C and SIGTERM reach
# dg itself, which stops the webserver and the daemon and exits.
run: install dagster-home
	$(BIN)/hydra demo-data
	exec $(BIN)/dg dev -p $(PORT)

# Definitions load and validate (what CI and a reviewer run first).
check-defs: install
	$(BIN)/dg check defs

demo: install dagster-home
	$(BIN)/hydra demo

test: install
	$(BIN)/pytest $(PYTEST_ARGS)

test-fast: install
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

# The step Job of every GPU asset, as dagster-k8s builds it from deploy/values.yaml.
manifests: install
	$(BIN)/python deploy/render_manifests.py $(MANIFESTS_DIR)

clean:
	rm -rf var
