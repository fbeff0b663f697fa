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

## Git hooks for notebooks: nbdev's merge driver resolves notebook conflicts cell by cell, JupyterLab
## cleans notebooks on save, and a pre-commit hook cleans staged notebooks (keeping the parameters
## tag) and clears the outputs of report templates.
hooks: setup
	$(BIN)/nbdev-install-hooks
	printf '%s\n' '#!/bin/sh' \
	  '# clean staged notebooks before they are committed (nbdev-clean keeps the papermill parameters tag)' \
	  'files=$$(git diff --cached --name-only --diff-filter=ACM -- "*.ipynb")' \
	  '[ -z "$$files" ] && exit 0' \
	  'for f in $$files; do' \
	  '  case "$$f" in reports/*) $(abspath $(BIN))/jupyter nbconvert --log-level=WARN --clear-output --inplace "$$f" || exit 1;; esac' \
	  '  $(abspath $(BIN))/nbdev-clean --fname "$$f" && git add "$$f" || exit 1' \
	  'done' \
	  > .git/hooks/pre-commit
	chmod +x .git/hooks/pre-commit

bench: setup
	$(BIN)/python benchmarks/bench_load.py

clean:
	rm -rf .cache reports/_build _docs
