"""The systemd readiness protocol (sd_notify(3)): `Type=notify` units learn that the server is
ready (every listener accepting) and that it is stopping, so `systemctl start` returns only once
mail can flow and dependent units start after it.

The address comes from $NOTIFY_SOCKET (a path, or "@name" for the abstract namespace); it is
read once and removed from the environment, so the queue and worker processes, which are not
the unit's main process, neither inherit it nor speak for the unit. Without the variable every
call does nothing: the server runs the same under any other supervisor.

The watchdog (sd_watchdog_enabled(3)): with `WatchdogSec=` in the unit, systemd sets
$WATCHDOG_USEC (and $WATCHDOG_PID, the process meant) and restarts the service when no
"WATCHDOG=1" arrives within that time. `watchdog_interval` says how often to ping: half the
time, as the manual advises; the main process pings only while its health checks pass
(app.py), so a hung event loop or a store that stopped answering gets the server restarted.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("mailhouse")

_address: str | None = None
_claimed = False
_watchdog: float | None = None  # seconds between pings; None: no watchdog


def claim() -> None:
    """Take $NOTIFY_SOCKET and the watchdog's variables out of the environment (before any
    child process is started)."""
    global _address, _claimed, _watchdog
    if not _claimed:
        _claimed = True
        value = os.environ.pop("NOTIFY_SOCKET", None)
        if value and value.startswith(("/", "@")):
            _address = "\0" + value[1:] if value.startswith("@") else value
        usec = os.environ.pop("WATCHDOG_USEC", None)
        pid = os.environ.pop("WATCHDOG_PID", None)
        if usec is None or (pid is not None and pid != str(os.getpid())):
            return  # none, or meant for another process (sd_watchdog_enabled(3))
        if not (usec.isascii() and usec.isdigit()) or int(usec) == 0:
            log.warning("event=sdnotify.bad_watchdog_usec value=%r (no watchdog pings)", usec)
            return
        _watchdog = int(usec) / 1_000_000 / 2


def watchdog_interval() -> float | None:
    """Seconds between "WATCHDOG=1" pings, or None when systemd asked for none."""
    claim()
    return _watchdog if _address is not None else None


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
