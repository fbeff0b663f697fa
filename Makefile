# The two jobs of the README: `make run` (the main job) and `make test` (the whole test suite).
# Both create the workspace's virtual environment (.venv) first, reinstalling only when
# pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test test-nbs test-py bench hooks clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,dask]"
	$(BIN)/python -m ipykernel install --sys-prefix --name research-kit --display-name "research_kit"
	touch $@

setup: $(STAMP)

## The main job on the bundled data: validate every data package, then run the `annual` batch
## of reports (cached runs are skipped) and print the path of the index page.
run: setup
	$(BIN)/rk datasets validate
	$(BIN)/rk batch annual

## Everything: the notebooks' own tests (nbdev-test), then the pytest suite.
test: setup
	$(BIN)/nbdev-test --n-workers 2
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python benchmarks/bench_load.py

clean:
	rm -rf .cache reports/_build _docs
