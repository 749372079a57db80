# diffmath: every target sets itself up on a fresh machine (creates .venv, installs torch first, then the package).
# GPU users: make TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" test
PYTHON ?= python3
TORCH ?= torch==2.13.0
EXTRAS ?= dev
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(EXTRAS)
CONSTRAINTS := $(VENV)/constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export NO_MKDOCS_2_WARNING := 1

.PHONY: setup demo figure test lint format notebooks lab docs serve bench clean

setup: $(STAMP)

$(CONSTRAINTS):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip freeze | grep -i '^torch==' > $@
	@echo "torch pinned for every later install: $$(cat $@)"

$(STAMP): pyproject.toml $(CONSTRAINTS)
	PIP_CONSTRAINT=$(CONSTRAINTS) $(BIN)/pip install -q -e ".[$(EXTRAS)]"
	touch $@

# the demo writes into build/ (ignored): running it never changes the checkout; `make figure` refreshes the docs' copy
demo: $(STAMP)
	$(BIN)/diffmath tour --out build/tour.png

figure: $(STAMP)
	$(BIN)/diffmath tour --no-progress --out docs/assets/tour.png

# tests/test_docs_site.py builds the site with `mkdocs build --strict` and checks three pages in headless Chromium
# (skipped with a message where no Chromium is installed; .ci/run installs Debian's chromium).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest --durations=15 tests
	$(BIN)/pytest --durations=10 --nbval-lax --nbval-current-env -p no:randomly notebooks

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

notebooks: $(STAMP)
	$(BIN)/python -m diffmath.notebooks notebooks/*.ipynb

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks

docs: $(STAMP)
	$(BIN)/mkdocs build --strict

serve: $(STAMP)
	$(BIN)/mkdocs serve

bench:
	$(MAKE) EXTRAS=dev,bench setup
	PIP_CONSTRAINT=$(CONSTRAINTS) $(BIN)/pip install -q --no-deps smalldiffusion==0.5.0 torchcfm==1.0.7 pot==0.9.7.post1
	$(BIN)/python benchmarks/toy_training.py
	$(BIN)/python benchmarks/solvers.py
	$(BIN)/python benchmarks/flow_matching.py
	$(BIN)/python benchmarks/images.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis site .cache build/docs-site
