"""Turn OS and SQLite failures into the replies they deserve.

A full disk or quota is the one failure the sender should hear about precisely (452 4.3.1, RFC 3463
§3.5: "mail system full"); everything else is an unclassified temporary failure (451), so the
sender keeps the message and retries and nothing is lost (RFC 5321 §6.1). The original exception
is kept as `__cause__` for the logs; reply text never names paths.
"""

from __future__ import annotations

import errno
import sqlite3

from mailhouse.errors import MailError, StorageFull

_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_SQLITE_FULL = 13  # primary result code; extended codes keep it in the low byte


def is_full(exc: BaseException) -> bool:
    """True when the failure means "no space left", whoever noticed it first."""
    if isinstance(exc, StorageFull):
        return True
    if isinstance(exc, OSError):
        return exc.errno in _FULL_ERRNOS
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return code is not None and code & 0xFF == _SQLITE_FULL
    return False


def storage_error(exc: BaseException) -> MailError:
    """The MailError to raise for `exc` (raise it `from exc`)."""
    if isinstance(exc, MailError):
        return exc
    return StorageFull() if is_full(exc) else MailError()
