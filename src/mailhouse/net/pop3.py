"""Runs POP3 connections (RFC 1939): socket bytes ⇄ the sans-I/O core (proto/pop3), logins and
downloads ⇄ the maildrop service (service/pop3.py). The shared transport machinery (caps,
back-pressure, STLS, timers, shutdown) is net/session.py."""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field

from mailhouse import metrics
from mailhouse.errors import MailError
from mailhouse.net.listener import ConnectionPool, Slot
from mailhouse.net.session import CoreProtocol, Deadlines
from mailhouse.proto.pop3 import events as ev
from mailhouse.proto.pop3.server import LoginResult, Pop3Server, Pop3ServerConfig, State
from mailhouse.service.pop3 import Maildrop, Pop3Service

log = logging.getLogger("mailhouse.pop3")

BUSY = b"-ERR [SYS/TEMP] Too many connections, try again later\r\n"
LIFETIME = b"-ERR Session too long, closing connection\r\n"
# Not logged in yet: bounded by the opening deadline (limits.login_timeout).
PRE_LOGIN = frozenset({State.AUTHORIZATION, State.SASL, State.LOGIN, State.TLS})


@dataclass(frozen=True, slots=True)
class Pop3Endpoint:
    """What every connection of one POP3 listener shares."""

    core: Pop3ServerConfig
    service: Pop3Service
    pool: ConnectionPool  # pop3 and pop3s share one
    tls: ssl.SSLContext | None
    idle_timeout: float  # RFC 1939 §3: at least 10 minutes
    lifetime: float
    implicit_tls: bool = False
    deadlines: Deadlines = field(default_factory=Deadlines)  # opening: to a successful login

    def factory(self, slot: Slot | None = None) -> Pop3Protocol:
        return Pop3Protocol(self, slot)


class Pop3Protocol(CoreProtocol):
    name = "pop3"
    busy_reply = BUSY
    lifetime_reply = LIFETIME

    def __init__(self, endpoint: Pop3Endpoint, slot: Slot | None = None) -> None:
        super().__init__(endpoint.pool, endpoint.tls, idle_timeout=endpoint.idle_timeout,
                         lifetime=endpoint.lifetime, implicit_tls=endpoint.implicit_tls,
                         deadlines=endpoint.deadlines, slot=slot)
        self.endpoint = endpoint
        self.pop3: Pop3Server | None = None
        self.maildrop: Maildrop | None = None

    def _new_core(self) -> Pop3Server:
        self.pop3 = Pop3Server(self.endpoint.core, tls_active=self.implicit_tls)
        return self.pop3

    def _opening(self) -> bool:
        return self.pop3 is not None and self.pop3.state in PRE_LOGIN

    def _lost(self) -> None:
        # A dropped connection never reaches the UPDATE state: nothing is deleted (RFC 1939 §6).
        if self.maildrop is not None:
            self.maildrop.release()
            self.maildrop = None

    def _pump(self) -> None:
        core = self.pop3
        if self.core is None or core is None:
            return
        while True:
            event = core.next_event()
            kind = type(event)
            if kind is ev.NeedData:
                if self._need_data():
                    continue
                return
            if kind is ev.Retrieve:
                self._flush()
                self._run(self._retrieve(event))  # type: ignore[arg-type]
                return
            if kind is ev.Credentials:
                self._flush()
                self._run(self._login(event))  # type: ignore[arg-type]
                return
            if kind is ev.Commit:
                self._flush()
                self._run(self._commit(event))  # type: ignore[arg-type]
                return
            if kind is ev.StartTls:
                self._flush()
                self._run(self._start_tls())
                return
            if kind is ev.Closed:
                # The lock first: a client that has the final +OK may log in again at once,
                # maybe in another worker process (RFC 1939 §8).
                self._lost()
                self._flush_and_close()
                return

    async def _login(self, event: ev.Credentials) -> None:
        assert self.pop3 is not None
        try:
            result, maildrop = await self.endpoint.service.login(self.ip, event.username,
                                                                 event.password)
        except Exception:
            log.exception("event=pop3.login_failed peer=%s", self.peer)
            result, maildrop = LoginResult.SYS_TEMP, None
        if self.core is None:  # gone while we checked: give the lock back at once
            if maildrop is not None:
                maildrop.release()
            return
        self.maildrop = maildrop
        self.pop3.login_result(result, maildrop.entries if maildrop is not None else ())
        metrics.get().logins.labels("pop3", result.name.lower()).inc()
        log.info("event=pop3.login peer=%s result=%s messages=%d", self.peer, result.name,
                 len(maildrop.entries) if maildrop is not None else 0)

    async def _retrieve(self, event: ev.Retrieve) -> None:
        core, maildrop = self.pop3, self.maildrop
        assert core is not None and maildrop is not None
        sent = False
        reader = maildrop.read(event.index)
        try:
            async for chunk in reader:
                wanted = core.message_data(chunk)  # False once TOP has its lines
                sent = True
                self._flush()
                if self.core is None:
                    return
                if not wanted:
                    break
                if not await self._drain():
                    return  # closing or gone (write stall, lifetime): the lock goes in _lost()
        except (MailError, KeyError, OSError):
            log.exception("event=pop3.retrieve_failed peer=%s index=%d", self.peer, event.index)
            if sent:
                self.abort()  # half a message on the wire: the client must not take it whole
                return
            core.message_failed()
            return
        finally:
            await reader.aclose()
        core.message_end()

    async def _commit(self, event: ev.Commit) -> None:
        core, maildrop = self.pop3, self.maildrop
        assert core is not None
        ok = True
        if maildrop is not None:
            try:
                await maildrop.commit(event.deleted)
            except MailError:
                log.exception("event=pop3.commit_failed peer=%s", self.peer)
                ok = False
            log.info("event=pop3.update peer=%s deleted=%d ok=%s", self.peer,
                     len(event.deleted), ok)
        core.commit_result(ok)
