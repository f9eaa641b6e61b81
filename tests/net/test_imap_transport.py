"""The IMAP transport (net/imap.py) over a real loopback socket, with a stand-in service: login,
a request streamed through the responder, IDLE pushing a change while DONE is still read,
STARTTLS, and a session released when the client goes."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from mailhouse.net.imap import ImapEndpoint
from mailhouse.net.listener import ConnectionLimits, ConnectionTracker
from mailhouse.net.tls import ensure_self_signed, server_context
from mailhouse.proto.imap.server import ImapServerConfig, LoginOutcome
from mailhouse.proto.imap.server_events import AppendChunk, Request
from mailhouse.service.imap_api import Completion, MailSession, Responder


class FakeSession:
    def __init__(self) -> None:
        self.changed: asyncio.Queue[list[bytes]] = asyncio.Queue()
        self.closed = False
        self.spooled = b""

    async def handle(self, request: Request, respond: Responder) -> Completion:
        name = request.command.name
        if name == "SELECT":
            await respond.send([b"2 EXISTS", b"FLAGS (\\Seen)"])
            return Completion("OK", "SELECT completed", "READ-WRITE")
        if name == "FETCH":
            for seq in (1, 2):
                if not await respond.send([b"%d FETCH (FLAGS ())" % seq]):
                    break
            return Completion("OK", "FETCH completed")
        if name == "APPEND":
            return Completion("OK", f"APPEND completed ({len(self.spooled)} octets)")
        return Completion("OK", f"{name} completed")

    async def append_chunk(self, chunk: AppendChunk) -> None:
        self.spooled += chunk.data

    def append_aborted(self, tag: str) -> None:
        self.spooled = b""

    async def changes(self) -> list[bytes]:
        return await self.changed.get()

    def pending(self) -> list[bytes]:
        return [b"3 EXISTS"] if self.changed.empty() is False else []

    def close(self) -> None:
        self.closed = True


class FakeService:
    def __init__(self) -> None:
        self.sessions: list[FakeSession] = []

    async def login(self, ip: str, username: str, password: str,
                    authzid: str = "") -> tuple[LoginOutcome, MailSession | None]:
        if password != "secret":
            return LoginOutcome.FAILED, None
        session = FakeSession()
        self.sessions.append(session)
        return LoginOutcome.OK, session


@asynccontextmanager
async def serving(tmp_path: Path, *, plaintext: bool) -> AsyncIterator[tuple[int, FakeService,
                                                                               ssl.SSLContext]]:
    cert, key = ensure_self_signed(tmp_path / "tls", "imap.example.test")
    context = server_context(cert, key)
    service = FakeService()
    pool = ConnectionTracker(10).pool("imap", ConnectionLimits(10, 10))
    core = ImapServerConfig(hostname="imap.example.test", allow_plaintext_auth=plaintext)
    endpoint = ImapEndpoint(core, service, pool, context, idle_timeout=1800, lifetime=3600)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(endpoint.factory, "127.0.0.1", 0)
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    try:
        yield server.sockets[0].getsockname()[1], service, client
    finally:
        server.close()


async def read_until(reader: asyncio.StreamReader, prefix: bytes) -> list[bytes]:
    lines = []
    while True:
        line = await asyncio.wait_for(reader.readline(), 5)
        assert line, lines
        lines.append(line)
        if line.startswith(prefix):
            return lines


async def say(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()


def test_login_request_idle_logout(tmp_path: Path) -> None:
    async def run() -> None:
        async with serving(tmp_path, plaintext=True) as (port, service, _):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert (await reader.readline()).startswith(b"* OK [CAPABILITY IMAP4rev1")
            await say(writer, b"a LOGIN alice wrong\r\nb LOGIN alice secret\r\n")
            assert (await read_until(reader, b"a "))[-1].startswith(b"a NO [AUTHENTICATIONFAILED]")
            assert (await read_until(reader, b"b "))[-1].startswith(b"b OK [CAPABILITY")
            await say(writer, b"c SELECT INBOX\r\nd FETCH 1:2 FLAGS\r\n")
            lines = await read_until(reader, b"d ")
            assert lines == [b"* 2 EXISTS\r\n", b"* FLAGS (\\Seen)\r\n",
                             b"c OK [READ-WRITE] SELECT completed\r\n",
                             b"* 1 FETCH (FLAGS ())\r\n", b"* 2 FETCH (FLAGS ())\r\n",
                             b"d OK FETCH completed\r\n"]
            await say(writer, b"e IDLE\r\n")
            assert await reader.readline() == b"+ idling\r\n"
            session = service.sessions[0]
            await session.changed.put([b"3 EXISTS"])  # a delivery while idling
            assert await asyncio.wait_for(reader.readline(), 5) == b"* 3 EXISTS\r\n"
            await say(writer, b"DONE\r\n")
            assert await asyncio.wait_for(reader.readline(), 5) == b"e OK IDLE terminated\r\n"
            await say(writer, b"f APPEND INBOX {5}\r\n")
            assert await reader.readline() == b"+ Ready for literal data\r\n"
            await say(writer, b"hello\r\n")
            assert (await read_until(reader, b"f ")) == [b"f OK APPEND completed (5 octets)\r\n"]
            await say(writer, b"g LOGOUT\r\n")
            assert (await read_until(reader, b"g ")) == [b"* BYE Logging out\r\n",
                                                         b"g OK Logout completed\r\n"]
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            await asyncio.sleep(0.05)
            assert session.closed

    asyncio.run(run())


def test_starttls_then_login(tmp_path: Path) -> None:
    async def run() -> None:
        async with serving(tmp_path, plaintext=False) as (port, _service, client):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            greeting = await reader.readline()
            assert b"LOGINDISABLED" in greeting and b"STARTTLS" in greeting
            await say(writer, b"a LOGIN alice secret\r\n")
            assert (await reader.readline()).startswith(b"a NO [PRIVACYREQUIRED]")
            await say(writer, b"b STARTTLS\r\n")
            assert await reader.readline() == b"b OK Begin TLS negotiation now\r\n"
            await writer.start_tls(client)
            await say(writer, b"c LOGIN alice secret\r\n")
            assert (await reader.readline()).startswith(b"c OK [CAPABILITY")
            writer.close()

    asyncio.run(run())


def test_a_dropped_connection_releases_the_session(tmp_path: Path) -> None:
    async def run() -> None:
        async with serving(tmp_path, plaintext=True) as (port, service, _):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await reader.readline()
            await say(writer, b"a LOGIN alice secret\r\nb IDLE\r\n")
            await read_until(reader, b"+ ")
            writer.close()
            for _ in range(100):
                if service.sessions and service.sessions[0].closed:
                    break
                await asyncio.sleep(0.02)
            assert service.sessions[0].closed

    asyncio.run(run())


