"""Runs SMTP connections: socket bytes ⇄ the sans-I/O core, decisions ⇄ the inbound service.

An asyncio Protocol per connection. Most events are answered on the spot (the service decides
MAIL and RCPT from memory, small messages sit in the spool's buffer); only spilling a large
message, the final commit and the TLS handshake run as a task, with reading paused meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, cast

from mailhouse.errors import Reply
from mailhouse.net.listener import ConnectionTracker, peer_of
from mailhouse.net.tls import describe
from mailhouse.proto.smtp import events as ev
from mailhouse.proto.smtp.server import SmtpServer, SmtpServerConfig
from mailhouse.service.inbound import InboundService, InboundSession

log = logging.getLogger("mailhouse.smtp")

BUSY = Reply(421, "4.7.0", "Too many connections, try again later").to_bytes()
LIFETIME = Reply(421, "4.4.2", "Session too long, closing connection").to_bytes()
FAILED = Reply(451, "4.3.0", "Temporary local problem, try again later")
MAX_UNPARSED = 256 * 1024  # pause reading while a task runs and this much input is waiting


@dataclass(frozen=True, slots=True)
class SmtpTimeouts:
    idle: float = 300.0  # RFC 5321 §4.5.3.2.7: at least 5 minutes awaiting a command
    data: float = 180.0  # per data block (the client-side figure of RFC 5321 §4.5.3.2.6)
    lifetime: float = 3600.0  # bounds slow-drip clients (security checklist 17)


@dataclass(frozen=True, slots=True)
class SmtpEndpoint:
    """What every connection of one SMTP listener shares."""

    core: SmtpServerConfig
    service: InboundService
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
        self.session: InboundSession | None = None
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
