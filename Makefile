# The two commands of the README: `make train` (the main job) and `make test`; `make docs` builds the site.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv train test lint format docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

# Into runs/<dataset>/, which git ignores; ARGS="--out examples/results/digits" rewrites the committed results.
train: $(STAMP)
	$(BIN)/python -m examples.train $(ARGS)

test: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 -q

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .

# Warnings are errors and every reference must resolve (-n); the suite runs the same build (tests/test_docs.py).
docs: $(STAMP)
	$(BIN)/sphinx-build -W --keep-going -n -q -b html docs docs/_build/html

clean:
	rm -rf $(VENV) .pytest_cache docs/_build build dist
