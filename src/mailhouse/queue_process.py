"""The outbound side (queue scheduler, SMTP delivery, bounces) and the process it runs in.

With `[queue] process = "separate"` (the default) `mailhouse serve` runs two processes: the
listeners' (every socket clients connect to) and one child for the queue, each with its own
event loop, store instance and directory cache, so both cores work (docs/decisions.md, "How
mailhouse uses the two cores"). With "inline" the App builds the same outbound side on the
listeners' loop (`build_outbound`), as before.

The child is `python -m mailhouse.queue_process`, started by `QueueSupervisor` in the listener
process after privileges were dropped (so it runs as the same unprivileged user). Its standard
input is a pipe from the parent that carries, in order:
  1. the config, pickled, behind a 4-byte length (the parent's already validated Config, so
     both processes run the same settings, also for configs built in code);
  2. one byte per wake-up (`on_queued`: new mail was queued), coalesced: at most one write per
     loop iteration, none while the pipe is full (the child has wake-ups to read anyway);
  3. end of file when the parent is gone: the child stops at once (no grace: a restarted
     server starts its own child, and two queue processes must not deliver side by side).
On Linux the child also asks for SIGKILL when its parent dies (PR_SET_PDEATHSIG), which ends it
even while its loop is busy. The store's 1 s poll (`idle_wake`) stays: `mailhouse queue flush`
only edits the database.

The pipe, the restarts and the death with the parent are supervisor.py's, shared with the POP3
workers (worker_process.py).

Supervision: a child that exits while the server runs is restarted after 1 s, doubling up to
60 s while it keeps dying young; its death never touches the listeners, and mail they accept
waits in the store. On shutdown the parent sends SIGTERM, waits the queue grace (plus a little
for the store to close), then SIGKILL. Unfinished recipients stay PENDING either way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mailhouse import supervisor
from mailhouse.config import Config
from mailhouse.net.delivery import SmtpDelivery
from mailhouse.queue.bounces import StoreBounceSender
from mailhouse.queue.worker import QueueWorker
from mailhouse.service.directory import DirectoryCache
from mailhouse.service.trace_recorder import TraceRecorder
from mailhouse.store import open_store
from mailhouse.store.base import Store
from mailhouse.store.wakeup import SocketWakeups
from mailhouse.supervisor import ChildSupervisor, serve_until_stopped

log = logging.getLogger("mailhouse.queue.process")

QUEUE_GRACE = 10.0  # seconds outbound deliveries in flight get on SIGTERM
CLOSE_MARGIN = 5.0  # beyond the grace: the child closes its store before it is killed


def local_addresses(config: Config) -> frozenset[str]:
    """The addresses where a remote MX would be ourselves: every IP our MX listeners accept on
    at the outbound delivery port (a wildcard listener means every address of this host). An MX
    that resolves to one of them is a mail loop (RFC 5321 §5.1), not a delivery."""
    out: set[str] = set()
    for host, port in config.listen_endpoints("smtp"):
        if port != config.delivery.port:
            continue
        if host in ("0.0.0.0", "::"):
            out.update({"127.0.0.1", "::1"})
            with contextlib.suppress(OSError):
                for info in socket.getaddrinfo(socket.gethostname(), None):
                    out.add(str(info[4][0]))
        else:
            out.add(host)
    return frozenset(out)


@dataclass(slots=True)
class Outbound:
    """The queue side of a server: scheduler, remote delivery and bounce sender."""

    delivery: SmtpDelivery
    worker: QueueWorker

    async def stop(self, grace: float) -> None:
        await self.worker.stop(grace)
        await self.delivery.close()


def build_outbound(config: Config, store: Store, directory: DirectoryCache,
                   trace: TraceRecorder | None = None) -> Outbound:
    delivery = SmtpDelivery(config.delivery, config.dns, hostname=config.hostname,
                            local_addresses=local_addresses(config))
    worker: QueueWorker | None = None

    def wake() -> None:  # a bounce queued for a remote sender
        if worker is not None:
            worker.wake()

    worker = QueueWorker(
        store, delivery, config.queue,
        StoreBounceSender(store, directory, hostname=config.hostname,
                          plus_separator=config.smtp.plus_separator, wake=wake),
        trace=trace)
    return Outbound(delivery, worker)


# --- the parent's side ------------------------------------------------------------------------

class QueueSupervisor(ChildSupervisor):
    """Starts the queue child, wakes it (`wake()`: mail was queued), restarts it when it dies,
    stops it on shutdown (supervisor.py)."""

    def __init__(self, config: Config, *, python: str = sys.executable) -> None:
        super().__init__(config, "mailhouse.queue_process", name="queue", python=python)

    async def stop(self, timeout: float = QUEUE_GRACE) -> None:
        """SIGTERM the child, wait for it (grace + CLOSE_MARGIN), then SIGKILL."""
        await super().stop(timeout + CLOSE_MARGIN)


# --- the child --------------------------------------------------------------------------------

async def _run_child(config: Config, payload: dict[str, Any], control: int) -> None:
    # Bounces land in local mailboxes: IMAP sessions in other processes hear of them.
    wakeups = SocketWakeups(config.data_dir)
    await wakeups.start()
    store = open_store(config.data_dir, wakeups=wakeups)
    await store.open()
    directory = DirectoryCache(store)
    trace = TraceRecorder(store)
    outbound: Outbound | None = None
    orphaned = False
    try:
        await directory.start()
        outbound = build_outbound(config, store, directory, trace)
        await outbound.worker.start()
        log.info("event=queue.process_ready pid=%d", os.getpid())
        orphaned = await serve_until_stopped(control, outbound.worker.wake)
        log.info("event=queue.process_stopping reason=%s", "orphaned" if orphaned else "signal")
    finally:
        if outbound is not None:
            await outbound.stop(0.0 if orphaned else QUEUE_GRACE)
        await trace.close()
        await directory.stop()
        await store.close()
        await wakeups.close()


def child_main(control: int = 0, run: Callable[..., object] | None = None) -> int:
    """`python -m mailhouse.queue_process`: only ever started by QueueSupervisor."""
    return supervisor.child_main(
        control, what="queue", role=lambda payload: "queue",
        body=lambda config, payload: _run_child(config, payload, control), run=run)


if __name__ == "__main__":
    sys.exit(child_main())
