# bty-live developer entry points. `make setup` is what a fresh Debian 12/13 machine runs first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
BTY := $(VENV)/bin/bty
STAMP := $(VENV)/.installed

.PHONY: setup test bench bench-server lint demo clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup-host.sh
	scripts/setup-host.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m compileall -q bty_live cijoe
	touch $(STAMP)

test: setup
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check bty_live cijoe tests tools
	$(VENV)/bin/mypy bty_live
	$(VENV)/bin/mypy -p cijoe.bty

bench: setup
	$(PY) -m compileall -q bty_live  # bytecode as installed: startup is part of what is measured
	$(PY) tools/bench.py
	$(PY) tools/bench_tui.py

bench-server: setup
	$(PY) tools/bench_server.py

demo: setup
	$(PY) tools/demo.py

clean:
	rm -rf build bench-out demo-out .pytest_cache .mypy_cache .ruff_cache
