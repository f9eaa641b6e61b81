"""Outbound SMTP connections: the client core (proto/smtp/client.py) over an asyncio transport,
with its timeouts, STARTTLS and a pool of idle connections for reuse.

TLS policy (opportunistic, RFC 7435; RFC 3207 STARTTLS whenever the remote offers it): the
certificate is not verified. Most MX hosts present certificates that would not verify against the
MX name (self-signed, wrong name, expired), and without MTA-STS (RFC 8461) or DANE (RFC 7672)
nothing tells us which name to expect; refusing them would push that mail to plain text, which is
worse. Encryption still defeats passive eavesdropping. MTA-STS and DANE, which do verify, are
later work.

A failed handshake ends that connection: nothing more is written on it, least of all the message
in plain text. The caller (net/delivery.py) then reconnects to the same address without
STARTTLS, as Postfix does at `smtp_tls_security_level = may`: an active attacker can strip
STARTTLS anyway, so refusing would only hurt servers with broken TLS.

Timeouts (RFC 5321 §4.5.3.2 gives the client's minimums): `connect_timeout`; `command_timeout`
for each read while waiting for a reply and for each blocked write (5 minutes by default);
`data_timeout` while waiting for the reply to the final dot (10 minutes, §4.5.3.2.6). A timeout
never drops recipients: the core turns it into a 4xx for everyone still undecided.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from typing import cast

from mailhouse.config import DeliveryConfig
from mailhouse.errors import Reply
from mailhouse.net.tls import describe
from mailhouse.proto.smtp.client import (
    Closed,
    Event,
    NeedData,
    Ready,
    SendBody,
    SmtpClient,
    StartTls,
    State,
    Transaction,
    TransactionDone,
)
from mailhouse.proto.smtp.replies import Capabilities

log = logging.getLogger("mailhouse.delivery")

SOURCE_FAILED = Reply(451, "4.3.0", "Local error reading the queued message")
# Bound on reads per wait for events: every read brings at least one byte, and the core bounds
# what a reply may hold, so only a pathological drip-feeding server gets near it.
MAX_READS = 1_000_000
MAX_EVENTS = 64  # events in one transaction: SendBody, TransactionDone, Closed, …


class ConnectionFailed(Exception):
    """No session: refused, timed out, greeting or EHLO refused, TLS handshake failed.
    `answered`: a server spoke (its reply is `reply`); `tls_failed`: worth a plain-text retry."""

    def __init__(self, reply: Reply, *, answered: bool, tls_failed: bool = False) -> None:
        super().__init__(reply.text)
        self.reply = reply
        self.answered = answered
        self.tls_failed = tls_failed


def opportunistic_tls_context() -> ssl.SSLContext:
    """A client context that encrypts without verifying (see the module docstring for why)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.options |= ssl.OP_NO_COMPRESSION  # CRIME
    return ctx


class _Protocol(asyncio.Protocol):
    """Feeds received bytes straight into the core and wakes the waiting coroutine."""

    def __init__(self, core: SmtpClient) -> None:
        self.core = core
        self.lost = False
        self.received = 0  # bytes from the remote: did a server answer at all?
        self.readable = asyncio.Event()
        self.writable = asyncio.Event()
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        self.core.receive_data(data)
        self.readable.set()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.readable.set()
        self.writable.set()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()


class SmtpClientConnection:
    """One session with one remote address, ready for transactions once `open()` returns."""

    def __init__(self, core: SmtpClient, protocol: _Protocol, transport: asyncio.Transport,
                 address: str, port: int, host_name: str, config: DeliveryConfig,
                 tls: ssl.SSLContext | None) -> None:
        self.core = core
        self.address, self.port, self.host_name = address, port, host_name
        self.config = config
        self.tls_info: str | None = None
        self.capabilities = Capabilities(False)
        self.transactions = 0
        self._protocol = protocol
        self._transport = transport
        self._tls = tls

    @property
    def remote(self) -> str:
        """"mx.example.org [192.0.2.1]", for logs and DSNs (RFC 3464 Remote-MTA)."""
        return f"{self.host_name} [{self.address}]"

    @classmethod
    async def open(cls, address: str, port: int, *, host_name: str, helo_name: str,
                   config: DeliveryConfig, tls: ssl.SSLContext | None) -> SmtpClientConnection:
        """Connect and run greeting, EHLO and (if offered and `tls` given) STARTTLS.
        Raises ConnectionFailed."""
        loop = asyncio.get_running_loop()
        core = SmtpClient(helo_name, starttls=tls is not None)
        protocol = _Protocol(core)
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(lambda: protocol, address, port),
                config.connect_timeout)
        except TimeoutError:
            raise ConnectionFailed(Reply(451, "4.4.1", "Connection timed out"),
                                   answered=False) from None
        except OSError as exc:
            text = exc.strerror or type(exc).__name__
            raise ConnectionFailed(Reply(451, "4.4.1", f"Connection failed: {text}"),
                                   answered=False) from None
        conn = cls(core, protocol, transport, address, port, host_name, config, tls)
        try:
            event = await conn._next_event()
        except BaseException:
            conn.abort()
            raise
        if isinstance(event, Ready):
            conn.capabilities = event.capabilities
            return conn
        conn.abort()
        reply = event.reply if isinstance(event, Closed) and event.reply else Reply(
            451, "4.5.0", "Protocol error during session setup")
        raise ConnectionFailed(reply, answered=protocol.received > 0)

    async def send(self, tx: Transaction,
                   source: Callable[[], AsyncIterator[bytes]]) -> TransactionDone:
        """Run one transaction; the result has one reply per recipient. Never raises for
        network trouble: that is a 4xx in the result."""
        self.core.start_transaction(tx)
        self.transactions += 1
        for _ in range(MAX_EVENTS):
            event = await self._next_event()
            if isinstance(event, TransactionDone):
                if self.core.state is State.CLOSED:
                    self.abort()
                return event
            if not isinstance(event, SendBody):
                raise RuntimeError(f"unexpected event from the client core: {event!r}")
            await self._send_body(source)
        raise RuntimeError("the client core never finished the transaction")

    @property
    def reusable(self) -> bool:
        return (self.core.state is State.READY and not self._protocol.lost
                and not self._transport.is_closing())

    def usable(self) -> bool:
        """Still good for another transaction? Reads what the remote said while we were idle:
        a 421 (or anything else) there means it is leaving."""
        if not self.reusable:
            return False
        event = self.core.next_event()
        if isinstance(event, NeedData) and self.core.state is State.READY:
            return True
        self.abort()
        return False

    def close(self) -> None:
        """QUIT when the session is idle, then close (no wait for the 221)."""
        if self.reusable:
            self.core.quit()
            self._flush()
        if not self._transport.is_closing():
            self._transport.close()

    def abort(self) -> None:
        self._transport.abort()

    # --- internals -------------------------------------------------------------------------------
    def _flush(self) -> None:
        data = self.core.data_to_send()
        if data and not self._protocol.lost and not self._transport.is_closing():
            self._transport.write(data)

    async def _next_event(self) -> Event:
        for _ in range(MAX_READS):
            event = self.core.next_event()
            self._flush()
            if isinstance(event, NeedData):
                await self._wait_readable()
            elif isinstance(event, StartTls):
                await self._start_tls()
            else:
                return event
        self.core.abort(Reply(451, "4.5.0", "Protocol error: the remote server never finished"))
        self.abort()
        return self.core.next_event()

    async def _wait_readable(self) -> None:
        protocol = self._protocol
        protocol.readable.clear()
        if protocol.lost:
            self.core.connection_lost()
            return
        timeout = (self.config.data_timeout if self.core.awaiting_final_reply
                   else self.config.command_timeout)
        try:
            await asyncio.wait_for(protocol.readable.wait(), timeout)
        except TimeoutError:
            log.info("event=delivery.timeout peer=%s final=%s", self.remote,
                     self.core.awaiting_final_reply)
            self.core.timeout()
            self.abort()

    async def _drain(self) -> bool:
        """Wait until the transport takes more; False when the session ended meanwhile."""
        protocol = self._protocol
        if not protocol.writable.is_set():
            try:
                await asyncio.wait_for(protocol.writable.wait(), self.config.command_timeout)
            except TimeoutError:
                self.core.timeout()
                self.abort()
                return False
        if protocol.lost:
            self.core.connection_lost()
            return False
        return True

    async def _send_body(self, source: Callable[[], AsyncIterator[bytes]]) -> None:
        try:
            async for chunk in source():
                self.core.send_body(chunk)
                self._flush()
                if not await self._drain():
                    return
        except Exception:
            # Never finish a message we could not read whole: drop the connection, so the
            # remote discards what it got, and try again later.
            log.exception("event=delivery.source_failed peer=%s", self.remote)
            self.core.abort(SOURCE_FAILED)
            self.abort()
            return
        self.core.end_body()
        self._flush()

    async def _start_tls(self) -> None:
        assert self._tls is not None
        loop = asyncio.get_running_loop()
        server_name = None if self.host_name.startswith("[") else self.host_name
        transport: asyncio.BaseTransport | None = None
        if self._protocol.lost:
            # Gone before the handshake began: asyncio would wait for it forever (its handshake
            # timeout only closes the transport, which is already closed).
            log.info("event=delivery.tls_failed peer=%s error=closed", self.remote)
        else:
            try:
                transport = await asyncio.wait_for(loop.start_tls(
                    self._transport, self._protocol, self._tls, server_hostname=server_name,
                    ssl_handshake_timeout=self.config.command_timeout),
                    self.config.command_timeout + 1)
            except (OSError, TimeoutError) as exc:  # ssl.SSLError, ConnectionError are OSErrors
                detail = getattr(exc, "reason", None) or type(exc).__name__
                log.info("event=delivery.tls_failed peer=%s error=%s", self.remote, detail)
        if transport is None:
            self.abort()
            raise ConnectionFailed(Reply(451, "4.7.5", "TLS handshake with the remote failed"),
                                   answered=True, tls_failed=True)
        self._transport = cast(asyncio.Transport, transport)
        self.tls_info = describe(transport.get_extra_info("ssl_object"))
        self.core.tls_established()


class ConnectionPool:
    """Idle sessions per (address, port), each kept `idle_time` seconds for the next message to
    the same host (Postfix's smtp_connection_cache_time_limit, 2 s there; here
    [delivery] connection_reuse_time)."""

    def __init__(self, idle_time: float, *, max_per_host: int = 4, max_total: int = 64) -> None:
        self.idle_time = idle_time
        self.max_per_host = max_per_host
        self.max_total = max_total
        self._idle: dict[tuple[str, int], list[tuple[SmtpClientConnection,
                                                      asyncio.TimerHandle]]] = {}

    def take(self, address: str, port: int) -> SmtpClientConnection | None:
        entries = self._idle.get((address, port), [])
        while entries:  # bounded: one entry removed per round
            conn, timer = entries.pop()
            timer.cancel()
            if conn.usable():
                return conn
            conn.close()
        self._idle.pop((address, port), None)
        return None

    def put(self, conn: SmtpClientConnection) -> None:
        if not conn.usable():
            conn.close()
            return
        key = (conn.address, conn.port)
        entries = self._idle.setdefault(key, [])
        if len(entries) >= self.max_per_host or self.idle_count >= self.max_total:
            conn.close()
            return
        timer = asyncio.get_running_loop().call_later(self.idle_time, self._expire, key, conn)
        entries.append((conn, timer))

    @property
    def idle_count(self) -> int:
        return sum(len(entries) for entries in self._idle.values())

    def _expire(self, key: tuple[str, int], conn: SmtpClientConnection) -> None:
        entries = self._idle.get(key, [])
        self._idle[key] = [(c, t) for c, t in entries if c is not conn]
        if not self._idle[key]:
            del self._idle[key]
        conn.close()

    def close_all(self) -> None:
        for entries in self._idle.values():
            for conn, timer in entries:
                timer.cancel()
                conn.close()
        self._idle.clear()
