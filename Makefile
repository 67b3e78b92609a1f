# Thunder: set-up and checks. Every target installs what it needs, idempotently, as root on Debian.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.thunder-installed
PYTHON ?= $(shell command -v python3.11 || command -v python3)
PYTEST := $(PY) -m pytest -p no:cacheprovider --timeout=600
MCP_PORT ?= 8765


.PHONY: install system venv images agent test test-unit test-docker test-vllm vllm claude-code lint serve bench clean

install: system venv images agent

system:
	@scripts/ensure-system.sh

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed, found " + sys.version)'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

images: venv system
	@$(PY) -m thunder_env.images build

# The exec agent that runs inside every sandbox: a static C program built here (gcc -static).
agent: venv
	@command -v gcc >/dev/null && test -e /usr/lib/x86_64-linux-gnu/libc.a -o -e /usr/lib/aarch64-linux-gnu/libc.a \
		|| (apt-get update -q >/dev/null && apt-get install -y -q gcc libc6-dev >/dev/null)
	@$(PY) -m thunder_env.agent build >/dev/null

vllm: venv
	@$(PY) -m thunder_sched.cpu_vllm ensure

# Claude Code (pinned, under the cache folder; node and npm from apt if missing) for tests/vllm/test_claude_code.py.
claude-code:
	@scripts/ensure-claude-code.sh >/dev/null

lint: venv
	$(PY) -m ruff check .

# The whole suite: fast unit tier first, then the real-Docker tier (env + MCP), the engine-restart tier (alone:
# it restarts dockerd), then the real-vLLM tier.
test: install vllm claude-code lint
	$(PYTEST) -q tests/unit
	$(PYTEST) -q tests/docker tests/mcp
	$(PYTEST) -q tests/chaos
	$(PYTEST) -q tests/vllm

test-unit: venv
	$(PYTEST) -q tests/unit

test-docker: install
	$(PYTEST) -q tests/docker tests/mcp

test-vllm: install vllm claude-code
	$(PYTEST) -q tests/vllm

serve: install
	$(VENV)/bin/thunder-mcp --http --host 127.0.0.1 --port $(MCP_PORT)

bench: install
	$(PY) -m thunder_env.bench core --quick

clean:
	rm -rf $(VENV) *.egg-info
