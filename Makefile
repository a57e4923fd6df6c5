# The README's two commands: `make demo` and `make test`. Both build .venv with a Python >= 3.12 first.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: demo test bench docs clean

$(VENV)/.installed: setup.cfg pyproject.toml
	@python=$$(scripts/find-python) && echo "using $$python" && "$$python" -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@scripts/install-graphviz  # dot, for the tutorials' model graphs; says so and goes on where it cannot
	@touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/ppgen demo --out runs/demo

test: $(VENV)/.installed
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.installed
	$(PY) benchmarks/svi_overhead.py

# the HTML site (API from the docstrings, tutorials with their stored outputs) in docs/_build/html; warnings fail
docs: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[docs]'
	$(PY) -m sphinx -W --keep-going -b html docs docs/_build/html

clean:
	rm -rf $(VENV) runs build *.egg-info docs/_build docs/_generated
