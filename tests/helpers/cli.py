"""Running one CLI command group's handlers in process, as `mailhouse` wires them."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from mailhouse.config import Config

Register = Callable[..., None]  # a cli_*.register(subparsers, ...)


@dataclass(frozen=True, slots=True)
class Run:
    code: int
    out: str
    err: str


def run_group(register: Register, capsys: pytest.CaptureFixture[str], config: Config,
              *argv: str) -> Run:
    """Parse `argv` with a parser holding only `register`'s commands and run the handler; a
    usage error is exit 2 as argparse makes it. No command may print a traceback."""
    parser = argparse.ArgumentParser(prog="mailhouse")
    register(parser.add_subparsers(dest="command", required=True))
    code: Any
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 2
    else:
        code = args.handler(args, config)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return Run(int(code), captured.out, captured.err)
