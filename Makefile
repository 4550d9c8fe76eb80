# The README's two commands: `make run` (set up, demo roster, dagster dev) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned to the CPU/CUDA build this machine keeps on disk; a newer one is a multi-GB download.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
DAGSTER_HOME ?= $(CURDIR)/var/dagster_home
PORT ?= 3000
REVIEW_PORT ?= 3100
PYTEST_ARGS ?=
MANIFESTS_DIR ?= deploy/manifests
export DAGSTER_HOME

.PHONY: install run review check-defs demo test test-fast manifests dagster-home clean

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

# `hydra dev`: `dg dev` (webserver + daemon, the project from [tool.dg] in pyproject.toml) with the
# review app beside it; exec, so Ctrl-C and a SIGTERM to make reach it, and it stops both.
run: install dagster-home
	$(BIN)/hydra demo-data
	exec $(BIN)/hydra dev --port $(PORT) --review-port $(REVIEW_PORT)

review: install
	HYDRA_DAGSTER_URL=http://127.0.0.1:$(PORT) $(BIN)/hydra review --port $(REVIEW_PORT)

# Definitions load and validate (what CI and a reviewer run first).
check-defs: install
	VIRTUAL_ENV=$(abspath $(VENV)) $(BIN)/dg check defs

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
