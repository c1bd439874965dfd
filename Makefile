# The README's commands. `make demo` and `make test` work on a fresh machine with Python 3.11+.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test chaos lint typecheck bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

# Two pytest-xdist workers (each test has its own database); the FLEET tests run one at a
# time on one of them (tests/conftest.py). PYTEST_ARGS="-n 0" runs the suite in one process.
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

# The chaos suite at the issue's sizes (tests/chaos; the short tier already runs in `make test`).
# Reports go to tests/chaos/reports/; replay a seed with CAIRN_CHAOS_SEED=<seed>.
chaos: $(STAMP)
	CAIRN_CHAOS_SCALE=long $(BIN)/python -m pytest -m chaos -s -o timeout=3600 tests/chaos $(PYTEST_ARGS)

# ruff, mypy --strict, and the architecture's contracts (import-linter: [tool.importlinter] in
# pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check src tests examples
	$(BIN)/mypy
	$(BIN)/lint-imports

# The benchmark suite (bench/README.md): a private Postgres, pgbench ceiling, cairn and the
# peers on every workload. `make bench BENCH_ARGS="--quick"` is a ~2 minute smoke run.
bench: $(STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
