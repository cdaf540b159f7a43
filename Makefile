# `make demo`: create .venv if needed, install the package, run the quickstart.
# `make test`: the same venv, the whole test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) examples/quickstart.py

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/bench_backbone.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
