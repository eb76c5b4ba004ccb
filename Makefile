# Every target installs what it needs into .venv first; only Python 3.11+ is assumed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEPENDS := $(BIN)/python pyproject.toml constraints.txt

.PHONY: run test lint bench format clean image image-test stack-test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# One stamp per set of extras, so `make run` installs only what the service needs.
$(VENV)/.installed-service: $(DEPENDS)
	$(BIN)/pip install --quiet -c constraints.txt -e .
	touch $@

$(VENV)/.installed-dev: $(DEPENDS)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

$(VENV)/.installed-bench: $(DEPENDS)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,bench]'
	touch $@

run: $(VENV)/.installed-service
	$(BIN)/errands serve

# The console's browser tests drive Debian's headless Chromium; the deploy tests check the
# HAProxy and Prometheus configs with the tools themselves.
TEST_COMMANDS := chromium chromedriver haproxy promtool
TEST_PACKAGES := chromium chromium-driver haproxy prometheus

test: $(VENV)/.installed-dev
	(for command in $(TEST_COMMANDS); do command -v $$command >/dev/null || exit 1; done) || \
		{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $(TEST_PACKAGES); }
	$(BIN)/pytest

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

bench: $(VENV)/.installed-bench
	for script in bench/*.py; do $(BIN)/python $$script || exit 1; done

# Containers, built and run in a private Docker daemon (as root; see deploy/scripts/lib.sh).
image:
	deploy/scripts/image.sh

image-test:
	deploy/scripts/image-test.sh

# The stack's checks are tests/test_stack.py, run with the dev tools.
stack-test: $(VENV)/.installed-dev
	deploy/scripts/stack-test.sh

format: $(VENV)/.installed-dev
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

clean:
	rm -rf $(VENV) .errands .pytest_cache .mypy_cache .ruff_cache
