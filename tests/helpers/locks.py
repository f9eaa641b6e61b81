"""Looking at flocks from outside their holder."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


def is_flocked(path: Path) -> bool:
    """Whether someone holds `path`'s flock (tried from a fresh open file description)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
