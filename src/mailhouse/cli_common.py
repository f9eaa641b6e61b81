"""What every `mailhouse` admin command shares: exit codes, output, and acting as the owner of
data_dir. Kept apart from __main__ so command modules (cli_dns, cli_queue) can import it without
importing the command line back."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1  # the operation failed (exists, not found, storage error)
EXIT_USAGE: Final = 2  # the command line or the config is wrong
EXIT_INTERRUPTED: Final = 130


def out(line: str) -> None:
    print(line, flush=True)


def error(message: str) -> None:
    print(f"mailhouse: {message}", file=sys.stderr, flush=True)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Left-aligned columns two spaces apart, the header first; the last column unpadded so
    lines carry no trailing blanks."""
    widths = [max(len(row[i]) for row in (headers, *rows)) for i in range(len(headers))]
    for row in (headers, *rows):
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        out("  ".join([*cells, row[-1]]))


def become_data_dir_owner(data_dir: Path) -> None:
    """Run as root on a data_dir the server owns (it chowns it to `user` at start), act as that
    owner: files we create (SQLite's -wal/-shm, blobs, DKIM keys) must stay writable by the
    server."""
    if os.geteuid() != 0:
        return
    try:
        st = data_dir.stat()
    except OSError:
        return
    if st.st_uid == 0:
        return
    os.setgroups([])
    os.setgid(st.st_gid)
    os.setuid(st.st_uid)
