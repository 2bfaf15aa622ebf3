# Regula developer entry points. Every target creates .venv on first use, so a fresh clone needs
# only python3 (>= 3.11) and make.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: serve migrate test lint format lint-docker bench clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Start the service locally on the embedded default (SQLite ./regula.db, Dask LocalCluster).
serve: $(BIN)/python
	$(BIN)/pip install --quiet -e .
	$(BIN)/regula serve

migrate: $(BIN)/python
	$(BIN)/pip install --quiet -e .
	$(BIN)/regula migrate

# Lint, format check and the whole test suite. pytest's exit code 5 ("no tests collected") is
# reported but not treated as a failure; every other non-zero code is.
test: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@status=0; $(BIN)/pytest $(PYTEST_ARGS) || status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; \
	exit $$status

lint: $(BIN)/python
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(BIN)/python
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The Dockerfile through hadolint, the compose file against the compose-spec JSON schema.
lint-docker: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/hadolint Dockerfile
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml

# Benchmarks against peers; the `bench` extra brings PyTorch (CPU) and scikit-learn.
bench: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench

clean-venv:
	rm -rf $(VENV)
