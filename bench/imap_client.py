"""A small asyncio IMAP4rev1 client for the IMAP benchmarks (RFC 3501), measuring servers.

Written for cost, not for completeness: the benchmarks must measure the servers, not the client.
Received bytes go into one bytearray and are scanned once, line by line; a literal (``{N}`` at
the end of a line, RFC 3501 §4.3) is skipped by its length without being searched; a command
whose responses are not needed (``keep=False``) only counts its untagged responses, so a
100,000-message FETCH never builds 100,000 bytes objects. Nothing parses the IMAP grammar beyond
that: the benchmarks pick what they need out of the kept responses.

Bounded everywhere: every wait has a timeout, a literal may be at most `MAX_LITERAL` octets, a
line at most `MAX_LINE`, a kept response at most `MAX_KEPT` octets in all.
"""

from __future__ import annotations

import asyncio
import functools
import math
import re
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, cast

MAX_LINE = 1 << 20  # an IMAP line without its literals: a server sending more is broken
MAX_LITERAL = 1 << 30
MAX_KEPT = 1 << 30  # octets of responses kept for one command

_LITERAL = re.compile(rb"\{(\d{1,10})\+?\}$")
_APPENDUID = re.compile(rb"\[APPENDUID (\d+) (\d+)\]", re.IGNORECASE)


class ImapClientError(RuntimeError):
    """A protocol error, a NO/BAD where OK was needed, a timeout or a lost connection."""


@dataclass
class Reply:
    """What a command got: the tagged status line, the untagged responses (each with its
    literals inline, CRLFs included; only with keep=True) and how many there were."""

    tagged: bytes
    untagged: list[bytes] = field(default_factory=list)
    count: int = 0

    @property
    def status(self) -> bytes:
        """OK, NO or BAD (upper case; b"" if the tagged line has none)."""
        words = self.tagged.split(b" ", 2)
        return words[1].upper() if len(words) > 1 else b""

    @property
    def ok(self) -> bool:
        return self.status == b"OK"

    def search_numbers(self) -> list[int]:
        """The numbers of ``* SEARCH`` / ``* SORT`` responses."""
        numbers: list[int] = []
        for response in self.untagged:
            words = response.split()
            if len(words) >= 2 and words[1].upper() in (b"SEARCH", b"SORT"):
                numbers.extend(int(w) for w in words[2:] if w.isdigit())
        return numbers

    def append_uid(self) -> int | None:
        """The UID of an APPENDUID response code (RFC 4315 §3), if the server sent one."""
        match = _APPENDUID.search(self.tagged)
        return int(match.group(2)) if match else None


class _ImapStream(asyncio.Protocol):
    """Splits the received bytes into IMAP responses as they arrive (see module doc)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self._need = 0  # literal octets still to come within the current response
        self._current = bytearray()  # the current response so far (kept responses only)
        self._first = b""  # the current response's first line
        self._tag = b""  # the tag being waited for
        self._keep = True
        self._kept = 0
        self.reply = Reply(b"")
        self._done: asyncio.Future[Reply] | None = None
        self._continuation: asyncio.Future[bytes] | None = None
        self._lost: BaseException | None = None
        self.greeting: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's does not subclass it

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = exc or ConnectionResetError("the server closed the connection")
        self._wake_all(self._lost)

    def _wake_all(self, error: BaseException) -> None:
        """Fail every pending wait; a future nobody awaits (a continuation after the tagged
        reply, the greeting of a closed connection) is marked as seen, so asyncio does not
        log it as an exception never retrieved."""
        for waiter in (self._done, self._continuation, self.greeting):
            if waiter is not None and not waiter.done():
                waiter.set_exception(error)
                waiter.exception()

    def expect(self, tag: bytes, keep: bool) -> asyncio.Future[Reply]:
        if self._lost is not None:
            raise ImapClientError(f"connection lost: {self._lost}")
        self._tag, self._keep, self._kept = tag + b" ", keep, 0
        self.reply = Reply(b"")
        self._done = asyncio.get_running_loop().create_future()
        return self._done

    def expect_continuation(self) -> asyncio.Future[bytes]:
        self._continuation = asyncio.get_running_loop().create_future()
        return self._continuation

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos = 0
        while True:
            if self._need:
                take = min(self._need, len(buf) - pos)
                if self._keep and self._first:
                    self._current += buf[pos : pos + take]
                pos += take
                self._need -= take
                if self._need:
                    break
                continue
            end = buf.find(b"\r\n", pos)
            if end < 0:
                if len(buf) - pos > MAX_LINE:
                    self._fail(f"a line longer than {MAX_LINE} octets")
                    return
                break
            line = bytes(buf[pos:end])
            pos = end + 2
            if not self._first:
                self._first = line
            if self._keep:
                self._current += line
                self._current += b"\r\n"
            match = _LITERAL.search(line) if line.endswith(b"}") else None
            if match:
                self._need = int(match.group(1))
                if self._need > MAX_LITERAL:
                    self._fail(f"a literal of {self._need} octets")
                    return
                continue
            self._response_done()
        del buf[:pos]

    def _response_done(self) -> None:
        first, whole = self._first, bytes(self._current)
        self._first, self._current = b"", bytearray()
        if first.startswith(b"* ") or first == b"*":
            if not self.greeting.done():
                self.greeting.set_result(first)
                return
            self.reply.count += 1
            if self._keep:
                self._kept += len(whole)
                if self._kept > MAX_KEPT:
                    self._fail(f"more than {MAX_KEPT} octets of responses")
                    return
                self.reply.untagged.append(whole)
        elif first.startswith(b"+"):
            if self._continuation is not None and not self._continuation.done():
                self._continuation.set_result(first)
        elif self._tag and first.startswith(self._tag):
            self.reply.tagged = first
            if self._done is not None and not self._done.done():
                self._done.set_result(self.reply)
        else:
            self._fail(f"unexpected response {first[:200]!r}")

    def _fail(self, why: str) -> None:
        self._lost = ImapClientError(why)
        self._wake_all(self._lost)
        if self.transport is not None:
            self.transport.abort()

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class ImapConnection:
    """One logged-out IMAP connection: `connect`, then `command` / `append` / `idle`."""

    def __init__(self, stream: _ImapStream, timeout: float) -> None:
        self._stream = stream
        self._tags = 0
        self.timeout = timeout

    @classmethod
    async def connect(
        cls, host: str, port: int, context: ssl.SSLContext | None, timeout: float
    ) -> ImapConnection:
        """TCP, TLS when `context` is given (implicit TLS, RFC 8314), and the ``* OK``
        greeting."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _transport, stream = await loop.create_connection(
                    _ImapStream, host, port, ssl=context
                )
                greeting = await stream.greeting
        except TimeoutError:
            raise ImapClientError(f"no greeting from {host}:{port} within {timeout}s") from None
        if not greeting.startswith(b"* OK"):
            if stream.transport is not None:
                stream.transport.close()
            raise ImapClientError(f"greeting {greeting[:200]!r}")
        return cls(stream, timeout)

    def _tag(self) -> bytes:
        self._tags += 1
        return b"b%d" % self._tags

    async def _wait(self, waiter: asyncio.Future[Reply], what: bytes) -> Reply:
        try:
            async with asyncio.timeout(self.timeout):
                reply = await waiter
        except TimeoutError:
            raise ImapClientError(f"no reply to {what[:80]!r} within {self.timeout}s") from None
        except (ConnectionError, OSError) as exc:
            raise ImapClientError(f"connection lost during {what[:80]!r}: {exc}") from None
        return reply

    async def command(self, text: bytes, keep: bool = True, check: bool = True) -> Reply:
        """Send ``TAG text`` and wait for its tagged reply (which must be OK when `check`)."""
        tag = self._tag()
        waiter = self._stream.expect(tag, keep)
        self._stream.write(tag + b" " + text + b"\r\n")
        reply = await self._wait(waiter, text)
        if check and not reply.ok:
            raise ImapClientError(f"{text[:80]!r} -> {reply.tagged[:300]!r}")
        return reply

    async def append(self, mailbox: bytes, flags: bytes, message: bytes) -> Reply:
        """APPEND with a synchronizing literal (waits for the "+" as RFC 3501 §7.5 asks)."""
        tag = self._tag()
        waiter = self._stream.expect(tag, True)
        going_on: asyncio.Future[Any] = self._stream.expect_continuation()
        self._stream.write(b"%s APPEND %s (%s) {%d}\r\n" % (tag, mailbox, flags, len(message)))
        try:
            async with asyncio.timeout(self.timeout):
                either = [going_on, cast(asyncio.Future[Any], waiter)]
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            raise ImapClientError(f"no continuation to APPEND within {self.timeout}s") from None
        if waiter.done():  # refused before the literal
            raise ImapClientError(f"APPEND -> {(await waiter).tagged[:300]!r}")
        going_on.result()
        self._stream.write(message + b"\r\n")
        reply = await self._wait(waiter, b"APPEND")
        if not reply.ok:
            raise ImapClientError(f"APPEND -> {reply.tagged[:300]!r}")
        return reply

    async def idle(self, seconds: float) -> float:
        """IDLE (RFC 2177) for `seconds`, then DONE; the seconds spent beyond that wait
        (getting the "+" and the tagged OK)."""
        started = time.perf_counter()
        tag = self._tag()
        waiter = self._stream.expect(tag, False)
        going_on = self._stream.expect_continuation()
        self._stream.write(tag + b" IDLE\r\n")
        try:
            async with asyncio.timeout(self.timeout):
                await going_on
        except TimeoutError:
            raise ImapClientError(f"no continuation to IDLE within {self.timeout}s") from None
        await asyncio.sleep(seconds)
        self._stream.write(b"DONE\r\n")
        reply = await self._wait(waiter, b"IDLE")
        if not reply.ok:
            raise ImapClientError(f"IDLE -> {reply.tagged[:300]!r}")
        return time.perf_counter() - started - seconds

    async def start_idle(self) -> None:
        """IDLE without end (the memory benchmark): returns once the server said "+"."""
        tag = self._tag()
        self._stream.expect(tag, False)
        going_on = self._stream.expect_continuation()
        self._stream.write(tag + b" IDLE\r\n")
        try:
            async with asyncio.timeout(self.timeout):
                await going_on
        except TimeoutError:
            raise ImapClientError(f"no continuation to IDLE within {self.timeout}s") from None

    async def login(self, user: str, password: str) -> Reply:
        return await self.command(b"LOGIN %s %s" % (quoted(user), quoted(password)))

    def close(self) -> None:
        if self._stream.transport is not None:
            self._stream.transport.close()


def quoted(text: str) -> bytes:
    """An IMAP quoted string (RFC 3501 §4.3): only \\ and " need escaping."""
    return b'"' + text.encode().replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


@functools.cache
def client_context() -> ssl.SSLContext:
    """TLS without verification: both servers present the same self-signed certificate. One
    context per process, and without the system's CA store: loading that costs ~30 ms of CPU
    (ssl.create_default_context), more than the rest of a session."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def install_uvloop(enabled: bool) -> None:
    if enabled:
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass


def percentiles(seconds: list[float]) -> dict[str, float]:
    """count, p50, p95, p99 and max of latencies (nearest rank; seconds)."""
    ordered = sorted(seconds)
    last = len(ordered) - 1

    def rank(share: float) -> float:
        return ordered[min(last, max(0, math.ceil(share * len(ordered) - 1e-9) - 1))]

    return {
        "count": len(ordered),
        "p50": rank(0.50),
        "p95": rank(0.95),
        "p99": rank(0.99),
        "max": ordered[-1],
    }
