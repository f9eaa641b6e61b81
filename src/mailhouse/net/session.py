"""What every protocol's transport shares: one asyncio Protocol per connection around a sans-I/O
core. Admission against the connection caps, reading and writing with back-pressure, the one
task a session may have in flight (a commit, a login check, a handshake, a download), STARTTLS,
idle and lifetime timers, and shutdown. Subclasses (net/smtp.py, net/pop3.py) only translate
their core's events into service calls in `_pump()`.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import ssl
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, cast

from mailhouse.net.listener import ConnectionTracker, peer_of

log = logging.getLogger("mailhouse.net")

MAX_UNPARSED = 256 * 1024  # bytes arriving while a task runs before reading pauses
HANDSHAKE_TIMEOUT = 30.0


class Core(Protocol):
    """The part of a protocol core the transport drives the same way for every protocol."""

    def receive_data(self, data: bytes) -> None: ...
    def data_to_send(self) -> bytes: ...
    def timeout(self) -> None: ...
    def shutdown(self) -> bool: ...
    def tls_established(self) -> None: ...


class CoreProtocol(asyncio.Protocol, abc.ABC):
    """Base transport. `core` is None before admission and after the connection is lost."""

    name = "session"  # for logs: smtp, pop3 …
    busy_reply = b""  # sent when the connection caps refuse a client
    lifetime_reply = b""  # sent when a session outlives `lifetime`

    def __init__(self, tracker: ConnectionTracker, tls: ssl.SSLContext | None, *,
                 idle_timeout: float, lifetime: float, implicit_tls: bool) -> None:
        self.tracker = tracker
        self.tls = tls
        self.idle_timeout = idle_timeout
        self.lifetime = lifetime
        self.implicit_tls = implicit_tls
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.core: Core | None = None
        self.ip = self.peer = ""
        self.last_activity = self.started = self.loop.time()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._read_paused = False
        self._write_paused = False
        self._writable = asyncio.Event()
        self._writable.set()
        self._unparsed = 0

    # --- for subclasses ----------------------------------------------------------------------
    @abc.abstractmethod
    def _new_core(self) -> Core: ...

    @abc.abstractmethod
    def _pump(self) -> None:
        """Run the core until it needs bytes or `_run()` started a task."""

    def _idle_limit(self) -> float:
        return self.idle_timeout

    def _tls_started(self, ssl_object: Any) -> None:
        """TLS is up (implicit or after STARTTLS): tell the session, e.g. for trace headers."""

    def _lost(self) -> None:
        """The connection is gone and no task runs: release what the session holds."""

    def _task_failed(self) -> Any:
        """A task raised: the value to hand its `then` callback, or None to hang up."""
        return None

    # --- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        self.ip, self.peer = peer_of(transport)
        if not self.tracker.admit(self.ip):
            log.info("event=connection.refused service=%s peer=%s reason=limit", self.name,
                     self.peer)
            transport.write(self.busy_reply)
            transport.close()
            return
        self.tracker.sessions.add(self)
        self.core = self._new_core()
        if self.implicit_tls:
            self._tls_started(transport.get_extra_info("ssl_object"))
        self._pump()

    def data_received(self, data: bytes) -> None:
        core = self.core
        if core is None:
            return
        self.last_activity = self.loop.time()
        core.receive_data(data)
        if self._task is None:
            self._pump()
        else:
            self._unparsed += len(data)
            if self._unparsed > MAX_UNPARSED:
                self._pause_reading()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._writable.set()  # a download waiting to write must wake up and see the end
        if self.core is None:
            return
        self.core = None
        self.tracker.sessions.discard(self)
        self.tracker.release(self.ip)
        if self._task is None:
            self._lost()

    def pause_writing(self) -> None:
        self._write_paused = True
        self._writable.clear()
        self._pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._writable.set()
        if self._task is None:
            self._resume_reading()

    # --- listener.Session --------------------------------------------------------------------
    def request_shutdown(self) -> None:
        self._stopping = True
        if self._task is None and self.core is not None and self.core.shutdown():
            self._flush_and_close()

    def check_timers(self, now: float) -> None:
        core = self.core
        if core is None or self._task is not None:
            return  # a commit, login check or download in progress is not idleness
        if now - self.started > self.lifetime:
            log.info("event=%s.lifetime peer=%s", self.name, self.peer)
            assert self.transport is not None
            self.transport.write(self.lifetime_reply)
            self.transport.close()
            return
        if now - self.last_activity > self._idle_limit():
            log.info("event=%s.timeout peer=%s", self.name, self.peer)
            core.timeout()
            self._pump()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # --- tasks -------------------------------------------------------------------------------
    def _need_data(self) -> None:
        """The pump's NeedData: flush, or stop here if the server is shutting down."""
        assert self.core is not None
        if self._stopping and self.core.shutdown():
            self._flush_and_close()
            return
        self._flush()

    def _run(self, work: Coroutine[Any, Any, Any],
             then: Callable[[Any], None] | None = None) -> None:
        self._task = self.loop.create_task(self._finish(work, then))

    async def _finish(self, work: Coroutine[Any, Any, Any],
                      then: Callable[[Any], None] | None) -> None:
        try:
            result = await work
        except Exception:
            log.exception("event=%s.task_failed peer=%s", self.name, self.peer)
            result = self._task_failed() if then is not None else None
            if result is None:
                self._task = None
                self.abort()
                return
        self._task = None
        self._unparsed = 0
        if self.core is None:  # the client went away meanwhile
            self._lost()
            return
        if then is not None:
            then(result)
        if not self._write_paused:
            self._resume_reading()
        self._pump()

    async def _start_tls(self) -> None:
        assert self.transport is not None and self.core is not None and self.tls is not None
        # RFC 3207 §4.2 / RFC 2595 §4, CVE-2011-0411: the core has already dropped whatever was
        # pipelined after STARTTLS/STLS; from here on only bytes from inside TLS reach it.
        new = await self.loop.start_tls(self.transport, self, self.tls, server_side=True,
                                        ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
        if new is None:
            raise ConnectionError("TLS handshake did not complete")
        self.transport = new
        self.core.tls_established()
        self._tls_started(new.get_extra_info("ssl_object"))

    async def _drain(self) -> None:
        """Wait until the socket takes more (a download must not fill memory)."""
        await self._writable.wait()

    # --- helpers -----------------------------------------------------------------------------
    def _flush(self) -> None:
        if self.core is None or self.transport is None:
            return
        out = self.core.data_to_send()
        if out and not self.transport.is_closing():
            self.transport.write(out)

    def _flush_and_close(self) -> None:
        self._flush()
        assert self.transport is not None
        self.transport.close()

    def _pause_reading(self) -> None:
        if not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._read_paused and self.transport is not None:
            self._read_paused = False
            self.transport.resume_reading()
