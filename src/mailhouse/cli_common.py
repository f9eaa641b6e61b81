"""What every `mailhouse` admin command shares: exit codes, output, and acting as the owner of
data_dir, the service user (privileges.py). Kept apart from __main__ so command modules
(cli_dns, cli_queue) can import it without importing the command line back."""

from __future__ import annotations

import argparse
import getpass
import os
import pwd
import sys
from collections.abc import Sequence
from typing import Final, TextIO

from mailhouse.config import Config
from mailhouse.privileges import (
    become,
    check_data_dir_access,
    check_interpreter,
    owner_of,
    prepare_data_dir,
    service_account,
)
from mailhouse.service.accounts import AccountError, InvalidInput

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1  # the operation failed (exists, not found, storage error)
EXIT_USAGE: Final = 2  # the command line or the config is wrong
EXIT_INTERRUPTED: Final = 130


def out(line: str) -> None:
    print(line, flush=True)


def error(message: str) -> None:
    print(f"mailhouse: {message}", file=sys.stderr, flush=True)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Left-aligned columns two spaces apart, the header first; no line ends in blanks (a row
    may leave its last columns empty)."""
    widths = [max(len(row[i]) for row in (headers, *rows)) for i in range(len(headers))]
    for row in (headers, *rows):
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        out("  ".join([*cells, row[-1]]).rstrip())


def become_data_dir_owner(config: Config) -> None:
    """Run as root, act as the account that owns data_dir BEFORE touching it, so every file we
    create (the database and its -wal/-shm, blobs, DKIM keys) is the server's and private.

    The account is the configured `user` (data_dir created 0700 for it when missing; another
    owner is refused with the fix), or, without `user`, the owner of an existing data_dir that
    is not root's. `user = "root"`, or no `user` and a missing or root-owned data_dir: root
    stays root (the umask still makes every file private). Raises ConfigError."""
    if os.geteuid() != 0:
        return
    account = service_account(config) or owner_of(config.data_dir)
    if account is None:
        return
    prepare_data_dir(config.data_dir, account)
    become(account)
    check_interpreter(account)
    check_data_dir_access(config.data_dir, account)


def read_password(args: argparse.Namespace, stdin: TextIO | None = None) -> str:
    """First line of stdin with --password-stdin (scripts), else asked twice without echo."""
    if args.password_stdin:
        line = (stdin or sys.stdin).readline()
        password = line.rstrip("\n").rstrip("\r")
        if not password:
            raise InvalidInput("no password on standard input")
        return password
    try:
        first = getpass.getpass("Password: ")
        second = getpass.getpass("Repeat password: ")
    except EOFError:
        raise InvalidInput(
            "no password given; type it at the prompt or pipe it with --password-stdin") from None
    if first != second:
        raise AccountError("the passwords do not match; nothing changed")
    return first


def actor() -> str:
    """Who runs this command, read before it drops privileges."""
    try:
        name = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        name = str(os.getuid())
    sudo = os.environ.get("SUDO_USER")
    return f"cli:{name}" + (f" (sudo {sudo})" if sudo and sudo != name else "")
