# mailhouse developer entry points. `make test` is the one command README and CI run.
PYTHON ?= python3
PYTEST_ARGS ?=
# Benchmark options, e.g. `make bench BENCH_ARGS=--quick`.
BENCH_ARGS ?=
# `make fuzz FUZZ_TARGET=smtp_server FUZZ_TIME=600`: one fuzz target (or `all`, each in turn)
# for FUZZ_TIME seconds; FUZZ_ARGS passes more libFuzzer options. docs/fuzzing.md.
FUZZ_TARGET ?= all
FUZZ_TIME ?= 600
FUZZ_ARGS ?=
# `make serve CONFIG=path/to/mailhouse.toml` (default: the server's try-it-now defaults).
CONFIG ?=

.PHONY: install install-runtime install-deps test lint typecheck imports pytest serve bench \
	install-fuzz fuzz
export PIP_ROOT_USER_ACTION := ignore
export PIP_DISABLE_PIP_VERSION_CHECK := 1

# Everything the tests need: Debian packages (postfix, swaks…) and the dev extras.
install: install-deps
	$(PYTHON) -m pip install -q -e '.[dev]'

# Only what the server needs to run.
install-runtime:
	$(PYTHON) -m pip install -q -e .

install-deps:
	bash scripts/install-deps.sh

# The README's test command: installs what it needs, then every check and every test.
test: install lint typecheck imports pytest

lint:
	$(PYTHON) -m ruff check .

typecheck:
	$(PYTHON) -m mypy
	$(PYTHON) -m mypy --explicit-package-bases tests/helpers tests/interop bench fuzz

imports:
	lint-imports

# `python -m pytest` puts the repository root on sys.path, so `tests.helpers` imports.
pytest:
	$(PYTHON) -m pytest tests $(PYTEST_ARGS)

# The README's start command: installs the server, then runs it in the foreground.
serve: install-runtime
	$(PYTHON) -m mailhouse $(if $(CONFIG),--config $(CONFIG)) serve

bench:
	$(PYTHON) -m bench.smtp_ingest $(BENCH_ARGS)

install-fuzz:
	$(PYTHON) -m pip install -q -e '.[fuzz]'

fuzz: install-fuzz
	$(PYTHON) -m fuzz $(FUZZ_TARGET) -max_total_time=$(FUZZ_TIME) $(FUZZ_ARGS)
