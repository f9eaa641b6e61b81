"""A POP3 or IMAP worker process: `[pop3] workers = N` / `[imap] workers = N` > 1 runs N of
them per service under `mailhouse serve` (entry points: pop3_process.py, imap_process.py).

The main process binds the service's listening sockets (before dropping privileges) and starts
N children with `ChildSupervisor` (supervisor.py: the queue process's machinery), handing them
the sockets with `pass_fds`: each child serves the same sockets, so the kernel spreads the
accepts over them. Each child has its own uvloop loop, store instance, service (Pop3Service or
ImapMailService), LoginGuard, TLS context and connection caps, but not its own login throttle:

- **TLS**: the certificate and key arrive through the pipe as PEM bytes (the parent read them
  before dropping privileges: a root-only key file still works) and are loaded from a memfd.
- **Connection caps**: each child admits 1/N of its service's caps (app.service_limits:
  `limits.<service>_max_connections`, else the service's share of `limits.max_connections`;
  and `<service>_max_connections_per_ip`, else `max_connections_per_ip`, per address or IPv6
  /64), at least 1: all the service's sessions together stay within the caps, though one busy
  child may refuse while another has room.
- **Login throttle**: one for the server, in the main process. Each child's LoginGuard asks it
  through a private channel (service/throttle_channel.py: a socketpair end made for this spawn,
  its fd under "channels" in the payload), one round trip per login, so failures and checks in
  flight are counted once across the children, submission and all. When the channel breaks the
  child refuses logins (fails closed) and stops, so the supervisor restarts it with a new one;
  when a child dies, the main process releases its checks in flight.
- **Wake-ups** (store/wakeup.py): the child's store publishes its changes (an expunge, a flag)
  to every process; an IMAP child also starts its own socket, so its sessions hear of
  deliveries and of other processes' changes (IDLE, NOOP). A POP3 child only publishes.
- **The POP3 maildrop lock** holds across processes: it is the store's (`Store.lock_maildrop`;
  the SQLite store flocks `data_dir/locks/pop3/<account id>` for the session).

Stops on SIGTERM (stop accepting, let sessions finish within the shutdown grace, close the
store) and at once when the parent is gone (end of file on the pipe, PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import ssl
from pathlib import Path
from typing import Any

from mailhouse import supervisor
from mailhouse.app import MAILBOX_SERVICES, SHUTDOWN_GRACE, service_limits
from mailhouse.config import Config
from mailhouse.net.listener import ConnectionLimits, ConnectionTracker, Listener
from mailhouse.net.tls import ensure_self_signed, reload_certificate, server_context
from mailhouse.service.accounts import Accounts, Passwords
from mailhouse.service.throttle import LoginGuard
from mailhouse.service.throttle_channel import REPLY_MARGIN, RemoteThrottle
from mailhouse.store import open_store
from mailhouse.store.wakeup import SocketWakeups
from mailhouse.supervisor import serve_until_stopped


def worker_limits(config: Config, workers: int, service: str = "pop3") -> ConnectionLimits:
    """One worker's share of a service's connection caps."""
    limits = service_limits(config, service)
    return ConnectionLimits(max(1, limits.max_connections // workers),
                            max(1, limits.max_connections_per_ip // workers))


def tls_context(config: Config, pem: tuple[bytes, bytes] | None) -> ssl.SSLContext:
    """The parent's certificate and key (PEM bytes), loaded without touching the disk."""
    if pem is None or not hasattr(os, "memfd_create"):
        if config.tls.cert and config.tls.key:
            return server_context(config.tls.cert, config.tls.key)
        return server_context(*ensure_self_signed(config.data_dir / "tls", config.hostname))
    fds = [os.memfd_create(name) for name in ("cert", "key")]
    try:
        for fd, data in zip(fds, pem, strict=True):
            os.write(fd, data)
        return server_context(*(Path(f"/proc/self/fd/{fd}") for fd in fds))
    finally:
        for fd in fds:
            os.close(fd)


def reload_tls(config: Config, tls: ssl.SSLContext, log: logging.Logger) -> None:
    """SIGHUP from the parent: the certificate files read again, as the parent does (as this
    process's user: a key only root can read cannot be reloaded, by anyone, after the drop)."""
    if config.tls.cert and config.tls.key:
        cert, key = config.tls.cert, config.tls.key
    else:
        cert, key = ensure_self_signed(config.data_dir / "tls", config.hostname)
    problem = reload_certificate(tls, cert, key)
    if problem is None:
        log.info("event=tls.reloaded cert=%s", cert)
    else:
        log.error("event=tls.reload_failed cert=%s error=%s (the old certificate stays)",
                  cert, problem)


def _certificate_changed(config: Config, pem: tuple[bytes, bytes] | None) -> bool:
    """Whether the configured files now hold another pair than the one the parent handed
    over at the spawn (a renewal reloaded while this worker was starting)."""
    if pem is None or not (config.tls.cert and config.tls.key):
        return False
    try:
        return (config.tls.cert.read_bytes(), config.tls.key.read_bytes()) != pem
    except OSError:  # a key only root reads: the parent's copy is all there is
        return False


def remote_throttle(config: Config, payload: dict[str, Any]) -> RemoteThrottle:
    """The main process's login throttle, through this spawn's channel."""
    (channel,) = payload["channels"]
    parent = int(payload["parent"])

    def lost() -> None:
        # Logins are refused from now on; restart (SIGTERM: finish the sessions, exit, get a
        # new channel from the supervisor). A parent that is gone stops us through the pipe.
        if os.getppid() == parent:
            os.kill(os.getpid(), signal.SIGTERM)

    return RemoteThrottle(socket.socket(fileno=channel),
                          timeout=config.submission.auth_queue_timeout + REPLY_MARGIN,
                          on_lost=lost)


async def _run_child(config: Config, payload: dict[str, Any], control: int) -> None:
    service = MAILBOX_SERVICES[payload["service"]]
    log = logging.getLogger(f"mailhouse.{service.name}.process")
    workers = int(payload["workers"])
    tls = tls_context(config, payload.get("pem"))
    sockets = {name: [socket.socket(fileno=fd) for fd in fds]
               for name, fds in payload["sockets"].items()}
    wakeups = SocketWakeups(config.data_dir)
    if service.watches:
        await wakeups.start()
    store = open_store(config.data_dir, wakeups=wakeups)
    await store.open()
    limits = worker_limits(config, workers, service.name)
    tracker = ConnectionTracker(limits.max_connections)
    throttle = remote_throttle(config, payload)
    guard = LoginGuard(Accounts(store, Passwords()), throttle,
                       config.submission.auth_failure_delay)
    listeners: list[Listener] = []
    orphaned = False
    try:
        await throttle.start()
        listeners = service.listeners(config, store, guard,
                                      tracker.pool(service.name, limits), tls, sockets,
                                      wakeups)
        tracker.start()
        for listener in listeners:
            await listener.start()
        # Until here SIGHUP was ignored (imap_process/pop3_process): a reload while this
        # worker started is caught up by comparing the files with what the parent handed us.
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGHUP, reload_tls, config, tls, log)  # the parent passes its SIGHUP on
        if _certificate_changed(config, payload.get("pem")):
            reload_tls(config, tls, log)
        log.info("event=%s.process_ready pid=%d worker=%s", service.name, os.getpid(),
                 payload["index"])
        orphaned = await serve_until_stopped(control)
        log.info("event=%s.process_stopping reason=%s", service.name,
                 "orphaned" if orphaned else "signal")
    finally:
        for listener in listeners:
            await listener.stop_accepting()
        await tracker.shutdown(0.0 if orphaned else SHUTDOWN_GRACE)
        await throttle.close()
        await store.close()
        await wakeups.close()


def child_main(service: str, control: int = 0) -> int:
    """The body of `python -m mailhouse.pop3_process` / `mailhouse.imap_process`: only ever
    started by App (ChildSupervisor)."""
    return supervisor.child_main(
        control, what=service, role=lambda payload: f"{service}-{payload['index']}",
        body=lambda config, payload: _run_child(config, payload, control))
