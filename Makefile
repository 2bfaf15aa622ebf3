# Regula developer entry points. Every target creates .venv on first use, so a fresh clone needs
# only python3 (>= 3.11) and make.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
# Two pytest workers in both lanes: the machines this project targets have two cores.
PYTEST := $(BIN)/pytest -p no:cacheprovider
# The integration lane hands out whole test files (a module's fixtures, e.g. one shared server,
# are set up once) in collection order, where files marked `first` lead; a crashed worker is not
# replaced: the run fails instead of carrying on. tests/conftest.py also fails a parallel run
# that reports fewer tests than were collected.
INTEGRATION := -n 2 --dist loadfile --no-loadscope-reorder --max-worker-restart=0 -m integration tests
# Python and pytest cache compiled modules (and rewritten test modules) in __pycache__; an
# environment that turns that off makes every run compile them all again (10 s of collection).
unexport PYTHONDONTWRITEBYTECODE
FAST := -m "not integration" tests/engine tests/app

.PHONY: serve migrate test test-fast test-integration lint typecheck format lint-docker bench clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The project and its dev extra, reinstalled when pyproject.toml changes.
$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# Start the service locally on the embedded default (SQLite ./regula.db, Dask LocalCluster).
serve: $(BIN)/python
	$(BIN)/pip install --quiet -e .
	$(BIN)/regula serve

migrate: $(BIN)/python
	$(BIN)/pip install --quiet -e .
	$(BIN)/regula migrate

# Everything CI runs: lint, format check, type check, the fast lane, then the integration tests
# (real servers, Dask workers, PostgreSQL, a real browser). pytest's exit code 5 ("no tests
# collected") is reported but not treated as a failure; every other non-zero code is.
test: lint typecheck
	@$(MAKE) --no-print-directory test-fast
	@$(MAKE) --no-print-directory test-integration

# Engine and app unit tests: no subprocesses, two workers.
test-fast: $(VENV)/.dev-installed
	@status=0; $(PYTEST) -n 2 $(FAST) $(PYTEST_ARGS) || status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; \
	exit $$status

# Real servers, Dask workers, PostgreSQL, a browser: two workers, one test file at a time each.
test-integration: $(VENV)/.dev-installed
	@status=0; $(PYTEST) $(INTEGRATION) $(PYTEST_ARGS) || status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; \
	exit $$status

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.dev-installed
	$(BIN)/mypy engine app

format: $(VENV)/.dev-installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The Dockerfile through hadolint, the compose file against the compose-spec JSON schema.
lint-docker: $(VENV)/.dev-installed
	$(BIN)/hadolint Dockerfile
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml

# Benchmarks against peers (PyTorch CPU and scikit-learn come with the dev extra).
bench: $(VENV)/.dev-installed
	$(BIN)/python -m bench

clean-venv:
	rm -rf $(VENV)
