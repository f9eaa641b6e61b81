"""Scripted SMTP servers on loopback, for testing the outbound client against misbehaving peers.

A `FakeSmtp` listens on (ip, port) in the caller's event loop (any 127.x address works on Linux
without configuration), answers by its `Script` and records every session: the command lines,
whether TLS was on, and each message exactly as it came over the wire (dot-stuffing and line
ends included). Scripts can refuse, greylist, drop the connection mid-DATA, stall after the
final dot, offer STARTTLS with a given certificate, or break the TLS handshake.

    script = Script(rcpt=lambda rcpt, n: "550 5.1.1 No such user" if "bad" in rcpt else None)
    async with FakeSmtp.group({"127.0.0.2": script, "127.0.0.3": Script()}) as servers:
        port = servers.port                      # the same port on every address
        ...
        assert servers["127.0.0.2"].messages     # wire bytes of each message received

A reply function returns None for the default reply, or the reply line(s) to send ("\\n"
separates lines of a multi-line reply). Their second argument counts previous calls (0 first),
so "450 first, 250 after" is `lambda arg, n: "450 4.2.0 Greylisted" if n == 0 else None`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field

from tests.helpers.net import free_port

ReplyFn = Callable[[str, int], str | None]
MAX_LINES = 10_000  # per session; a runaway client cannot keep a test busy forever


def _none(arg: str, count: int) -> str | None:
    return None


def _wire(reply: str) -> bytes:
    lines = reply.split("\n")
    code = lines[0][:3]
    out = [f"{code}-{line[4:] if line[:3] == code else line}" for line in lines[:-1]]
    out.append(lines[-1] if lines[-1][:3] == code else f"{code} {lines[-1]}")
    return "".join(line + "\r\n" for line in out).encode()


@dataclass
class Script:
    greeting: str = "220 fake.test ESMTP"
    # EHLO keywords after the name line; STARTTLS is added when `tls` is set.
    extensions: tuple[str, ...] = ("PIPELINING", "SIZE 10000000", "8BITMIME",
                                   "ENHANCEDSTATUSCODES")
    ehlo: ReplyFn = _none  # None → 250 with the extensions
    mail: ReplyFn = _none  # None → 250 2.1.0 Ok
    rcpt: ReplyFn = _none  # None → 250 2.1.5 Ok
    final: ReplyFn = _none  # argument: the message; None → 250 2.0.0 Ok: queued
    tls: ssl.SSLContext | None = None
    break_tls: bool = False  # answer 220 to STARTTLS, then send garbage and hang up
    drop_after_data_lines: int | None = None  # hang up after this many content lines
    drop_after_dot: bool = False  # read the whole message, then hang up without a reply
    stall_after_dot: float = 0.0  # seconds to wait before the final reply


@dataclass
class Session:
    commands: list[str] = field(default_factory=list)
    tls: bool = False
    messages: list[bytes] = field(default_factory=list)  # wire bytes, up to and with ".\r\n"


class FakeSmtp:
    def __init__(self, ip: str, port: int, script: Script) -> None:
        self.ip, self.port, self.script = ip, port, script
        self.sessions: list[Session] = []
        self._server: asyncio.Server | None = None
        self._counts: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._stopping = asyncio.Event()
        self.by_peer_closed = 0  # sessions the client ended by closing the connection

    @property
    def messages(self) -> list[bytes]:
        return [m for s in self.sessions for m in s.messages]

    @property
    def commands(self) -> list[str]:
        return [c for s in self.sessions for c in s.commands]

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._session, self.ip, self.port)

    async def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)

    @staticmethod
    @contextlib.asynccontextmanager
    async def group(scripts: Mapping[str, Script]) -> AsyncIterator[Servers]:
        """Start one server per address, all on one free port; stop them all afterwards."""
        servers: dict[str, FakeSmtp] = {}
        for _ in range(20):
            port = free_port()
            servers = {ip: FakeSmtp(ip, port, script) for ip, script in scripts.items()}
            try:
                for server in servers.values():
                    await server.start()
                break
            except OSError as exc:
                for server in servers.values():
                    await server.stop()
                if exc.errno != errno.EADDRINUSE:
                    raise
        else:
            raise RuntimeError("no port free on every address")
        try:
            yield Servers(port, servers)
        finally:
            for server in servers.values():
                await server.stop()

    def _reply(self, fn: ReplyFn, kind: str, arg: str, default: str) -> bytes:
        count = self._counts.get(kind, 0)
        self._counts[kind] = count + 1
        return _wire(fn(arg, count) or default)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        session = Session()
        self.sessions.append(session)
        try:
            await self._converse(session, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.transport.abort()

    async def _converse(self, session: Session, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        script = self.script
        writer.write(_wire(script.greeting))
        accepted = 0  # recipients in the current transaction
        for _ in range(MAX_LINES):
            raw = await reader.readline()
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            session.commands.append(line)
            verb, _, arg = line.partition(" ")
            verb = verb.upper()
            if verb == "EHLO":
                extensions = list(script.extensions)
                if script.tls is not None and not session.tls:
                    extensions.append("STARTTLS")
                default = "\n".join([f"250 {self.ip} hello", *extensions])
                writer.write(self._reply(script.ehlo, "ehlo", arg, default))
            elif verb == "HELO":
                writer.write(_wire(f"250 {self.ip}"))
            elif verb == "STARTTLS" and script.tls is not None and not session.tls:
                writer.write(_wire("220 2.0.0 Ready to start TLS"))
                await writer.drain()
                if script.break_tls:
                    writer.write(b"this is not a TLS record\r\n" * 10)
                    await writer.drain()
                    return
                await writer.start_tls(script.tls)
                session.tls = True
            elif verb == "MAIL":
                accepted = 0
                writer.write(self._reply(script.mail, "mail", arg, "250 2.1.0 Ok"))
            elif verb == "RCPT":
                reply = self._reply(script.rcpt, "rcpt", arg, "250 2.1.5 Ok")
                accepted += reply.startswith(b"2")
                writer.write(reply)
            elif verb == "DATA" and not accepted:
                writer.write(_wire("554 5.5.1 No valid recipients"))
            elif verb == "DATA":
                writer.write(_wire("354 End data with <CR><LF>.<CR><LF>"))
                await writer.drain()
                accepted = 0
                if not await self._data(session, reader, writer):
                    return
            elif verb in ("RSET", "NOOP"):
                accepted = 0 if verb == "RSET" else accepted
                writer.write(_wire("250 2.0.0 Ok"))
            elif verb == "QUIT":
                writer.write(_wire("221 2.0.0 Bye"))
                await writer.drain()
                return
            else:
                writer.write(_wire("502 5.5.2 Command not recognized"))
            await writer.drain()

    async def _data(self, session: Session, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> bool:
        """Read one message; False when the script hangs up."""
        script = self.script
        lines: list[bytes] = []
        for _ in range(1_000_000):
            raw = await reader.readline()
            if not raw:
                return False
            lines.append(raw)
            if script.drop_after_data_lines is not None and (
                    len(lines) >= script.drop_after_data_lines):
                return False
            if raw == b".\r\n":
                break
        message = b"".join(lines)
        session.messages.append(message)
        if script.drop_after_dot:
            return False
        if script.stall_after_dot and not await self._stall(reader, script.stall_after_dot):
            return False
        writer.write(self._reply(script.final, "final", message.decode("utf-8", "replace"),
                                 "250 2.0.0 Ok: queued"))
        return True


    async def _stall(self, reader: asyncio.StreamReader, seconds: float) -> bool:
        """Say nothing for `seconds`; False if the client hung up meanwhile (or we stop)."""
        eof = asyncio.ensure_future(reader.read(1))
        stop = asyncio.ensure_future(self._stopping.wait())
        done, _ = await asyncio.wait({eof, stop}, timeout=seconds,
                                     return_when=asyncio.FIRST_COMPLETED)
        for task in (eof, stop):
            task.cancel()
        await asyncio.wait({eof, stop})
        if eof in done and not eof.cancelled() and eof.exception() is None and not eof.result():
            self.by_peer_closed += 1
            return False
        return stop not in done


@dataclass
class Servers:
    port: int
    by_ip: dict[str, FakeSmtp]

    def __getitem__(self, ip: str) -> FakeSmtp:
        return self.by_ip[ip]
