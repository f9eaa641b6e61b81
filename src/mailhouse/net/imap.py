"""Runs IMAP connections (RFC 9051): socket bytes ⇄ the sans-I/O core (proto/imap/server.py),
logins and mailbox commands ⇄ the IMAP service (service/imap_api.py). The shared transport
machinery (caps, back-pressure, STARTTLS, timers, shutdown) is net/session.py.

IDLE is the one place where a session speaks unprompted: while the client idles, a watcher
task (not the session's task, so DONE is still read) waits for the service's changes and
writes them as they come (RFC 2177 / RFC 9051 §6.3.13).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field

from mailhouse import metrics
from mailhouse.net.listener import ConnectionPool, Slot
from mailhouse.net.session import CoreProtocol, Deadlines
from mailhouse.proto.imap import server_events as ev
from mailhouse.proto.imap.server import ImapServer, ImapServerConfig, LoginOutcome, State
from mailhouse.service.imap_api import Completion, ImapService, MailSession

log = logging.getLogger("mailhouse.imap")

BUSY = b"* BYE [UNAVAILABLE] Too many connections, try again later\r\n"
LIFETIME = b"* BYE Session too long, closing connection\r\n"


@dataclass(frozen=True, slots=True)
class ImapEndpoint:
    """What every connection of one IMAP listener shares."""

    core: ImapServerConfig
    service: ImapService
    pool: ConnectionPool  # imap and imaps share one
    tls: ssl.SSLContext | None
    idle_timeout: float  # RFC 9051 §5.4: at least 30 minutes once logged in
    lifetime: float
    implicit_tls: bool = False
    deadlines: Deadlines = field(default_factory=Deadlines)  # opening: to a successful login

    def factory(self, slot: Slot | None = None) -> ImapProtocol:
        return ImapProtocol(self, slot)


class ImapProtocol(CoreProtocol):
    name = "imap"
    busy_reply = BUSY
    lifetime_reply = LIFETIME

    def __init__(self, endpoint: ImapEndpoint, slot: Slot | None = None) -> None:
        super().__init__(endpoint.pool, endpoint.tls, idle_timeout=endpoint.idle_timeout,
                         lifetime=endpoint.lifetime, implicit_tls=endpoint.implicit_tls,
                         deadlines=endpoint.deadlines, slot=slot)
        self.endpoint = endpoint
        self.imap: ImapServer | None = None
        self.session: MailSession | None = None
        self._watcher: asyncio.Task[None] | None = None

    def _new_core(self) -> ImapServer:
        self.imap = ImapServer(self.endpoint.core, tls_active=self.implicit_tls)
        return self.imap

    def _opening(self) -> bool:
        return self.imap is not None and self.imap.state is State.NOT_AUTHENTICATED

    def _lost(self) -> None:
        self._stop_watching()
        if self.session is not None:
            self.session.close()
            self.session = None

    def _pump(self) -> None:
        core = self.imap
        if self.core is None or core is None:
            return
        while True:
            event = core.next_event()
            if isinstance(event, ev.NeedData):
                if self._need_data():
                    continue
                return
            self._flush()
            if isinstance(event, ev.Request):
                self._run(self._request(event))
                return
            if isinstance(event, ev.AppendChunk):
                self._run(self._append_chunk(event))
                return
            if isinstance(event, ev.AppendAborted):
                if self.session is not None:
                    self.session.append_aborted(event.tag)
                continue
            if isinstance(event, ev.Credentials):
                self._run(self._login(event))
                return
            if isinstance(event, ev.IdleStarted):
                self._start_watching()
                continue
            if isinstance(event, ev.IdleEnded):
                self._stop_watching()
                if self.session is not None:
                    core.untagged(self.session.pending())
                core.complete("OK", "IDLE terminated")
                continue
            if isinstance(event, ev.StartTls):
                self._run(self._start_tls())
                return
            if isinstance(event, ev.Closed):
                self._lost()
                self._flush_and_close()
                return

    # --- tasks ---------------------------------------------------------------------------------
    async def _login(self, event: ev.Credentials) -> None:
        assert self.imap is not None
        try:
            outcome, session = await self.endpoint.service.login(
                self.ip, event.username, event.password, event.authzid)
        except Exception:
            log.exception("event=imap.login_failed peer=%s", self.peer)
            outcome, session = LoginOutcome.UNAVAILABLE, None
        if self.core is None:  # gone while we checked
            if session is not None:
                session.close()
            return
        self.session = session if outcome is LoginOutcome.OK else None
        self.imap.login_result(outcome)
        metrics.get().logins.labels("imap", outcome.name.lower()).inc()
        tls = "yes" if self.imap.tls_active else "no"
        if outcome is LoginOutcome.OK:  # a name that failed may be a mistyped password
            log.info("event=imap.login peer=%s mechanism=%s result=%s tls=%s user=%s", self.peer,
                     event.mechanism, outcome.name, tls, event.username)
        else:
            log.info("event=imap.login peer=%s mechanism=%s result=%s tls=%s", self.peer,
                     event.mechanism, outcome.name, tls)

    async def _request(self, event: ev.Request) -> None:
        core, session = self.imap, self.session
        assert core is not None
        if session is None:  # cannot happen after a successful login; answer safely anyway
            core.complete("NO", "Not logged in", "UNAVAILABLE")
            return
        try:
            completion = await session.handle(event, _Responder(self))
        except Exception:
            log.exception("event=imap.command_failed peer=%s command=%s", self.peer,
                          event.command.name)
            completion = Completion("NO", "Internal error, try again later", "SERVERBUG")
        if self.core is None:
            return
        core.complete(completion.status, completion.text, completion.code)

    async def _append_chunk(self, event: ev.AppendChunk) -> None:
        if self.session is not None:
            await self.session.append_chunk(event)

    # --- IDLE ------------------------------------------------------------------------------------
    def _start_watching(self) -> None:
        if self.session is not None and self._watcher is None:
            self._watcher = self.loop.create_task(self._watch(self.session))

    def _stop_watching(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()

    async def _watch(self, session: MailSession) -> None:
        """While the client idles: each change the service reports goes out at once."""
        with contextlib.suppress(asyncio.CancelledError):
            while self.core is not None and self.imap is not None:
                lines = await session.changes()
                if not lines:
                    continue
                self.imap.untagged(lines)
                self._flush()
                if not await self._drain():
                    return


class _Responder:
    """A request's way to stream untagged responses with back-pressure."""

    def __init__(self, protocol: ImapProtocol) -> None:
        self._protocol = protocol

    async def send(self, lines: Iterable[bytes]) -> bool:
        protocol = self._protocol
        if protocol.imap is None or protocol.core is None:
            return False
        protocol.imap.untagged(lines)
        protocol._flush()
        return await protocol._drain()
