# Everything a fresh machine needs is installed by these targets; `make test`
# is what CI runs (.ci/run).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export PYTHONDONTWRITEBYTECODE := 1
# The test tools' Go builds (control plane, nodes, MinIO, Helm, Prometheus) keep their
# Go caches in the cache folder, not the user's; tests/go-clean.sh removes them once
# the tools are built, as the tools themselves are cached by their inputs.
GO_CACHE := $(shell bash tests/cache-dir.sh)/go
export GOCACHE := $(GO_CACHE)/build
export GOMODCACHE := $(GO_CACHE)/mod

.PHONY: help install generate check-generated lint format system-deps cluster-bin s3-bin helm-bin \
        prometheus-bin cluster-up cluster-down node-deps node-bin images node-up node-down test e2e \
        test-slow bench-operator bench-trainer clean

help:
	@echo "make test          install everything, lint, and run the test suite (what CI runs)"
	@echo "make e2e           the end-to-end tests on real nodes (part of make test)"
	@echo "make test-slow     the long end-to-end tests"
	@echo "make generate      regenerate the CRD (manifests/, charts/) from the API models and"
	@echo "                   the chart's Grafana dashboards from dashboards/"
	@echo "make lint          ruff and mypy --strict"
	@echo "make cluster-up    start the local control plane; kubeconfig in .cache/cluster/"
	@echo "make cluster-down  stop it (and its nodes)"
	@echo "make node-up       start the control plane with two real nodes (kubelet, containerd)"
	@echo "make node-down     remove the nodes: processes, mounts, namespaces, bridge, cgroups"
	@echo "make bench-operator  200 FineTuneJobs at once against the local control plane"
	@echo "make bench-trainer   our trainer vs the plain Hugging Face Trainer, side by side"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[operator,trainer,dev]'
	touch $@

install: $(STAMP)

generate: $(STAMP)
	$(BIN)/python -m finetune_api.crd --write
	PYTHONPATH=dashboards $(BIN)/python -m finetune_dashboards --write

check-generated: $(STAMP)
	$(BIN)/python -m finetune_api.crd --check
	PYTHONPATH=dashboards $(BIN)/python -m finetune_dashboards --check

lint: $(STAMP)
	$(BIN)/ruff check api operator trainer_image dashboards tests bench examples
	$(BIN)/ruff format --check api operator trainer_image dashboards tests bench examples
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format api operator trainer_image dashboards tests bench examples
	$(BIN)/ruff check --fix api operator trainer_image dashboards tests bench examples

# Debian packages the tests use: openssl makes the test cluster's certificates.
system-deps:
	@command -v openssl >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  apt-get install -y -qq --no-install-recommends openssl >/dev/null; }

# Builds etcd and the Kubernetes control plane from upstream sources (cached).
cluster-bin:
	bash tests/cluster/build.sh

# Builds MinIO, the S3-compatible server of the tests, from its Go module (cached).
s3-bin:
	bash tests/s3/build.sh

# Builds Helm from its Go module (cached), for the chart tests.
helm-bin:
	bash tests/helm/build.sh

# Builds Prometheus from its Go module with Kubernetes discovery (cached): Debian's
# package leaves Kubernetes discovery out.
prometheus-bin:
	bash tests/prometheus/build.sh

cluster-up: $(STAMP) cluster-bin
	$(BIN)/python tests/node/nodes.py down
	$(BIN)/python tests/cluster/controlplane.py up

cluster-down: $(STAMP)
	$(BIN)/python tests/node/nodes.py down
	$(BIN)/python tests/cluster/controlplane.py down

# Real worker nodes (kubelet, containerd, runc, bridge CNI, CoreDNS) joined to the
# control plane of `make cluster-up`. Root only: they create a bridge, mounts and cgroups.
# buildah and debootstrap build the images from their Dockerfiles (tests/images/).
node-deps:
	@command -v containerd >/dev/null && command -v runc >/dev/null && [ -x /usr/lib/cni/bridge ] \
	  && command -v iptables >/dev/null && command -v buildah >/dev/null \
	  && command -v debootstrap >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	  --no-install-recommends containerd runc containernetworking-plugins iptables \
	  buildah debootstrap >/dev/null; }

node-bin:
	bash tests/node/build.sh

node-up: cluster-up node-deps node-bin
	$(BIN)/python tests/node/nodes.py up

node-down: $(STAMP)
	$(BIN)/python tests/node/nodes.py down

# The project's images from their Dockerfiles (cached by their inputs), built before
# the tests so that no test's time limit includes a cold build.
images: node-deps
	bash tests/images/build.sh operator
	bash tests/images/build.sh trainer

# A green run leaves no temporary folders (copies of models, MinIO data, node folders:
# gigabytes); a failed one keeps its failed tests' folders, for the last two runs.
PYTEST_TMP := -o tmp_path_retention_policy=failed -o tmp_path_retention_count=2

test: $(STAMP) system-deps node-deps cluster-bin s3-bin helm-bin prometheus-bin node-bin images \
      lint check-generated
	bash tests/go-clean.sh
	$(BIN)/python -m pytest -m "not slow" --durations=25 $(PYTEST_TMP)

# The end-to-end tests alone: real nodes, images built from the Dockerfiles.
e2e: $(STAMP) system-deps node-deps cluster-bin s3-bin helm-bin prometheus-bin node-bin images
	bash tests/go-clean.sh
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_TMP) tests/e2e tests/test_nodes_cleanup.py

test-slow: $(STAMP) system-deps node-deps cluster-bin s3-bin helm-bin prometheus-bin node-bin images
	bash tests/go-clean.sh
	$(BIN)/python -m pytest -m slow -s $(PYTEST_TMP)

# Benchmarks print a table for docs/benchmarks.md; they are not tests.
bench-operator: $(STAMP) cluster-bin
	$(BIN)/python bench/operator_jobs.py

bench-trainer: $(STAMP)
	$(BIN)/python bench/trainer_vs_recipe.py --quick

clean: cluster-down
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
