PY ?= .venv/bin/python

.PHONY: lint type test bench check
lint:
	$(PY) -m ruff check guildcore tests benchmarks tools
type:
	$(PY) -m mypy guildcore
test:
	$(PY) -m pytest
bench:
	$(PY) -m benchmarks --quick
check: lint type test
