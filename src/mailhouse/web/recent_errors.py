"""The dashboard's "last errors": the main process's own warnings and errors, kept in memory.

There is no error table in the store, and the log may go to the journal or a file the server
cannot read back; so a logging handler on the `mailhouse` logger keeps the last
`RECENT_ERRORS` records at WARNING or above. Only the main process's (the listeners, the queue
when in process, the admin); the POP3/IMAP workers' and a separate queue process's records are
in their logs only.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import ClassVar, Final

RECENT_ERRORS: Final = 20


@dataclass(frozen=True, slots=True)
class LoggedError:
    at: float  # epoch seconds
    level: str
    logger: str
    text: str


class RecentErrors(logging.Handler):
    _installed: ClassVar[RecentErrors | None] = None

    def __init__(self, size: int = RECENT_ERRORS) -> None:
        super().__init__(logging.WARNING)
        self.records: deque[LoggedError] = deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a bad format string must not break logging
            text = str(record.msg)
        self.records.append(LoggedError(record.created, record.levelname, record.name,
                                        text[:500]))

    def newest_first(self) -> list[LoggedError]:
        return list(reversed(self.records))

    @classmethod
    def shared(cls) -> RecentErrors:
        """The process's one handler, attached to the `mailhouse` logger on first use (an app
        built twice, as in tests, must not add a second)."""
        if cls._installed is None:
            cls._installed = cls()
            logging.getLogger("mailhouse").addHandler(cls._installed)
        return cls._installed
