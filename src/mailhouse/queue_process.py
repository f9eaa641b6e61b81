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

Supervision: a child that exits while the server runs is restarted after 1 s, doubling up to
60 s while it keeps dying young; its death never touches the listeners, and mail they accept
waits in the store. On shutdown the parent sends SIGTERM, waits the queue grace (plus a little
for the store to close), then SIGKILL. Unfinished recipients stay PENDING either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import pickle
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mailhouse.config import Config
from mailhouse.net.delivery import SmtpDelivery
from mailhouse.queue.bounces import StoreBounceSender
from mailhouse.queue.worker import QueueWorker
from mailhouse.service.directory import DirectoryCache
from mailhouse.store import open_store
from mailhouse.store.base import Store

log = logging.getLogger("mailhouse.queue.process")

QUEUE_GRACE = 10.0  # seconds outbound deliveries in flight get on SIGTERM
CLOSE_MARGIN = 5.0  # beyond the grace: the child closes its store before it is killed
RESTART_MIN = 1.0  # first restart delay after the child died
RESTART_MAX = 60.0
STABLE_AFTER = 60.0  # a child that lived this long died of something new: restart quickly
PR_SET_PDEATHSIG = 1  # linux/prctl.h
WAKE = b"\x01"
_LENGTH = struct.Struct("!I")
EXIT_CONFIG = 2


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


def build_outbound(config: Config, store: Store, directory: DirectoryCache) -> Outbound:
    delivery = SmtpDelivery(config.delivery, config.dns, hostname=config.hostname,
                            local_addresses=local_addresses(config))
    worker: QueueWorker | None = None

    def wake() -> None:  # a bounce queued for a remote sender
        if worker is not None:
            worker.wake()

    worker = QueueWorker(
        store, delivery, config.queue,
        StoreBounceSender(store, directory, hostname=config.hostname,
                          plus_separator=config.smtp.plus_separator, wake=wake))
    return Outbound(delivery, worker)


def configure_logging(level: str, role: str) -> None:
    """Both processes log to the same stderr; `role` says which one wrote a line."""
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s %(levelname)s %(name)s role={role} %(message)s",
    )


# --- the parent's side ------------------------------------------------------------------------

class QueueSupervisor:
    """Starts the queue child, wakes it, restarts it when it dies, stops it on shutdown."""

    def __init__(self, config: Config, *, python: str = sys.executable) -> None:
        self._config = config
        self._python = python
        self._process: asyncio.subprocess.Process | None = None
        self._wake_fd: int | None = None
        self._wake_pending = False
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._spawned = asyncio.Event()
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    async def start(self) -> None:
        """Start the first child (raises if it cannot be spawned at all), then supervise."""
        process = await self._spawn()
        self._task = asyncio.create_task(self._supervise(process), name="queue-supervisor")

    def wake(self) -> None:
        """Mail was queued: tell the child, once per loop iteration however many arrived."""
        if self._wake_pending or self._wake_fd is None:
            return
        self._wake_pending = True
        asyncio.get_running_loop().call_soon(self._send_wake)

    def _send_wake(self) -> None:
        self._wake_pending = False
        if self._wake_fd is None:
            return
        # BlockingIOError: the pipe is full of wake-ups the child has yet to read.
        # BrokenPipeError: the child is gone; its successor looks at the queue when it starts.
        with contextlib.suppress(BlockingIOError, BrokenPipeError):
            os.write(self._wake_fd, WAKE)

    def begin_stop(self) -> None:
        """Shutdown has begun: a child that exits from now on is not restarted."""
        self._stopping = True

    async def stop(self, grace: float = QUEUE_GRACE) -> None:
        """SIGTERM the child, wait for it (grace + CLOSE_MARGIN), then SIGKILL."""
        self._stopping = True
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), grace + CLOSE_MARGIN)
            except TimeoutError:
                log.warning("event=queue.process_killed pid=%d reason=grace_expired", process.pid)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._close_wake()

    async def _spawn(self) -> asyncio.subprocess.Process:
        read_fd, write_fd = os.pipe()  # both close-on-exec; the read end becomes fd 0
        try:
            payload = pickle.dumps({"config": self._config, "parent": os.getpid()})
            env = dict(os.environ)
            # The child runs the parent's copy of mailhouse, wherever it was imported from.
            package_root = str(Path(__file__).resolve().parents[1])
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (package_root, env.get("PYTHONPATH", "")) if p)
            process = await asyncio.create_subprocess_exec(
                self._python, "-m", "mailhouse.queue_process",
                stdin=read_fd, stdout=None, stderr=None, env=env)
        except BaseException:
            os.close(read_fd)
            os.close(write_fd)
            raise
        os.close(read_fd)
        # The config first, blocking (the child reads it at once), then wake-ups, non-blocking.
        try:
            await asyncio.to_thread(_write_all, write_fd, _LENGTH.pack(len(payload)) + payload)
        except OSError:
            os.close(write_fd)  # the child died at once; the supervisor sees it exit
        else:
            os.set_blocking(write_fd, False)
            self._close_wake()
            self._wake_fd = write_fd
        self._process = process
        log.info("event=queue.process_started pid=%d", process.pid)
        return process

    async def _supervise(self, process: asyncio.subprocess.Process) -> None:
        loop = asyncio.get_running_loop()
        delay = RESTART_MIN
        while True:
            started = loop.time()
            status = await process.wait()
            if self._stopping:
                return
            self._close_wake()
            if loop.time() - started >= STABLE_AFTER:
                delay = RESTART_MIN
            log.error("event=queue.process_exited pid=%d status=%s restart_in=%.0f",
                      process.pid, status, delay)
            while True:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RESTART_MAX)
                if self._stopping:
                    return
                try:
                    process = await self._spawn()
                except OSError:
                    log.exception("event=queue.process_spawn_failed")
                    continue
                self.restarts += 1
                break

    def _close_wake(self) -> None:
        fd, self._wake_fd = self._wake_fd, None
        if fd is not None:
            os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# --- the child --------------------------------------------------------------------------------

def _read_exactly(fd: int, size: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        chunk = os.read(fd, size - len(out))
        if not chunk:
            raise EOFError("the parent closed the pipe before the config arrived")
        out += chunk
    return bytes(out)


def _die_with_parent(parent: int) -> None:
    """SIGKILL when the parent dies, as a crash of the whole server would (Linux). The pipe's
    end of file covers other systems and a parent that died before this call."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


async def _run_child(config: Config, control: int) -> None:
    loop = asyncio.get_running_loop()
    store = open_store(config.data_dir)
    await store.open()
    directory = DirectoryCache(store)
    outbound: Outbound | None = None
    stop = asyncio.Event()
    orphaned = False
    try:
        await directory.start()
        outbound = build_outbound(config, store, directory)
        worker = outbound.worker
        await worker.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

        def readable() -> None:
            nonlocal orphaned
            try:
                data = os.read(control, 4096)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if data:
                worker.wake()
                return
            orphaned = True  # end of file: the listener process is gone
            loop.remove_reader(control)
            stop.set()

        os.set_blocking(control, False)
        loop.add_reader(control, readable)
        log.info("event=queue.process_ready pid=%d", os.getpid())
        await stop.wait()
        log.info("event=queue.process_stopping reason=%s", "orphaned" if orphaned else "signal")
    finally:
        if outbound is not None:
            await outbound.stop(0.0 if orphaned else QUEUE_GRACE)
        await directory.stop()
        await store.close()


def child_main(control: int = 0, run: Callable[..., object] | None = None) -> int:
    """`python -m mailhouse.queue_process`: only ever started by QueueSupervisor."""
    try:
        (length,) = _LENGTH.unpack(_read_exactly(control, _LENGTH.size))
        payload = pickle.loads(_read_exactly(control, length))
    except (EOFError, OSError, pickle.UnpicklingError) as exc:
        print(f"mailhouse queue process: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    config: Config = payload["config"]
    _die_with_parent(int(payload["parent"]))
    configure_logging(config.log.level, "queue")
    if os.geteuid() == 0 and config.user and config.user != "root":
        log.error("event=queue.process_refused reason=running_as_root user=%s", config.user)
        return EXIT_CONFIG
    if run is None:
        try:
            import uvloop
        except ImportError:
            run = asyncio.run
        else:
            run = uvloop.run
    started = time.monotonic()
    run(_run_child(config, control))
    log.info("event=queue.process_exit uptime=%.1f", time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(child_main())
