"""The dashboard's "last errors": every process's recent warnings and errors.

There is no error table in the store, and the log may go to the journal or a file the server
cannot read back; so a logging handler on the `mailhouse` logger keeps the last
`RECENT_ERRORS` records at WARNING or above. `serve` is several processes (the listeners, a
queue process, POP3 and IMAP workers), so — as metrics.py does for the counters — the main
process prepares a directory (`data_dir/run/errors`, emptied at start) and names it in the
environment; every process of `serve` then also keeps its last records in a file of its own
there (`<pid>.json`, rewritten whole at each record: errors are rare), and the dashboard reads
them all, a restarted worker's included. Without the directory (tests, the CLI) the records
live in this process only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar, Final

from mailhouse.run_dirs import fresh_shared_dir

RECENT_ERRORS: Final = 20
MAX_TEXT: Final = 500  # characters of one record's message kept
MAX_FILE: Final = 64 * 1024  # octets of one process's file read back

ENV: Final = "MAILHOUSE_ERRORS_DIR"
RUN_DIR: Final = ("run", "errors")


@dataclass(frozen=True, slots=True)
class LoggedError:
    at: float  # epoch seconds
    level: str
    logger: str
    text: str
    pid: int = 0


class RecentErrors(logging.Handler):
    _installed: ClassVar[RecentErrors | None] = None

    def __init__(self, size: int = RECENT_ERRORS, directory: Path | None = None) -> None:
        super().__init__(logging.WARNING)
        self.records: deque[LoggedError] = deque(maxlen=size)
        self.directory = directory
        self._write = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a bad format string must not break logging
            text = str(record.msg)
        self.records.append(LoggedError(record.created, record.levelname, record.name,
                                        text[:MAX_TEXT], os.getpid()))
        if self.directory is not None:
            self._save(self.directory)

    def _save(self, directory: Path) -> None:
        """This process's file, replaced whole; a failure is dropped (logging it would
        come back here)."""
        target = directory / f"{os.getpid()}.json"
        temp = directory / f".{os.getpid()}.tmp"
        data = json.dumps([asdict(r) for r in self.records]).encode()
        with self._write, contextlib.suppress(OSError):
            temp.write_bytes(data)
            os.replace(temp, target)

    def newest_first(self) -> list[LoggedError]:
        """Every process's records when they share a directory, else this one's."""
        if self.directory is None:
            return list(reversed(self.records))
        return collect(self.directory, self.records.maxlen or RECENT_ERRORS)

    @classmethod
    def shared(cls) -> RecentErrors:
        """The process's one handler, attached to the `mailhouse` logger on first use (an app
        built twice, as in tests, must not add a second)."""
        if cls._installed is None:
            directory = os.environ.get(ENV)
            cls._installed = cls(directory=Path(directory) if directory else None)
            logging.getLogger("mailhouse").addHandler(cls._installed)
        return cls._installed


def collect(directory: Path, limit: int) -> list[LoggedError]:
    """The newest `limit` records of every process's file, newest first; unreadable or
    foreign files are skipped (the directory is the service user's, but be strict)."""
    found: list[LoggedError] = []
    for path in directory.glob("*.json"):
        try:
            with open(path, "rb") as fh:
                raw = json.loads(fh.read(MAX_FILE))
            found += [LoggedError(float(r["at"]), str(r["level"]), str(r["logger"]),
                                  str(r["text"])[:MAX_TEXT], int(r["pid"])) for r in raw]
        except (OSError, ValueError, TypeError, KeyError):
            continue
    found.sort(key=lambda r: r.at, reverse=True)
    return found[:limit]


def prepare(data_dir: Path) -> Path:
    """The main process of `serve`, before any child starts: an empty directory, named in the
    environment the children inherit, and this process's handler writing there."""
    directory = fresh_shared_dir(data_dir, RUN_DIR, ENV)
    attach()
    return directory


def attach() -> None:
    """Keep this process's records in the shared directory when one is named (a child)."""
    directory = os.environ.get(ENV)
    if directory:
        RecentErrors.shared().directory = Path(directory)
