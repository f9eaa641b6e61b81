# mailhouse developer entry points. `make test` is the one command README and CI run.
PYTHON ?= python3
PYTEST_ARGS ?=
# Benchmark options, e.g. `make bench BENCH_ARGS=--quick`.
BENCH_ARGS ?=
# `make serve CONFIG=path/to/mailhouse.toml` (default: the server's try-it-now defaults).
CONFIG ?=

.PHONY: install install-deps test lint typecheck imports pytest serve bench

install: install-deps
	$(PYTHON) -m pip install -e '.[dev]'

install-deps:
	bash scripts/install-deps.sh

test: lint typecheck imports pytest

lint:
	$(PYTHON) -m ruff check .

typecheck:
	$(PYTHON) -m mypy
	$(PYTHON) -m mypy --explicit-package-bases tests/helpers tests/interop bench

imports:
	lint-imports

# `python -m pytest` puts the repository root on sys.path, so `tests.helpers` imports.
pytest:
	$(PYTHON) -m pytest tests $(PYTEST_ARGS)

serve:
	$(PYTHON) -m mailhouse $(if $(CONFIG),--config $(CONFIG)) serve

bench:
	$(PYTHON) -m bench.smtp_ingest $(BENCH_ARGS)
