"""What every protocol's transport shares: one asyncio Protocol per connection around a sans-I/O
core. Admission against the connection caps, reading and writing with back-pressure, the one
task a session may have in flight (a commit, a login check, a handshake, a download), STARTTLS,
the deadlines, and shutdown (implicit TLS is set up by the listener, net/listener.py).
Subclasses (net/smtp.py, net/pop3.py) only translate their core's events into service calls in
`_pump()`.

No peer can pin a session (docs/decisions.md, "A transport no peer can pin"):
- input is handed to the core a slice at a time, at most `TURN_FEEDS` slices per event-loop
  turn; then the session yields (call_soon) so one pipelining connection cannot starve others;
- nothing is fed while the transport is paused for writing, so a peer that never reads holds
  about the write buffer's high-water mark of replies, and reading pauses meanwhile;
- the sweeper (ConnectionTracker, once a second) aborts a session whose writes have been stuck
  for `write_stall` seconds (also while a task runs: a download waiting in `_drain()`), ends it
  at `lifetime` whatever it is doing, and otherwise applies the idle timeout, a deadline for a
  whole command line (first byte to LF) and one for the opening phase (greeting to EHLO, or to
  a POP3 login);
- every close is followed by `abort()` if the peer has not taken the last bytes within a grace.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import ssl
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, cast

from mailhouse.net.listener import ConnectionPool, Slot, peer_of

log = logging.getLogger("mailhouse.net")

MAX_UNPARSED = 256 * 1024  # bytes received and not yet handed to the core before reading pauses
FEED_SLICE = 1024  # bytes of command input handed to the core at a time (~170 NOOPs)
FEED_CONTENT = 64 * 1024  # ... of message content (SMTP DATA/BDAT): cheap per byte
TURN_FEEDS = 4  # slices one connection is served per event-loop turn before others get theirs
CLOSE_GRACE = 3.0  # s a session closed for a timeout has to take its last reply; then abort()


@dataclass(frozen=True, slots=True)
class Deadlines:
    """Bounds in time besides the idle timeout and the lifetime (limits.* in the config)."""

    write_stall: float = 60.0  # writes paused this long (the peer does not read): abort
    command_line: float = 60.0  # first byte of a line to its LF
    opening: float = 60.0  # greeting to EHLO/HELO (SMTP), to a successful login (POP3)
    tls_handshake: float = 10.0  # implicit TLS and STARTTLS/STLS


class Core(Protocol):
    """The part of a protocol core the transport drives the same way for every protocol."""

    def receive_data(self, data: bytes) -> None: ...
    def data_to_send(self) -> bytes: ...
    def timeout(self) -> None: ...
    def shutdown(self) -> bool: ...
    def tls_established(self) -> None: ...
    @property
    def buffered(self) -> int: ...


class CoreProtocol(asyncio.Protocol, abc.ABC):
    """Base transport. `core` is None before admission and after the connection is lost."""

    name = "session"  # for logs: smtp, pop3 …
    busy_reply = b""  # sent when the connection caps refuse a client
    lifetime_reply = b""  # sent when a session outlives `lifetime`

    def __init__(self, pool: ConnectionPool, tls: ssl.SSLContext | None, *,
                 idle_timeout: float, lifetime: float, implicit_tls: bool,
                 deadlines: Deadlines, slot: Slot | None = None) -> None:
        self.pool = pool
        self.slot = slot  # admitted by the listener (TLS ports) or in connection_made
        self.tls = tls
        self.idle_timeout = idle_timeout
        self.lifetime = lifetime
        self.implicit_tls = implicit_tls
        self.deadlines = deadlines
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.core: Core | None = None
        self.ip = self.peer = ""
        self.last_activity = self.started = self.loop.time()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._read_paused = False
        self._write_paused = False
        self._write_paused_at: float | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._inbox = bytearray()  # received, not yet handed to the core
        self._feeds = 0  # slices left in this turn
        self._scheduled = False  # a turn is queued with call_soon
        self._line_started: float | None = None  # first byte of a line without its LF yet
        self._closed_at: float | None = None  # we closed; abort() after `_close_grace`
        self._close_grace = 0.0

    # --- for subclasses ----------------------------------------------------------------------
    @abc.abstractmethod
    def _new_core(self) -> Core: ...

    @abc.abstractmethod
    def _pump(self) -> None:
        """Run the core until it needs bytes or `_run()` started a task. At NeedData call
        `_need_data()`: True means more input was handed over, go on."""

    def _idle_limit(self) -> float:
        return self.idle_timeout

    def _opening(self) -> bool:
        """Still in the opening phase (bounded by `deadlines.opening` from the connection)."""
        return False

    def _in_lines(self) -> bool:
        """Input is lines (the command-line deadline applies); False for binary chunks."""
        return True

    def _feed_size(self) -> int:
        return FEED_SLICE

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
        if self.slot is None:
            self.slot = self.pool.admit(self.ip)
            if self.slot is None:
                log.info("event=connection.refused service=%s peer=%s reason=limit", self.name,
                         self.peer)
                transport.write(self.busy_reply)
                transport.close()
                return
        self.pool.tracker.sessions.add(self)
        self.core = self._new_core()
        if self.implicit_tls:
            self._tls_started(transport.get_extra_info("ssl_object"))
        if self.pool.tracker.closing:  # a handshake that ended after shutdown began
            self.request_shutdown()
            return
        self._serve()

    def data_received(self, data: bytes) -> None:
        core = self.core
        if core is None or self._closed_at is not None:
            return
        now = self.last_activity = self.loop.time()
        end = data.rfind(b"\n")
        if end < 0:
            if self._line_started is None:
                self._line_started = now
        else:
            self._line_started = None if end == len(data) - 1 else now
        if (self._task is None and not self._scheduled and not self._inbox
                and not self._write_paused and len(data) <= self._feed_size()):
            self._feeds = TURN_FEEDS - 1  # the common case: a few commands, no copy
            core.receive_data(data)
            self._pump()
            return
        self._inbox += data
        if self._task is None and not self._scheduled:
            self._serve()
        else:
            self._update_reading()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._writable.set()  # a download waiting to write must wake up and see the end
        if self.core is None:
            return
        self.core = None
        self._inbox.clear()
        self.pool.tracker.sessions.discard(self)
        if self.slot is not None:
            self.slot.release()
        if self._task is None:
            self._lost()

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._write_paused_at is None:
            self._write_paused_at = self.loop.time()
        self._writable.clear()
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._write_paused_at = None
        self._writable.set()
        if self._task is None:
            self._schedule()
        self._update_reading()

    # --- listener.Session --------------------------------------------------------------------
    def request_shutdown(self) -> None:
        self._stopping = True
        if (self._task is None and self.core is not None and self._closed_at is None
                and self.core.shutdown()):
            self._flush_and_close()

    def wake(self) -> None:
        """Something besides the peer's input gave the core something to say or do (IMAP IDLE,
        another session's change): serve a turn soon. Not in the middle of a task (its end
        serves a turn) nor once closing; several wakes before the turn make one."""
        if self.core is not None and self._closed_at is None:
            self._schedule()

    def check_timers(self, now: float) -> None:
        core = self.core
        if core is None or self.transport is None:
            return
        if self._closed_at is not None:
            if now - self._closed_at > self._close_grace:
                log.info("event=%s.close_stalled peer=%s", self.name, self.peer)
                self.abort()
            return
        if self._write_paused_at is not None and now - self._write_paused_at > (
                self.deadlines.write_stall):
            # The peer takes nothing: no reply can reach it. Also ends a download in _drain().
            log.info("event=%s.write_stall peer=%s", self.name, self.peer)
            self.abort()
            return
        if now - self.started > self.lifetime:
            log.info("event=%s.lifetime peer=%s", self.name, self.peer)
            if self._task is None:  # else we may be inside a reply (a download)
                self._flush()
                self._write(self.lifetime_reply)
            self._close(CLOSE_GRACE)
            return
        if self._task is not None:
            return  # a commit or login check in progress is not the peer's slowness
        if self._opening() and now - self.started > self.deadlines.opening:
            self._timeout("opening")
        elif (self._line_started is not None and self._in_lines()
              and now - self._line_started > self.deadlines.command_line
              and (self._inbox or core.buffered)):  # not, e.g., after a binary BDAT chunk
            self._timeout("line")
        elif now - self.last_activity > self._idle_limit():
            self._timeout("idle")

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # --- tasks -------------------------------------------------------------------------------
    def _need_data(self) -> bool:
        """The pump's NeedData: hand the core the next slice of input (True: pump on), or flush
        and stop: input exhausted, writes backed up, turn over, or shutting down."""
        core = self.core
        assert core is not None
        if self._stopping and core.shutdown():
            self._flush_and_close()
            return False
        self._flush()
        if not self._inbox or self._write_paused or self._closed_at is not None:
            return False
        if self._feeds <= 0:
            self._schedule()  # let other connections have their turn
            return False
        self._feeds -= 1
        size = self._feed_size()
        chunk = bytes(self._inbox[:size])
        del self._inbox[:size]
        core.receive_data(chunk)
        return True

    def _serve(self) -> None:
        """One turn: pump the core, feeding it at most TURN_FEEDS slices of what arrived."""
        self._scheduled = False
        if self.core is None or self._task is not None or self._closed_at is not None:
            return
        self._feeds = TURN_FEEDS
        self._pump()
        self._update_reading()

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._serve)

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
        if self.core is None:  # the client went away meanwhile
            self._lost()
            return
        if then is not None:
            then(result)
        # The time the task took was ours, not the peer's.
        now = self.last_activity = self.loop.time()
        if self._line_started is not None:
            self._line_started = now
        self._serve()

    async def _start_tls(self) -> None:
        assert self.transport is not None and self.core is not None and self.tls is not None
        # RFC 3207 §4.2 / RFC 2595 §4, CVE-2011-0411: whatever was pipelined after STARTTLS/STLS
        # is dropped (the core ignores it too); from here on only bytes from inside TLS count.
        # The task's first step runs with nothing in between: no plaintext byte slips past.
        self._inbox.clear()
        self._line_started = None
        raw = self.transport
        try:
            new = await self.loop.start_tls(raw, self, self.tls, server_side=True,
                                            ssl_handshake_timeout=self.deadlines.tls_handshake)
            if new is None:
                raise ConnectionError("TLS handshake did not complete")
        except Exception as exc:  # ssl.SSLError, a handshake timeout, a peer gone meanwhile
            log.info("event=%s.tls_failed peer=%s error=%s", self.name, self.peer, exc)
            raw.abort()
            # asyncio (not uvloop) does not always report the loss of a connection whose
            # handshake failed: release the slot here (connection_lost is idempotent).
            self.connection_lost(exc)
            return
        self.transport = new
        self._read_paused = False  # the new transport reads; the old one's state is gone
        self._write_paused, self._write_paused_at = False, None
        self._writable.set()
        self.core.tls_established()
        self._tls_started(new.get_extra_info("ssl_object"))

    async def _drain(self) -> bool:
        """Wait until the socket takes more (a download must not fill memory). False: the
        session is closing or gone, stop writing. A peer that never reads is aborted by the
        write-stall deadline, which wakes this."""
        if not self._writable.is_set():
            await self._writable.wait()
        return self.core is not None and self._closed_at is None

    # --- helpers -----------------------------------------------------------------------------
    def _timeout(self, which: str) -> None:
        """A deadline passed while the session waits for the peer: the core's timeout reply,
        then close (and abort if the peer does not take it)."""
        assert self.core is not None
        log.info("event=%s.timeout peer=%s deadline=%s", self.name, self.peer, which)
        self.core.timeout()
        self._flush()
        self._close(CLOSE_GRACE)

    def _write(self, data: bytes) -> None:
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _flush(self) -> None:
        if self.core is not None:
            self._write(self.core.data_to_send())

    def _flush_and_close(self) -> None:
        self._flush()
        self._close(self.deadlines.write_stall)

    def _close(self, grace: float) -> None:
        """Close after the unsent bytes; the sweeper aborts if that takes longer than `grace`."""
        if self._closed_at is None:
            self._closed_at = self.loop.time()
            self._close_grace = grace
            self._inbox.clear()
            self._writable.set()  # a task waiting in _drain() sees the end
        if self.transport is not None:
            self.transport.close()

    def _update_reading(self) -> None:
        """Read while the core keeps up: paused while writes are backed up or input piles up."""
        transport = self.transport
        if transport is None or self._closed_at is not None:
            return
        pause = self._write_paused or len(self._inbox) >= MAX_UNPARSED
        if pause and not self._read_paused:
            self._read_paused = True
            transport.pause_reading()
        elif not pause and self._read_paused:
            self._read_paused = False
            transport.resume_reading()
