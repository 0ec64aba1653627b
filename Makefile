# Every target builds the virtualenv first; it is reinstalled only when pyproject.toml changes.
PYTHON ?= $(shell command -v python3.11 >/dev/null 2>&1 && echo python3.11 || echo python3)
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test bench setup

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/soulspot-jobs demo

# The whole suite on Redis 6.2, then the breaker, middleware and jobs suites on Valkey and Redis 7
# (see .ci/test-passes; SOULSPOT_TEST_REDIS=redis6|valkey|redis7 picks the server of one run).
test: $(STAMP)
	bash .ci/test-passes $(VENV)/bin/python
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	@set -e; for script in bench/[!_]*.py; do \
		name=$$(basename "$$script" .py); \
		echo "== bench.$$name"; \
		$(VENV)/bin/python -m "bench.$$name"; \
	done
