"""Runs SMTP connections: socket bytes ⇄ the sans-I/O core, decisions ⇄ a service (inbound on
the MX port, submission on 587/465).

An asyncio Protocol per connection (the shared machinery is net/session.py). Most events are
answered on the spot (the service decides MAIL and RCPT from memory, small messages sit in the
spool's buffer); only spilling a large
message, the final commit, a login check (argon2 in a thread, then the failure delay) and the
TLS handshake run as a task, with reading paused meanwhile.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from mailhouse.errors import Reply
from mailhouse.net.listener import ConnectionPool, Slot
from mailhouse.net.session import FEED_CONTENT, FEED_SLICE, CoreProtocol, Deadlines
from mailhouse.net.tls import describe
from mailhouse.proto.smtp import events as ev
from mailhouse.proto.smtp.server import SmtpServer, SmtpServerConfig, State

log = logging.getLogger("mailhouse.smtp")

BUSY = Reply(421, "4.7.0", "Too many connections, try again later").to_bytes()
LIFETIME = Reply(421, "4.4.2", "Session too long, closing connection").to_bytes()
FAILED = Reply(451, "4.3.0", "Temporary local problem, try again later")
NO_AUTH = Reply(503, "5.5.1", "Authentication not enabled")


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
    pool: ConnectionPool  # MX or submission (submission and submissions share one)
    tls: ssl.SSLContext | None
    timeouts: SmtpTimeouts
    implicit_tls: bool = False
    deadlines: Deadlines = field(default_factory=Deadlines)  # opening: greeting to EHLO

    def factory(self, slot: Slot | None = None) -> SmtpProtocol:
        return SmtpProtocol(self, slot)


class SmtpProtocol(CoreProtocol):
    name = "smtp"
    busy_reply = BUSY
    lifetime_reply = LIFETIME

    def __init__(self, endpoint: SmtpEndpoint, slot: Slot | None = None) -> None:
        timeouts = endpoint.timeouts
        super().__init__(endpoint.pool, endpoint.tls, idle_timeout=timeouts.idle,
                         lifetime=timeouts.lifetime, implicit_tls=endpoint.implicit_tls,
                         deadlines=endpoint.deadlines, slot=slot)
        self.endpoint = endpoint
        self.smtp: SmtpServer | None = None
        self.session: SmtpSession | None = None

    def _new_core(self) -> SmtpServer:
        self.smtp = SmtpServer(self.endpoint.core, tls_active=self.implicit_tls)
        self.session = self.endpoint.service.session(self.peer)
        return self.smtp

    def _idle_limit(self) -> float:
        assert self.smtp is not None
        return self.endpoint.timeouts.data if self.smtp.in_data else self.idle_timeout

    def _opening(self) -> bool:
        # Until EHLO/HELO (again after STARTTLS, RFC 3207 §4.2), counted from the connection.
        return self.smtp is not None and self.smtp.helo_name is None

    def _in_lines(self) -> bool:
        return self.smtp is None or self.smtp.state is not State.CHUNK  # BDAT: binary octets

    def _feed_size(self) -> int:
        return FEED_CONTENT if self.smtp is not None and self.smtp.in_data else FEED_SLICE

    def _tls_started(self, ssl_object: Any) -> None:
        assert self.session is not None
        self.session.tls = describe(ssl_object)

    def _lost(self) -> None:
        # A commit in flight finishes on its own (its reply is lost; the client retries, so a
        # duplicate is possible, a loss is not). Anything merely spooled is dropped.
        if self.session is not None:
            self.session.reset()

    def _task_failed(self) -> Reply:
        return FAILED

    def _pump(self) -> None:
        """Run the core until it needs bytes or a task must wait for something."""
        core, session = self.smtp, self.session
        if self.core is None or core is None or session is None:
            return
        while True:
            event = core.next_event()
            kind = type(event)
            if kind is ev.NeedData:
                if self._need_data():
                    continue
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
