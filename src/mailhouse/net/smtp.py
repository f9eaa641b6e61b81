"""Runs one SMTP connection: socket bytes ⇄ the sans-I/O core, decisions ⇄ the inbound service."""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass

from mailhouse.errors import Reply
from mailhouse.net.listener import ConnectionTracker
from mailhouse.net.tls import describe
from mailhouse.proto.smtp import events as ev
from mailhouse.proto.smtp.server import SmtpServer, SmtpServerConfig
from mailhouse.service.inbound import InboundService

log = logging.getLogger("mailhouse.smtp")

READ_SIZE = 65536
BUSY = Reply(421, "4.7.0", "Too many connections, try again later").to_bytes()
LIFETIME = Reply(421, "4.4.2", "Session too long, closing connection")


@dataclass(frozen=True, slots=True)
class SmtpTimeouts:
    idle: float = 300.0  # RFC 5321 §4.5.3.2.7: at least 5 minutes awaiting a command
    data: float = 180.0  # per data block (RFC 5321 §4.5.3.2.6 client side: 3 min)
    lifetime: float = 3600.0  # bounds slow-drip clients (security checklist 17)


class SmtpConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str,
                 core_config: SmtpServerConfig, service: InboundService,
                 tls_context: ssl.SSLContext | None, timeouts: SmtpTimeouts,
                 implicit_tls: bool) -> None:
        self.reader, self.writer, self.peer = reader, writer, peer
        self.core = SmtpServer(core_config, tls_active=implicit_tls)
        self.session = service.session(peer)
        if implicit_tls:
            self.session.tls = describe(writer.get_extra_info("ssl_object"))
        self.tls_context = tls_context
        self.timeouts = timeouts
        self._stopping = False

    def request_shutdown(self) -> None:
        self._stopping = True
        if self.core.shutdown():
            self._flush()
            self.writer.close()

    def _flush(self) -> None:
        out = self.core.data_to_send()
        if out and not self.writer.is_closing():
            self.writer.write(out)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeouts.lifetime
        core, session = self.core, self.session
        log.debug("event=smtp.connect peer=%s", self.peer)
        try:
            while True:
                event = core.next_event()
                if isinstance(event, ev.NeedData):
                    if self._stopping and core.shutdown():
                        continue
                    self._flush()
                    if self.writer.transport.get_write_buffer_size() > READ_SIZE:
                        await self.writer.drain()
                    now = loop.time()
                    if now >= deadline:
                        self.writer.write(LIFETIME.to_bytes())
                        break
                    timeout = self.timeouts.data if core.in_data else self.timeouts.idle
                    try:
                        async with asyncio.timeout(min(timeout, deadline - now)):
                            data = await self.reader.read(READ_SIZE)
                    except TimeoutError:
                        core.timeout()
                        continue
                    if not data:
                        break
                    core.receive_data(data)
                elif isinstance(event, ev.Closed):
                    self._flush()
                    break
                elif isinstance(event, ev.DataChunk):
                    await session.data_chunk(event.data)
                elif isinstance(event, ev.RcptTo):
                    core.respond(await session.rcpt_to(event))
                elif isinstance(event, ev.MailFrom):
                    core.respond(await session.mail_from(event))
                elif isinstance(event, ev.DataStart):
                    await session.data_start()
                elif isinstance(event, ev.DataComplete):
                    core.respond(await session.data_complete(event))
                elif isinstance(event, ev.DataAborted | ev.TransactionReset):
                    await session.reset()
                elif isinstance(event, ev.Helo):
                    session.on_helo(event)
                elif isinstance(event, ev.StartTls):
                    await self._start_tls()
            if not self.writer.is_closing():
                await self.writer.drain()
        finally:
            await session.reset()

    async def _start_tls(self) -> None:
        assert self.tls_context is not None
        self._flush()
        # CVE-2024-34083 / CVE-2011-0411: plaintext the client sent after STARTTLS may already
        # sit in the stream's buffer; it must never be read as if it came through TLS.
        self.reader._buffer.clear()  # type: ignore[attr-defined]
        await self.writer.start_tls(self.tls_context, ssl_handshake_timeout=30)
        self.core.tls_established()
        self.session.tls = describe(self.writer.get_extra_info("ssl_object"))


async def serve_smtp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str, *,
                     core_config: SmtpServerConfig, service: InboundService,
                     tracker: ConnectionTracker, tls_context: ssl.SSLContext | None,
                     timeouts: SmtpTimeouts, implicit_tls: bool = False) -> None:
    conn = SmtpConnection(reader, writer, peer, core_config, service, tls_context, timeouts,
                          implicit_tls)
    tracker.sessions.add(conn)
    try:
        await conn.run()
    finally:
        tracker.sessions.discard(conn)
