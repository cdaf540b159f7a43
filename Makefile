# `make demo`: create .venv if needed, install the package, run the quickstart.
# `make test`: the same venv, the whole test suite.
# `make test-floor`: the whole suite in .venv-floor, with every dependency at its declared lower bound
#   (.ci/floor-constraints.txt; FLOOR_PYTHON picks the interpreter). .ci/run runs both; see docs/install.md.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FLOOR_PYTHON ?= $(PYTHON)
FLOOR_VENV ?= .venv-floor

.PHONY: install install-floor demo test test-floor bench dist clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

$(FLOOR_VENV)/.installed: pyproject.toml .ci/floor-constraints.txt
	test -x $(FLOOR_VENV)/bin/python || $(FLOOR_PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(FLOOR_VENV)/bin/python -m pip install --quiet -c .ci/floor-constraints.txt -e ".[dev]"
	touch $@

install: $(VENV)/.installed

install-floor: $(FLOOR_VENV)/.installed

demo: install
	$(PY) examples/quickstart.py

test: install
	$(PY) -m pytest -q

test-floor: install-floor
	$(FLOOR_VENV)/bin/python -m pytest -q -p no:cacheprovider

bench: install
	$(PY) benchmarks/bench_backbone.py

dist: install
	$(PY) -m pip wheel --quiet --no-deps --wheel-dir dist .

clean:
	rm -rf $(VENV) $(FLOOR_VENV) build dist src/*.egg-info .pytest_cache
