# Mailpipe's entry points. Everything runs on loopback; state lives in .run/, built tools in
# ~/.cache/mailpipe/tools (override with MAILPIPE_TOOLS_DIR).
SHELL := /bin/bash
VENV := .venv
PYTHON := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PYTEST_ARGS ?=

.PHONY: help venv packages tools services services-stop services-status cluster cluster-stop \
        demo test test-unit bench typecheck images kind-up kind-deploy kind-down clean

help:
	@echo "make demo           run the whole pipeline on local servers with a generated audience"
	@echo "make test           start every server the tests need and run the test suite"
	@echo "make bench          100,000 emails end to end into smtp-sink, beside raw SMTP speed"
	@echo "make services       install (when missing) and start the local servers"
	@echo "make services-stop  stop them"
	@echo "make tools          build FerretDB, Helm, etcd, Kubernetes and kwok into the cache"
	@echo "make cluster        start a local Kubernetes control plane with kwok nodes"
	@echo "make images | kind-up | kind-deploy   need Docker and kind (not available everywhere)"

# The virtual environment is rebuilt when the lock file or pyproject.toml changes.
$(VENV)/.installed: pyproject.toml requirements.lock
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c requirements.lock -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

packages:
	scripts/install-packages.sh

tools:
	scripts/build-tools.sh

services: packages
	scripts/build-tools.sh ferretdb
	scripts/services.sh start

services-stop:
	scripts/services.sh stop

services-status:
	scripts/services.sh status

cluster: tools
	scripts/cluster.sh start

cluster-stop:
	scripts/cluster.sh stop

demo: venv services
	$(VENV)/bin/mailpipe demo

test: venv services cluster
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test-unit: venv
	$(VENV)/bin/pytest -m "not services and not cluster" $(PYTEST_ARGS)

bench: venv services
	$(VENV)/bin/mailpipe bench

typecheck: venv
	$(VENV)/bin/mypy

# The targets below need a Docker engine and kind; see the README's Kubernetes section.
images:
	docker build -t mailpipe/mailpipe:0.1.0 -f Dockerfile .

kind-up:
	kind create cluster --name mailpipe --config kind-config.yaml

kind-deploy: images
	kind load docker-image mailpipe/mailpipe:0.1.0 --name mailpipe
	helm upgrade --install mailpipe charts/mailpipe --namespace mailpipe --create-namespace \
		--set image.repository=mailpipe/mailpipe --set image.tag=0.1.0 --set image.pullPolicy=Never

kind-down:
	kind delete cluster --name mailpipe

clean: services-stop
	rm -rf .run
