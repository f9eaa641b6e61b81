"""Writing a file only the server's user may read (keys, certificates, state), safely."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_private(directory: Path, target: Path, data: bytes) -> None:
    """Write `data` to `target` through a fresh, unique temporary file in `directory`
    (mkstemp: O_CREAT | O_EXCL | O_NOFOLLOW, mode 0600), fsynced, then renamed over `target`:
    never through a name someone could have planted (a symbolic link) beforehand, and never
    half written."""
    fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o600)  # mkstemp's mode, whatever the umask
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
