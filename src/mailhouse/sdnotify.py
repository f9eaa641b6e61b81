"""The systemd readiness protocol (sd_notify(3)): `Type=notify` units learn that the server is
ready (every listener accepting) and that it is stopping, so `systemctl start` returns only once
mail can flow and dependent units start after it.

The address comes from $NOTIFY_SOCKET (a path, or "@name" for the abstract namespace); it is
read once and removed from the environment, so the queue and worker processes, which are not
the unit's main process, neither inherit it nor speak for the unit. Without the variable every
call does nothing: the server runs the same under any other supervisor.
"""

from __future__ import annotations

import os
import socket

_address: str | None = None
_claimed = False


def claim() -> None:
    """Take $NOTIFY_SOCKET out of the environment (before any child process is started)."""
    global _address, _claimed
    if not _claimed:
        _claimed = True
        value = os.environ.pop("NOTIFY_SOCKET", None)
        if value and value.startswith(("/", "@")):
            _address = "\0" + value[1:] if value.startswith("@") else value


def notify(state: str) -> bool:
    """Send `state` (e.g. "READY=1", "STOPPING=1"); True when it went out. Never raises: a
    supervisor that went away must not stop the server."""
    claim()
    address = _address
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode("utf-8"), address)
    except OSError:
        return False
    return True
