"""Reusable helpers for tests and benchmarks that drive real processes on loopback.

- `tests.helpers.mailhouse.MailhouseServer`: a real `python -m mailhouse serve` subprocess with
  its own config file and data directory, on free 127.0.0.1 ports; CLI wrappers (domain/user
  add, export) and start / stop (SIGTERM) / kill (SIGKILL) / restart.
- `tests.helpers.postfix.PostfixInstance`: a private Postfix (Debian package) with its own
  config, queue and data directories; relays chosen domains to a loopback port and/or delivers
  to maildirs with virtual(8).
- `tests.helpers.tools`: finds external programs (swaks, postfix, smtp-source) and decides
  whether a missing one means "skip" (developer machine) or "fail" (CI=true).
- `tests.helpers.fixtures`: pytest fixtures built on the above; import the ones you need into
  your conftest.py, e.g. ``from tests.helpers.fixtures import mailhouse_factory  # noqa: F401``.

Only `fixtures` and `tools.require_tools` import pytest, so benchmarks can reuse the rest.
"""
