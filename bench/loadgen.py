"""An SMTP submission load generator: asyncio, stdlib only (uvloop when installed).

N concurrent sessions send M messages of L bytes between them to one server, each message on a
new connection (or, with --reuse, one connection per session for all its messages), speaking
ESMTP in plain text, with implicit TLS (RFC 8314, port 465 style) or with STARTTLS (RFC 3207),
optionally authenticating with ``AUTH PLAIN`` (RFC 4616, initial response), then
MAIL / RCPT / DATA. It counts the 250 replies to the final dot and fails loudly, naming the
session, the message, the command and the reply, on any reply it did not expect: the run stops
at the first one and exits 1. It reports accepted msg/s (messages / wall time).

It is what smtp-source(1) does, plus TLS and AUTH, which smtp-source lacks:

    python -m bench.loadgen 127.0.0.1:2525 -s 20 -m 2000 -l 4096
    python -m bench.loadgen 127.0.0.1:4465 --tls implicit --user u@bench.test --password-env PW
    python -m bench.loadgen 127.0.0.1:2525 --reuse --json    # one JSON object on stdout

Every message is ``From: SENDER`` / ``To: RECIPIENT`` with a unique
``Message-ID: <TAG.N@DOMAIN>`` (TAG = --tag, N = 1..M), so a sink's capture can be checked
message by message, and a Date header; the body is filled with 76-character lines up to
L bytes for the whole message (headers included). Network use: 127.0.0.0/8 only (refused
otherwise). Every loop is bounded: a session sends at most M messages, a multi-line reply has at
most 200 lines, each reply must come within --timeout seconds and the whole run within
--deadline seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ipaddress
import json
import os
import ssl
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from email.utils import formatdate
from typing import Literal

TlsMode = Literal["none", "implicit", "starttls"]
TLS_MODES: tuple[TlsMode, ...] = ("none", "implicit", "starttls")

MAX_REPLY_LINES = 200
MAX_LINE = 4096
LINE_WIDTH = 76


class LoadError(RuntimeError):
    """An unexpected reply, a timeout or a lost connection: the run failed."""


@dataclass(frozen=True)
class LoadConfig:
    host: str
    port: int
    sessions: int = 20
    messages: int = 2000
    size: int = 4096
    tls: TlsMode = "none"
    user: str | None = None
    password: str | None = None
    sender: str = "sender@bench.test"
    recipient: str = "rcpt@sink.test"
    reuse: bool = False
    pipelining: bool = False  # send MAIL/RCPT/DATA in one write when PIPELINING is offered
    helo: str = "loadgen.bench.test"
    tag: str = "bench"
    timeout: float = 60.0  # per reply
    deadline: float = 900.0  # whole run

    def check(self) -> None:
        if not ipaddress.ip_address(self.host).is_loopback:
            raise ValueError(f"{self.host} is not a loopback address (127.0.0.0/8 only)")
        if self.sessions < 1 or self.messages < 1 or self.size < 1:
            raise ValueError("sessions, messages and size must be at least 1")
        if self.tls not in TLS_MODES:
            raise ValueError(f"tls must be one of {TLS_MODES}")
        if (self.user is None) != (self.password is None):
            raise ValueError("give both user and password, or neither")
        if self.user is not None and self.tls == "none":
            # Servers never offer AUTH in clear text (RFC 4954 §4); neither do we.
            raise ValueError("AUTH needs --tls implicit or starttls")


@dataclass
class LoadResult:
    messages: int  # asked for
    accepted: int  # 250 replies to the final dot
    seconds: float  # wall time from the first connect to the last QUIT
    connections: int
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    error: str | None = None

    @property
    def rate(self) -> float:
        return self.accepted / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict[str, object]:
        lat = sorted(self.latencies_ms)
        out: dict[str, object] = {k: v for k, v in asdict(self).items() if k != "latencies_ms"}
        out["rate"] = self.rate
        if lat:
            out["latency_ms"] = {
                "p50": statistics.median(lat),
                "p90": lat[min(len(lat) - 1, int(len(lat) * 0.9))],
                "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
                "max": lat[-1],
            }
        return out


@dataclass(frozen=True)
class Reply:
    code: int
    lines: tuple[str, ...]

    def __str__(self) -> str:
        return " / ".join(f"{self.code} {line}" for line in self.lines) or str(self.code)


def message_bytes(cfg: LoadConfig, number: int, date: str) -> bytes:
    """Message `number`, dot-stuffed and CRLF-terminated, ending with CRLF.CRLF: `cfg.size`
    bytes up to (not including) the final dot line, or a little more if the headers alone
    are bigger."""
    domain = cfg.sender.rpartition("@")[2] or "bench.test"
    head = (
        f"From: {cfg.sender}\r\n"
        f"To: {cfg.recipient}\r\n"
        f"Subject: loadgen {cfg.tag} message {number}\r\n"
        f"Date: {date}\r\n"
        f"Message-ID: <{cfg.tag}.{number}@{domain}>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "\r\n"
    ).encode("ascii")
    room = max(0, cfg.size - len(head))
    line = b"X" * LINE_WIDTH + b"\r\n"
    full, rest = divmod(room, len(line))
    body = line * full
    if rest:
        # A last, shorter line; never starts with "." so no dot-stuffing is needed.
        body += b"X" * max(rest - 2, 1) + b"\r\n"
    return head + body + b".\r\n"


def client_tls_context() -> ssl.SSLContext:
    """TLS 1.2+ without certificate checks: the servers use self-signed loopback certs."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class Session:
    """One SMTP connection."""

    def __init__(self, cfg: LoadConfig, ident: int, tls: ssl.SSLContext | None) -> None:
        self.cfg = cfg
        self.ident = ident
        self.tls = tls
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.extensions: set[str] = set()
        self.where = f"session {ident}"

    def _fail(self, what: str, reply: Reply | str) -> LoadError:
        return LoadError(f"{self.where}: {what}: {reply}")

    async def read_reply(self, what: str) -> Reply:
        assert self.reader is not None
        lines: list[str] = []
        try:
            async with asyncio.timeout(self.cfg.timeout):
                return await self._read_lines(what, lines)
        except TimeoutError:
            raise self._fail(what, f"no reply within {self.cfg.timeout}s") from None

    async def _read_lines(self, what: str, lines: list[str]) -> Reply:
        assert self.reader is not None
        for _ in range(MAX_REPLY_LINES):
            raw = await self.reader.readline()
            if not raw.endswith(b"\n"):
                raise self._fail(what, f"connection closed (got {raw[:200]!r})")
            if len(raw) > MAX_LINE:
                raise self._fail(what, f"reply line longer than {MAX_LINE} bytes")
            text = raw.decode("utf-8", "replace").rstrip("\r\n")
            if len(text) < 3 or not text[:3].isdigit():
                raise self._fail(what, f"malformed reply line {text[:200]!r}")
            lines.append(text[4:])
            if text[3:4] != "-":
                return Reply(int(text[:3]), tuple(lines))
        raise self._fail(what, f"reply longer than {MAX_REPLY_LINES} lines")

    async def expect(self, what: str, code: int) -> Reply:
        reply = await self.read_reply(what)
        if reply.code != code:
            raise self._fail(f"{what}: expected {code}", reply)
        return reply

    async def command(self, line: str, code: int) -> Reply:
        assert self.writer is not None
        self.writer.write(line.encode("utf-8") + b"\r\n")
        # Name the command without the password in error messages.
        what = line.split(" ", 2)[0] + (" PLAIN" if line.startswith("AUTH PLAIN") else "")
        return await self.expect(what if line.startswith("AUTH") else line, code)

    async def ehlo(self) -> None:
        reply = await self.command(f"EHLO {self.cfg.helo}", 250)
        self.extensions = {line.split(" ", 1)[0].upper() for line in reply.lines[1:]}

    async def connect(self) -> None:
        cfg = self.cfg
        async with asyncio.timeout(cfg.timeout):  # TimeoutError: named by the worker
            self.reader, self.writer = await asyncio.open_connection(
                cfg.host,
                cfg.port,
                ssl=self.tls if cfg.tls == "implicit" else None,
                server_hostname="" if cfg.tls == "implicit" else None,
            )
        await self.expect("greeting", 220)
        await self.ehlo()
        if cfg.tls == "starttls":
            if "STARTTLS" not in self.extensions:
                raise self._fail("EHLO", "STARTTLS not offered")
            await self.command("STARTTLS", 220)
            assert self.writer is not None and self.tls is not None
            async with asyncio.timeout(cfg.timeout):
                await self.writer.start_tls(self.tls, server_hostname="")
            await self.ehlo()
        if cfg.user is not None and cfg.password is not None:
            if not any(ext == "AUTH" for ext in self.extensions):
                raise self._fail("EHLO", "AUTH not offered")
            token = base64.b64encode(f"\0{cfg.user}\0{cfg.password}".encode()).decode()
            await self.command(f"AUTH PLAIN {token}", 235)

    async def send(self, number: int, payload: bytes) -> None:
        assert self.writer is not None
        cfg = self.cfg
        self.where = f"session {self.ident}, message {number}"
        mail = f"MAIL FROM:<{cfg.sender}>"
        rcpt = f"RCPT TO:<{cfg.recipient}>"
        if cfg.pipelining and "PIPELINING" in self.extensions:
            self.writer.write(f"{mail}\r\n{rcpt}\r\nDATA\r\n".encode())
            await self.expect(mail, 250)
            await self.expect(rcpt, 250)
            await self.expect("DATA", 354)
        else:
            await self.command(mail, 250)
            await self.command(rcpt, 250)
            await self.command("DATA", 354)
        self.writer.write(payload)
        await self.expect("end of data", 250)

    async def quit(self) -> None:
        if self.writer is None:
            return
        try:
            await self.command("QUIT", 221)
        finally:
            await self.close()

    async def close(self) -> None:
        writer, self.writer, self.reader = self.writer, None, None
        if writer is None:
            return
        writer.close()
        with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
            async with asyncio.timeout(5.0):
                await writer.wait_closed()


async def run_load(cfg: LoadConfig, progress: Callable[[int], None] | None = None) -> LoadResult:
    """Send cfg.messages messages over cfg.sessions sessions; raise nothing, report instead."""
    cfg.check()
    tls = client_tls_context() if cfg.tls != "none" else None
    date = formatdate(localtime=False)
    next_number = 1
    result = LoadResult(messages=cfg.messages, accepted=0, seconds=0.0, connections=0)

    def claim() -> int | None:
        nonlocal next_number
        if next_number > cfg.messages:
            return None
        number, next_number = next_number, next_number + 1
        return number

    async def worker(ident: int) -> None:
        session = Session(cfg, ident, tls)
        connected = False
        try:
            for _ in range(cfg.messages):  # bounded: never more than every message
                number = claim()
                if number is None:
                    break
                payload = message_bytes(cfg, number, date)
                started = time.perf_counter()
                if not connected:
                    session.where = f"session {ident}, message {number}"
                    await session.connect()
                    result.connections += 1
                    connected = True
                await session.send(number, payload)
                result.accepted += 1
                result.latencies_ms.append((time.perf_counter() - started) * 1000.0)
                if progress is not None:
                    progress(result.accepted)
                if not cfg.reuse:
                    await session.quit()
                    connected = False
            if connected:
                await session.quit()
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            raise LoadError(f"{session.where}: {type(exc).__name__}: {exc}") from exc
        finally:
            await session.close()

    started = time.perf_counter()
    try:
        async with asyncio.timeout(cfg.deadline):
            async with asyncio.TaskGroup() as group:
                for ident in range(1, min(cfg.sessions, cfg.messages) + 1):
                    group.create_task(worker(ident))
    except* LoadError as failures:
        result.error = "; ".join(str(e) for e in failures.exceptions[:5])
    except* TimeoutError:
        result.error = f"the run's deadline of {cfg.deadline}s passed"
    except* (OSError, ssl.SSLError) as failures:
        result.error = "; ".join(_describe(e) for e in failures.exceptions[:5])
    result.seconds = time.perf_counter() - started
    if result.error is None and result.accepted != cfg.messages:
        result.error = f"only {result.accepted} of {cfg.messages} messages got a 250"
    return result


def _describe(exc: BaseException) -> str:
    if isinstance(exc, LoadError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def run(cfg: LoadConfig, use_uvloop: bool = True) -> LoadResult:
    """run_load on a fresh event loop (uvloop if installed and wanted)."""
    factory = None
    if use_uvloop:
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:
            factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(run_load(cfg))


def parse_target(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.loadgen",
        description="SMTP submission load generator (asyncio; TLS, AUTH PLAIN).",
    )
    parser.add_argument("target", type=parse_target, help="HOST:PORT on 127.0.0.0/8")
    parser.add_argument("-s", "--sessions", type=int, default=20, help="concurrent sessions")
    parser.add_argument("-m", "--messages", type=int, default=2000, help="messages in all")
    parser.add_argument("-l", "--size", type=int, default=4096, help="message bytes")
    parser.add_argument("--tls", choices=TLS_MODES, default="none")
    parser.add_argument("--user", help="AUTH PLAIN login")
    parser.add_argument(
        "--password-env", metavar="VAR", help="environment variable holding the password"
    )
    parser.add_argument("-f", "--sender", default="sender@bench.test")
    parser.add_argument("-t", "--recipient", default="rcpt@sink.test")
    parser.add_argument("--reuse", action="store_true", help="keep each session's connection")
    parser.add_argument(
        "--pipelining", action="store_true", help="MAIL/RCPT/DATA in one write (RFC 2920)"
    )
    parser.add_argument("--tag", default=f"bench{os.getpid()}", help="Message-ID prefix")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per reply")
    parser.add_argument("--deadline", type=float, default=900.0, help="seconds for the run")
    parser.add_argument("--no-uvloop", action="store_true", help="use the stdlib event loop")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    ns = parser.parse_args(argv)
    password = None
    if ns.password_env is not None:
        password = os.environ.get(ns.password_env)
        if password is None:
            parser.error(f"environment variable {ns.password_env} is not set")
    host, port = ns.target
    cfg = LoadConfig(
        host=host,
        port=port,
        sessions=ns.sessions,
        messages=ns.messages,
        size=ns.size,
        tls=ns.tls,
        user=ns.user,
        password=password,
        sender=ns.sender,
        recipient=ns.recipient,
        reuse=ns.reuse,
        pipelining=ns.pipelining,
        tag=ns.tag,
        timeout=ns.timeout,
        deadline=ns.deadline,
    )
    try:
        cfg.check()
    except ValueError as exc:
        parser.error(str(exc))
    result = run(cfg, use_uvloop=not ns.no_uvloop)
    if ns.json:
        print(json.dumps(result.summary()))
    else:
        print(
            f"{result.accepted}/{result.messages} accepted in {result.seconds:.2f}s = "
            f"{result.rate:,.0f} msg/s over {result.connections} connection(s)"
        )
    if result.error is not None:
        print(f"loadgen: FAILED: {result.error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
