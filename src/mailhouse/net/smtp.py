"""Runs SMTP connections: socket bytes ⇄ the sans-I/O core, decisions ⇄ a service (inbound on
the MX port, submission on 587/465).

An asyncio Protocol per connection. Most events are answered on the spot (the service decides
MAIL and RCPT from memory, small messages sit in the spool's buffer); only spilling a large
message, the final commit, a login check (argon2 in a thread, then the failure delay) and the
TLS handshake run as a task, with reading paused meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, cast, runtime_checkable

from mailhouse.errors import Reply
from mailhouse.net.listener import ConnectionTracker, peer_of
from mailhouse.net.tls import describe
from mailhouse.proto.smtp import events as ev
from mailhouse.proto.smtp.server import SmtpServer, SmtpServerConfig

log = logging.getLogger("mailhouse.smtp")

BUSY = Reply(421, "4.7.0", "Too many connections, try again later").to_bytes()
LIFETIME = Reply(421, "4.4.2", "Session too long, closing connection").to_bytes()
FAILED = Reply(451, "4.3.0", "Temporary local problem, try again later")
NO_AUTH = Reply(503, "5.5.1", "Authentication not enabled")
MAX_UNPARSED = 256 * 1024  # pause reading while a task runs and this much input is waiting


@dataclass(frozen=True, slots=True)
class SmtpTimeouts:
    idle: float = 300.0  # RFC 5321 §4.5.3.2.7: at least 5 minutes awaiting a command
    data: float = 180.0  # per data block (the client-side figure of RFC 5321 §4.5.3.2.6)
    lifetime: float = 3600.0  # bounds slow-drip clients (security checklist 17)


class SmtpSession(Protocol):
    """What the pump asks of a session (service/inbound.py and service/submission.py). Sync
    methods answer from memory; True from data_start/data_chunk means `write()` must be awaited
    before going on."""

    tls: str | None

    def on_helo(self, event: ev.Helo) -> None: ...
    def mail_from(self, event: ev.MailFrom) -> Reply: ...
    def rcpt_to(self, event: ev.RcptTo) -> Reply | None: ...
    async def rcpt_recheck(self, event: ev.RcptTo) -> Reply: ...
    def data_start(self) -> bool: ...
    def data_chunk(self, data: bytes) -> bool: ...
    async def write(self) -> None: ...
    async def data_complete(self, event: ev.DataComplete) -> Reply: ...
    def reset(self) -> None: ...


@runtime_checkable
class AuthenticatingSession(Protocol):
    """A session that can check SASL credentials (submission). The MX session cannot: its core
    has no mechanisms, so it never asks."""

    async def authenticate(self, event: ev.AuthCredentials) -> Reply: ...


class SmtpService(Protocol):
    """Makes one session per connection; `peer` is "ip:port" (IPv6 in brackets)."""

    def session(self, peer: str) -> SmtpSession: ...


@dataclass(frozen=True, slots=True)
class SmtpEndpoint:
    """What every connection of one SMTP listener shares."""

    core: SmtpServerConfig
    service: SmtpService
    tracker: ConnectionTracker
    tls: ssl.SSLContext | None
    timeouts: SmtpTimeouts
    implicit_tls: bool = False

    def factory(self) -> SmtpProtocol:
        return SmtpProtocol(self)


class SmtpProtocol(asyncio.Protocol):
    def __init__(self, endpoint: SmtpEndpoint) -> None:
        self.endpoint = endpoint
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.core: SmtpServer | None = None
        self.session: SmtpSession | None = None
        self.ip = self.peer = ""
        self.last_activity = self.started = self.loop.time()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._read_paused = False
        self._write_paused = False

    # --- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        self.ip, self.peer = peer_of(transport)
        endpoint = self.endpoint
        if not endpoint.tracker.admit(self.ip):
            log.info("event=connection.refused service=smtp peer=%s reason=limit", self.peer)
            transport.write(BUSY)
            transport.close()
            return
        endpoint.tracker.sessions.add(self)
        self.core = SmtpServer(endpoint.core, tls_active=endpoint.implicit_tls)
        self.session = endpoint.service.session(self.peer)
        if endpoint.implicit_tls:
            self.session.tls = describe(transport.get_extra_info("ssl_object"))
        self._pump()

    def data_received(self, data: bytes) -> None:
        core = self.core
        if core is None:
            return
        self.last_activity = self.loop.time()
        core.receive_data(data)
        if self._task is None:
            self._pump()
        elif core.buffered > MAX_UNPARSED:
            self._pause_reading()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self.core is None:
            return
        self.core = None
        self.endpoint.tracker.sessions.discard(self)
        self.endpoint.tracker.release(self.ip)
        # A commit in flight finishes on its own (its reply is lost; the client retries, so a
        # duplicate is possible, a loss is not). Anything merely spooled is dropped.
        if self._task is None and self.session is not None:
            self.session.reset()

    def pause_writing(self) -> None:
        self._write_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._task is None:
            self._resume_reading()

    # --- listener.Session ------------------------------------------------------------------
    def request_shutdown(self) -> None:
        self._stopping = True
        if self._task is None and self.core is not None and self.core.shutdown():
            self._flush_and_close()

    def check_timers(self, now: float) -> None:
        core = self.core
        if core is None or self._task is not None:
            return  # a commit or handshake in progress is not idleness
        timeouts = self.endpoint.timeouts
        if now - self.started > timeouts.lifetime:
            log.info("event=smtp.lifetime peer=%s", self.peer)
            assert self.transport is not None
            self.transport.write(LIFETIME)
            self.transport.close()
            return
        limit = timeouts.data if core.in_data else timeouts.idle
        if now - self.last_activity > limit:
            log.info("event=smtp.timeout peer=%s", self.peer)
            core.timeout()
            self._pump()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # --- the pump --------------------------------------------------------------------------
    def _pump(self) -> None:
        """Run the core until it needs bytes or a task must wait for something."""
        core, session = self.core, self.session
        if core is None or session is None:
            return
        while True:
            event = core.next_event()
            kind = type(event)
            if kind is ev.NeedData:
                if self._stopping and core.shutdown():
                    continue
                self._flush()
                return
            if kind is ev.RcptTo:
                reply = session.rcpt_to(event)  # type: ignore[arg-type]
                if reply is None:
                    self._run(session.rcpt_recheck(event), core.respond)  # type: ignore[arg-type]
                    return
                core.respond(reply)
            elif kind is ev.DataChunk:
                if session.data_chunk(event.data):  # type: ignore[union-attr]
                    self._run(session.write())
                    return
            elif kind is ev.MailFrom:
                core.respond(session.mail_from(event))  # type: ignore[arg-type]
            elif kind is ev.DataStart:
                if session.data_start():
                    self._run(session.write())
                    return
            elif kind is ev.DataComplete:
                self._flush()  # earlier replies need not wait for the commit
                self._run(session.data_complete(event), core.respond)  # type: ignore[arg-type]
                return
            elif kind is ev.DataAborted or kind is ev.TransactionReset:
                session.reset()
            elif kind is ev.Helo:
                session.on_helo(event)  # type: ignore[arg-type]
            elif kind is ev.AuthCredentials:
                self._flush()  # the 334s and earlier replies need not wait for the check
                if isinstance(session, AuthenticatingSession):
                    self._run(session.authenticate(event), core.respond)  # type: ignore[arg-type]
                    return
                core.respond(NO_AUTH)
            elif kind is ev.StartTls:
                self._flush()
                self._run(self._start_tls())
                return
            elif kind is ev.Closed:
                self._flush_and_close()
                return

    def _run(self, work: Coroutine[Any, Any, Any],
             then: Callable[[Reply], None] | None = None) -> None:
        self._task = self.loop.create_task(self._finish(work, then))

    async def _finish(self, work: Coroutine[Any, Any, Any],
                      then: Callable[[Reply], None] | None) -> None:
        try:
            result = await work
        except Exception:
            log.exception("event=smtp.task_failed peer=%s", self.peer)
            result = FAILED
            if then is None:  # a handshake or spool write that blew up: hang up
                self._task = None
                self.abort()
                return
        self._task = None
        if self.core is None:  # the client went away meanwhile
            if self.session is not None:
                self.session.reset()
            return
        if then is not None:
            then(result)
        if not self._write_paused:
            self._resume_reading()
        self._pump()

    async def _start_tls(self) -> None:
        assert self.transport is not None and self.core is not None
        tls = self.endpoint.tls
        assert tls is not None
        # RFC 3207 §4.2, CVE-2011-0411: the core has already dropped whatever was pipelined
        # after STARTTLS; from here on only bytes from inside TLS reach it.
        new = await self.loop.start_tls(self.transport, self, tls, server_side=True,
                                        ssl_handshake_timeout=30)
        if new is None:
            raise ConnectionError("TLS handshake did not complete")
        self.transport = new
        self.core.tls_established()
        assert self.session is not None
        self.session.tls = describe(new.get_extra_info("ssl_object"))

    # --- helpers ---------------------------------------------------------------------------
    def _flush(self) -> None:
        assert self.core is not None and self.transport is not None
        out = self.core.data_to_send()
        if out:
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
