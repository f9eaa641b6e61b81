"""POP3 download benchmark, mailhouse vs Dovecot 2.3, side by side in one run (issue 4, item 5).

Many clients at once, each logging in to its own 1,000-message maildrop and downloading every
message (RETR 1..1000, keep mode), then QUIT. Both servers serve the same bytes:

- mailhouse: ``python -m mailhouse serve`` with the ``pop3`` listener (and ``pop3s`` with
  ``--tls``) and ``[pop3] allow_plaintext_auth = true``, so the clients log in with USER/PASS in
  plain text exactly as they do with Dovecot (the comparison is plaintext vs plaintext; with
  ``--tls`` it is implicit TLS vs implicit TLS, one shared self-signed RSA-2048 certificate).
  Domain bench.test, users pop0..popN-1 made with the CLI; the 1,000 messages arrive by SMTP on
  its ``smtp`` listener, each message once with every user as a recipient.
- Dovecot 2.3 (Debian dovecot-pop3d): a private instance (tests/helpers/dovecot.py: own config
  dir, passwd-file users, ``mail_location = maildir:~/Maildir``, ``ssl = no`` or the same
  certificate with ``--tls``, ``disable_plaintext_auth = no``) whose Maildirs are written
  directly with **the very bytes mailhouse stored** (``mailhouse export`` of pop0: its
  Return-Path and Received included), so both hand out identical messages.

The load is this module's own asyncio POP3 client, run as a separate process
(``python -m bench.pop3_load client ...``; uvloop when installed), the same command against
each server: C concurrent sessions, one per user, each: greeting, USER/PASS (or AUTH PLAIN with
``--auth plain``), STAT, LIST, then RETR 1..N one at a time (``--pipeline K`` keeps K RETRs in
flight, RFC 2449 PIPELINING), QUIT. Every reply is checked: ``+OK`` where expected, STAT's
count equal to N, and every RETR's message (after dot-unstuffing) exactly as long as LIST said.
Anything else (an ``-ERR``, a size mismatch, a timeout, a lost connection) fails the run.

Before the measured runs, every user of each server logs in once (STAT/LIST/UIDL, QUIT): this
builds Dovecot's index files and warms both servers' caches; it is not counted. Then each
repeat measures each server in turn (alternating which goes first).

Figures per run: messages/s and MB/s (message octets as LIST counts them, 10^6 bytes), session
time p50/max, the server's CPU seconds (every process of its session: mailhouse's process, or
Dovecot's master and all its login/auth/pop3 children) and the client's, and the ratio
mailhouse/Dovecot of the median messages/s (MB/s gives the same ratio: the bytes are the same).

Run from the repository root, as root (Dovecot needs it):
    python -m bench.pop3_load                   # -c 20 clients x -n 1000 messages, 1 repeat
    python -m bench.pop3_load --quick           # -c 4 -n 200, a smoke run
    python -m bench.pop3_load --repeat 3        # medians of 3 alternating runs
    python -m bench.pop3_load --tls             # implicit TLS (pop3s) on both sides
    python -m bench.pop3_load --servers dovecot # one side only
Results go to bench/results/pop3_load-YYYYmmdd-HHMMSS.{json,txt} (gitignored). Exit 1 on any
error. Network use: 127.0.0.0/8 only. Every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import concurrent.futures
import ipaddress
import json
import os
import random
import smtplib
import ssl
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

if __package__ in (None, ""):  # run as a file: make `bench` and `tests.helpers` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import report
from tests.helpers.dovecot import DovecotError, DovecotPop3, to_crlf
from tests.helpers.mailhouse import MailhouseError, MailhouseServer
from tests.helpers.net import LOOPBACK
from tests.helpers.postfix import make_self_signed
from tests.helpers.tools import missing_programs, missing_reason

DOMAIN = "bench.test"
SENDER = "load@sender.test"
PASSWORD = "bench-pop3-password"  # throwaway accounts on loopback-only test servers
PASSWORD_ENV = "MH_BENCH_POP3_PASSWORD"
SERVERS = ("mailhouse", "dovecot")
RESULTS = report.Results("pop3_load", ("dovecot", "mailhouse"), ("msg_rate", "mb_rate"))
MAX_MESSAGES = 100_000
MAX_CLIENTS = 500
SMTP_SESSIONS = 4  # parallel SMTP connections filling mailhouse


class BenchError(RuntimeError):
    pass


# ============================================================================ the load client


@dataclass(frozen=True)
class ClientConfig:
    host: str
    port: int
    users: tuple[str, ...]
    password: str
    expect: int  # messages each maildrop must hold (STAT), 0 = do not check
    tls: bool = False
    auth: str = "user"  # "user" (USER/PASS) or "plain" (AUTH PLAIN, RFC 5034)
    pipeline: int = 1
    rounds: int = 1
    timeout: float = 60.0
    deadline: float = 900.0
    light: bool = False  # STAT/LIST/UIDL only, no RETR (the warm-up)


@dataclass
class SessionResult:
    user: str
    messages: int = 0
    octets: int = 0
    seconds: float = 0.0


class Pop3LoadError(RuntimeError):
    pass


class _Pop3Stream(asyncio.Protocol):
    """Receives into one bytearray and wakes the session only when what it waits for (a CRLF,
    or the CRLF.CRLF that ends a multi-line reply) has arrived: each received byte is copied
    once, scanned once, and never sliced into a bytes object (the client must cost far less
    CPU than the servers it measures)."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[int] | None = None
        self._sep = b""
        self._scan = 0
        self._lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self._waiter is not None:
            self._check()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = exc or ConnectionResetError("the server closed the connection")
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(self._lost)

    def _check(self) -> None:
        assert self._waiter is not None
        pos = self.buf.find(self._sep, self._scan)
        if pos >= 0:
            waiter, self._waiter = self._waiter, None
            if not waiter.done():
                waiter.set_result(pos + len(self._sep))
        else:
            self._scan = max(0, len(self.buf) - len(self._sep) + 1)

    async def until(self, sep: bytes, timeout: float, start: int = 0) -> int:
        """Index just past the first `sep` at or after `start` in the buffer, waiting (bounded)
        for it to arrive."""
        pos = self.buf.find(sep, start)
        if pos >= 0:
            return pos + len(sep)
        if self._lost is not None:
            raise self._lost
        self._sep, self._scan = sep, max(start, len(self.buf) - len(sep) + 1)
        self._waiter = asyncio.get_running_loop().create_future()
        async with asyncio.timeout(timeout):  # no extra task per reply, unlike wait_for
            return await self._waiter

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


async def _session(
    config: ClientConfig, user: str, context: ssl.SSLContext | None
) -> SessionResult:
    started = time.perf_counter()
    result = SessionResult(user=user)
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(config.timeout):
        _transport, stream = await loop.create_connection(
            _Pop3Stream, config.host, config.port, ssl=context
        )
    timeout = config.timeout
    buf = stream.buf

    async def line(what: str) -> bytes:
        """The next status line (CRLF included), consumed; it must be +OK."""
        try:
            end = await stream.until(b"\r\n", timeout)
        except TimeoutError:
            raise Pop3LoadError(f"{user}: no reply to {what} within {timeout}s") from None
        except ConnectionError as exc:
            raise Pop3LoadError(f"{user}: connection lost waiting for {what}: {exc}") from None
        reply = bytes(buf[:end])
        del buf[:end]
        if not reply.startswith(b"+OK"):
            raise Pop3LoadError(f"{user}: {what} -> {reply[:200]!r}")
        return reply

    async def body_end(what: str, size: int = 0) -> int:
        """After the status line: index just past the ".\r\n" that ends the data. With the
        unstuffed `size` from LIST the search starts where the end can be at the earliest
        (stuffing only adds octets), so the body is not scanned for it."""
        if buf.startswith(b".\r\n"):
            return 3
        start = max(0, size - 2)
        try:
            return await stream.until(b"\r\n.\r\n", timeout, start)
        except TimeoutError:
            early = buf.find(b"\r\n.\r\n")
            if 0 <= early < start:
                raise Pop3LoadError(
                    f"{user}: {what} ended after {early + 2} octets (stuffed), LIST said {size}"
                ) from None
            raise Pop3LoadError(f"{user}: {what} data not complete within {timeout}s") from None
        except ConnectionError as exc:
            raise Pop3LoadError(f"{user}: connection lost in the {what} data: {exc}") from None

    async def multiline(what: str) -> bytes:
        await line(what)
        end = await body_end(what)
        data = bytes(buf[: end - 3])
        del buf[:end]
        return data

    try:
        await line("the greeting")
        if config.auth == "plain":
            token = base64.b64encode(f"\0{user}\0{config.password}".encode()).decode()
            stream.write(f"AUTH PLAIN {token}\r\n".encode())
            await line("AUTH PLAIN")
        else:
            stream.write(f"USER {user}\r\n".encode())
            await line("USER")
            stream.write(f"PASS {config.password}\r\n".encode())
            await line("PASS")
        stream.write(b"STAT\r\n")
        stat = (await line("STAT")).split()
        count = int(stat[1])
        if config.expect and count != config.expect:
            raise Pop3LoadError(f"{user}: STAT says {count} messages, expected {config.expect}")
        count = min(count, MAX_MESSAGES)
        stream.write(b"LIST\r\n")
        listing = (await multiline("LIST")).split(b"\r\n")
        sizes: dict[int, int] = {}
        for entry in listing[:count]:
            msg_no, size = entry.split()
            sizes[int(msg_no)] = int(size)
        if len(sizes) != count or sorted(sizes) != list(range(1, count + 1)):
            raise Pop3LoadError(f"{user}: LIST gave {len(sizes)} entries for {count} messages")
        if config.light:
            stream.write(b"UIDL\r\n")
            await multiline("UIDL")
        else:
            window = max(1, config.pipeline)
            sent = 0
            for _ in range(min(window, count)):
                sent += 1
                stream.write(b"RETR %d\r\n" % sent)
            for number in range(1, count + 1):
                what = f"RETR {number}"
                await line(what)
                end = await body_end(what, sizes[number])
                # Unstuff by counting: every line that starts with "." went out with one more
                # "." (RFC 1939 §3); the first line has no CRLF before it.
                stuffed = buf.count(b"\r\n..", 0, end - 3) + (1 if buf.startswith(b"..") else 0)
                length = end - 3 - stuffed
                del buf[:end]
                if length != sizes[number]:
                    raise Pop3LoadError(
                        f"{user}: RETR {number} sent {length} octets, LIST said {sizes[number]}"
                    )
                result.messages += 1
                result.octets += length
                if sent < count:
                    sent += 1
                    stream.write(b"RETR %d\r\n" % sent)
        stream.write(b"QUIT\r\n")
        await line("QUIT")
    finally:
        if stream.transport is not None:
            stream.transport.close()
    result.seconds = time.perf_counter() - started
    return result


async def _run_clients(config: ClientConfig) -> dict[str, Any]:
    context: ssl.SSLContext | None = None
    if config.tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the servers' certificates are self-signed

    async def client(user: str) -> list[SessionResult]:
        return [await _session(config, user, context) for _ in range(config.rounds)]

    cpu0 = os.times()
    started = time.perf_counter()
    tasks = [asyncio.ensure_future(client(user)) for user in config.users]
    try:
        done = await asyncio.wait_for(asyncio.gather(*tasks), config.deadline)
    except TimeoutError:
        raise Pop3LoadError(f"the run did not finish within {config.deadline}s") from None
    finally:
        for task in tasks:
            task.cancel()
    wall = time.perf_counter() - started
    sessions = [s for per_user in done for s in per_user]
    usage = os.times()
    return {
        "clients": len(config.users),
        "sessions": len(sessions),
        "messages": sum(s.messages for s in sessions),
        "octets": sum(s.octets for s in sessions),
        "wall": wall,
        "session_p50": statistics.median(s.seconds for s in sessions),
        "session_max": max(s.seconds for s in sessions),
        "client_cpu": usage.user + usage.system - cpu0.user - cpu0.system,
    }


def run_client(config: ClientConfig, use_uvloop: bool = True) -> dict[str, Any]:
    if not ipaddress.ip_address(config.host).is_loopback:
        raise Pop3LoadError(f"loopback addresses only, not {config.host}")
    if use_uvloop:
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
    return asyncio.run(_run_clients(config))


def client_main(argv: list[str]) -> int:
    """``python -m bench.pop3_load client HOST:PORT --users u1,u2 ...``: one JSON line out."""
    parser = argparse.ArgumentParser(prog="bench.pop3_load client")
    parser.add_argument("address", help="127.0.0.1:PORT")
    parser.add_argument("--users", required=True, help="comma-separated logins, one session each")
    parser.add_argument("--password-env", default=PASSWORD_ENV)
    parser.add_argument("--expect", type=int, default=0, help="messages STAT must report")
    parser.add_argument("--tls", action="store_true", help="implicit TLS (pop3s)")
    parser.add_argument("--auth", choices=("user", "plain"), default="user")
    parser.add_argument("--pipeline", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--deadline", type=float, default=900.0)
    parser.add_argument("--light", action="store_true", help="STAT/LIST/UIDL only (warm-up)")
    parser.add_argument("--no-uvloop", action="store_true")
    ns = parser.parse_args(argv)
    host, _, port = ns.address.rpartition(":")
    users = tuple(u for u in ns.users.split(",") if u)
    if not 1 <= len(users) <= MAX_CLIENTS:
        parser.error(f"1..{MAX_CLIENTS} users")
    config = ClientConfig(
        host=host,
        port=int(port),
        users=users,
        password=os.environ.get(ns.password_env, PASSWORD),
        expect=ns.expect,
        tls=ns.tls,
        auth=ns.auth,
        pipeline=max(1, min(ns.pipeline, 1000)),
        rounds=max(1, min(ns.rounds, 100)),
        timeout=ns.timeout,
        deadline=ns.deadline,
        light=ns.light,
    )
    try:
        summary = run_client(config, use_uvloop=not ns.no_uvloop)
    except (Pop3LoadError, OSError, ValueError, IndexError) as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1
    print(json.dumps(summary))
    return 0


# ============================================================================ the benchmark


@dataclass(frozen=True)
class Params:
    clients: int
    messages: int
    repeat: int
    tls: bool
    auth: str
    pipeline: int
    rounds: int
    warmup: str
    seed: int
    servers: tuple[str, ...]
    timeout: float
    deadline: float


@dataclass
class Run:
    server: str
    repeat: int
    clients: int
    messages: int
    octets: int
    wall: float
    session_p50: float
    session_max: float
    server_cpu: float
    client_cpu: float
    busy: float  # share of all CPUs busy during the run (0..1)

    @property
    def msg_rate(self) -> float:
        return self.messages / self.wall if self.wall else 0.0

    @property
    def mb_rate(self) -> float:
        return self.octets / 1e6 / self.wall if self.wall else 0.0


def make_messages(count: int, seed: int) -> list[bytes]:
    """`count` messages (CRLF) with a mail-like size mix: 70 % 2-8 KB, 25 % 8-40 KB, 5 %
    40-300 KB (mean about 18 KB), text in 76-character lines, a few starting with "."."""
    rng = random.Random(seed)
    messages: list[bytes] = []
    for n in range(1, count + 1):
        roll = rng.random()
        if roll < 0.70:
            size = rng.randint(2_000, 8_000)
        elif roll < 0.95:
            size = rng.randint(8_000, 40_000)
        else:
            size = rng.randint(40_000, 300_000)
        head = (
            f"From: Load Sender <{SENDER}>\r\n"
            f"To: <undisclosed-recipients:;>\r\n"
            f"Subject: pop3 load message {n}\r\n"
            f"Message-ID: <pop3load.{seed}.{n}@{DOMAIN}>\r\n"
            "Date: Sat, 28 Nov 2026 09:00:00 +0000\r\n"
            "MIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=us-ascii\r\n"
            "\r\n"
        ).encode()
        lines: list[bytes] = []
        total = len(head)
        for i in range(size // 78 + 1):  # bounded: one line per 78 octets wanted
            if total >= size:
                break
            text = base64.b64encode(rng.randbytes(57)).decode()
            line = ("." + text[1:] if i % 97 == 5 else text).encode() + b"\r\n"
            lines.append(line)
            total += len(line)
        messages.append(head + b"".join(lines))
    return messages


def message_number(data: bytes) -> int:
    """N of ``Message-ID: <pop3load.SEED.N@bench.test>``."""
    return int(data.split(b"<pop3load.", 1)[1].split(b"@", 1)[0].split(b".")[1])


def users_for(clients: int) -> list[str]:
    return [f"pop{i}@{DOMAIN}" for i in range(clients)]


def fill_mailhouse(server: MailhouseServer, users: list[str], messages: list[bytes]) -> None:
    """Every message once by SMTP with every user as a recipient, over a few parallel
    connections (each transaction must get its 250)."""

    def send(chunk: list[bytes]) -> None:
        with smtplib.SMTP(LOOPBACK, server.port("smtp"), timeout=120) as smtp:
            smtp.ehlo("load.sender.test")
            for data in chunk:
                refused = smtp.sendmail(SENDER, users, data)
                if refused:
                    raise BenchError(f"recipients refused: {refused}")

    # Message n goes in order within its connection; the connections interleave, so the
    # maildrop order differs from `messages`, which is irrelevant for the load.
    chunks = [messages[i::SMTP_SESSIONS] for i in range(SMTP_SESSIONS)]
    with concurrent.futures.ThreadPoolExecutor(SMTP_SESSIONS) as pool:
        for future in [pool.submit(send, chunk) for chunk in chunks if chunk]:
            future.result(timeout=1800)


def load(
    port: int, users: list[str], params: Params, *, light: bool = False, rounds: int | None = None
) -> dict[str, Any]:
    """Run the load client as its own process; its JSON summary (BenchError on any error)."""
    argv = [
        sys.executable, "-m", "bench.pop3_load", "client", f"{LOOPBACK}:{port}",
        "--users", ",".join(users), "--expect", str(params.messages),
        "--auth", params.auth, "--pipeline", str(params.pipeline),
        "--rounds", str(rounds or params.rounds),
        "--timeout", str(params.timeout), "--deadline", str(params.deadline),
    ]  # fmt: skip
    if params.tls:
        argv.append("--tls")
    if light:
        argv.append("--light")
    env = {**os.environ, PASSWORD_ENV: PASSWORD}
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        out = subprocess.run(
            argv, capture_output=True, text=True, env=env, cwd=repo,
            timeout=params.deadline + 60, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"load client still running after {exc.timeout}s") from None
    summary = report.json_summary(out.stdout)
    if out.returncode != 0 or "error" in summary or not summary:
        raise BenchError(
            f"load client failed (exit {out.returncode}): "
            f"{summary.get('error') or out.stdout[-2000:]}\n{out.stderr[-3000:]}"
        )
    return summary


@dataclass
class Side:
    name: str
    port: int
    sid: int
    users: list[str]
    diagnostics: Any = field(repr=False)

    def measure(self, params: Params, repeat: int) -> Run:
        server0, cpu0 = report.session_cpu(self.sid), report.cpu_times()
        try:
            summary = load(self.port, self.users, params)
        except BenchError as exc:
            raise BenchError(f"{self.name}: {exc}\n{self.diagnostics()}") from None
        cpu1 = report.cpu_times()
        expected = len(self.users) * params.messages * params.rounds
        if summary["messages"] != expected:
            raise BenchError(f"{self.name}: {summary['messages']} messages, expected {expected}")
        return Run(
            server=self.name,
            repeat=repeat,
            clients=int(summary["clients"]),
            messages=int(summary["messages"]),
            octets=int(summary["octets"]),
            wall=float(summary["wall"]),
            session_p50=float(summary["session_p50"]),
            session_max=float(summary["session_max"]),
            server_cpu=report.session_cpu(self.sid) - server0,
            client_cpu=float(summary["client_cpu"]),
            busy=report.busy_share(cpu0, cpu1),
        )


def table(runs: list[Run], params: Params) -> str:
    mode = "implicit TLS (pop3s)" if params.tls else "plain text (USER/PASS without STLS)"
    retr = f"pipeline {params.pipeline}" if params.pipeline > 1 else "one RETR at a time"
    lines = [
        f"POP3 download: {params.clients} clients x {params.rounds} session(s) x "
        f"{params.messages} messages, {retr}, {mode}, auth {params.auth}",
        "",
        f"{'server':<10} {'rep':>3} {'msgs':>7} {'MB':>7} {'wall s':>7} {'msg/s':>8} "
        f"{'MB/s':>7} {'sess p50':>8} {'srv CPU':>8} {'cli CPU':>8} {'busy':>5}",
    ]
    for r in runs:
        lines.append(
            f"{r.server:<10} {r.repeat:>3} {r.messages:>7} {r.octets / 1e6:>7.1f} {r.wall:>7.2f} "
            f"{r.msg_rate:>8,.0f} {r.mb_rate:>7.1f} {r.session_p50:>7.2f}s "
            f"{r.server_cpu:>7.2f}s {r.client_cpu:>7.2f}s {r.busy:>5.0%}"
        )
    by = report.by_server(runs)
    msg_rate = {name: report.median((r.msg_rate for r in rs), 0.0) for name, rs in by.items()}
    mb_rate = {name: report.median((r.mb_rate for r in rs), 0.0) for name, rs in by.items()}
    lines.append("")
    for name, rs in by.items():
        cpu_per_mb = report.median((r.server_cpu / (r.octets / 1e6) for r in rs if r.octets), 0.0)
        lines.append(
            f"{name:<10} median {msg_rate[name]:,.0f} msg/s, "
            f"{mb_rate[name]:.1f} MB/s, server CPU {cpu_per_mb * 1000:.1f} ms/MB"
        )
    if "mailhouse" in by and "dovecot" in by:
        msg_ratio = report.ratio(msg_rate["mailhouse"], msg_rate["dovecot"])
        mb_ratio = report.ratio(mb_rate["mailhouse"], mb_rate["dovecot"])
        lines.append(
            f"ratio mailhouse/dovecot: {msg_ratio:.2f}x msg/s, {mb_ratio:.2f}x MB/s "
            f"(target >= 1.0x)"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> Params:
    parser = argparse.ArgumentParser(
        prog="bench.pop3_load",
        description="POP3 download load, mailhouse vs Dovecot (see the module doc). "
        "`python -m bench.pop3_load client --help` for the load client alone.",
    )
    parser.add_argument("-c", "--clients", type=int, default=20, help="concurrent sessions (20)")
    parser.add_argument("-n", "--messages", type=int, default=1000, help="per maildrop (1000)")
    parser.add_argument("--repeat", type=int, default=1, help="alternating runs per server")
    parser.add_argument("--tls", action="store_true", help="implicit TLS (pop3s) on both sides")
    parser.add_argument("--auth", choices=("user", "plain"), default="user")
    parser.add_argument("--pipeline", type=int, default=1, help="RETRs in flight (1)")
    parser.add_argument(
        "--rounds", type=int, default=1, help="sessions per client, one after another (1)"
    )
    parser.add_argument(
        "--warmup",
        choices=("full", "light", "none"),
        default="full",
        help="before measuring, per server: one unmeasured full run (full), or every maildrop "
        "opened with STAT/LIST/UIDL only (light)",
    )
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="-c 4 -n 200")
    parser.add_argument("--timeout", type=float, default=60.0, help="per reply (60 s)")
    parser.add_argument("--deadline", type=float, default=900.0, help="per run (900 s)")
    parser.add_argument("--servers", default=",".join(SERVERS))
    ns = parser.parse_args(argv)
    servers = report.parse_servers(
        parser, ns.servers, SERVERS, f"--servers: a subset of {','.join(SERVERS)}"
    )
    clients, messages = (4, 200) if ns.quick else (ns.clients, ns.messages)
    if not 1 <= clients <= MAX_CLIENTS:
        parser.error(f"--clients: 1..{MAX_CLIENTS}")
    if not 1 <= messages <= MAX_MESSAGES:
        parser.error(f"--messages: 1..{MAX_MESSAGES}")
    return Params(
        clients=clients,
        messages=messages,
        repeat=max(1, min(ns.repeat, 20)),
        tls=ns.tls,
        auth=ns.auth,
        pipeline=max(1, min(ns.pipeline, 1000)),
        rounds=max(1, min(ns.rounds, 100)),
        warmup=ns.warmup,
        seed=ns.seed,
        servers=servers,
        timeout=ns.timeout,
        deadline=ns.deadline,
    )


def mailhouse_toml(params: Params, cert: Path, key: Path) -> str:
    text = "[pop3]\nallow_plaintext_auth = true\n"
    if params.tls:
        text += f"\n[tls]\ncert = {json.dumps(str(cert))}\nkey = {json.dumps(str(key))}\n"
    return text


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["client"]:
        return client_main(argv[1:])
    params = parse_args(argv)
    missing = missing_programs("dovecot", "openssl") if "dovecot" in params.servers else []
    if missing:
        print(f"pop3_load: {missing_reason(missing)}", file=sys.stderr)
        return 2
    if "dovecot" in params.servers and os.geteuid() != 0:
        print("pop3_load: run as root (a private Dovecot needs it)", file=sys.stderr)
        return 2

    report.exit_on_sigterm()  # so the finally below stops both servers
    base = report.work_dir("mh-pop3load-", 0o755)
    cert, key = base / "tls" / "cert.pem", base / "tls" / "key.pem"
    users = users_for(params.clients)
    listener = "pop3s" if params.tls else "pop3"
    server: MailhouseServer | None = None
    dovecot: DovecotPop3 | None = None
    sides: dict[str, Side] = {}
    runs: list[Run] = []
    error: str | None = None
    try:
        if params.tls:
            make_self_signed(cert, key, "127.0.0.1")
        generated = make_messages(params.messages, params.seed)
        print(
            f"{params.messages} messages, {sum(map(len, generated)) / 1e6:.1f} MB per maildrop, "
            f"{params.clients} maildrops per server; work dir {base}",
            flush=True,
        )
        served = [b"Return-Path: <" + SENDER.encode() + b">\r\n" + m for m in generated]
        if "mailhouse" in params.servers:
            server = MailhouseServer(
                base / "mailhouse",
                protocols=("smtp", listener),
                hostname="mx.bench.test",
                extra_toml=mailhouse_toml(params, cert, key),
            )
            server.add_domain(DOMAIN)
            for user in users:
                server.add_user(user, PASSWORD)
            server.start()
            started = time.monotonic()
            fill_mailhouse(server, users, generated)
            stored = server.export(users[0])
            print(
                f"mailhouse: {len(stored)} messages x {len(users)} users by SMTP in "
                f"{time.monotonic() - started:.1f}s; {listener} on {LOOPBACK}:"
                f"{server.port(listener)}",
                flush=True,
            )
            if len(stored) != params.messages:
                raise BenchError(f"mailhouse stored {len(stored)} of {params.messages} messages")
            # Dovecot gets the bytes mailhouse stored (its Return-Path and Received included).
            stored.sort(key=lambda m: message_number(m.data))
            served = [to_crlf(m.data) for m in stored]
            mh = server
            assert mh.process is not None
            sides["mailhouse"] = Side(
                "mailhouse", mh.port(listener), os.getsid(mh.process.pid), users,
                lambda: mh.log_tail(40),
            )  # fmt: skip
        if "dovecot" in params.servers:
            dovecot = DovecotPop3(
                dict.fromkeys(users, PASSWORD),
                tls=params.tls,
                cert=(cert, key) if params.tls else None,
                base_dir=base / "dovecot",
            )
            for user in users:
                dovecot.deliver(user, served)
            dovecot.start()
            dc = dovecot
            assert dc.process is not None
            sides["dovecot"] = Side(
                "dovecot", dc.port(listener), os.getsid(dc.process.pid), users,
                lambda: dc.log_tail(40),
            )  # fmt: skip
            print(f"dovecot: {dc.version()}; {listener} on {LOOPBACK}:{dc.port(listener)}")
        if params.warmup != "none":  # not measured: Dovecot's indexes, both servers' caches
            for side in sides.values():
                try:
                    load(side.port, users, params, light=params.warmup == "light", rounds=1)
                except BenchError as exc:
                    raise BenchError(f"{side.name} warm-up: {exc}\n{side.diagnostics()}") from None
        for repeat in range(1, params.repeat + 1):
            for name in (n for n in report.run_order(SERVERS, repeat) if n in sides):
                run = sides[name].measure(params, repeat)
                runs.append(run)
                print(
                    f"  {run.server:<10} repeat {repeat}: {run.msg_rate:,.0f} msg/s, "
                    f"{run.mb_rate:.1f} MB/s ({run.wall:.2f}s, server CPU {run.server_cpu:.2f}s,"
                    f" client CPU {run.client_cpu:.2f}s)",
                    flush=True,
                )
    except (BenchError, MailhouseError, DovecotError, smtplib.SMTPException, OSError) as exc:
        error = f"{type(exc).__name__}: {exc}"
        print(f"pop3_load: {error}", file=sys.stderr)
    finally:
        if server is not None:
            server.close()
        if dovecot is not None:
            dovecot.stop()

    text = table(runs, params)
    if error:
        text += f"\n\nFAILED: {error.splitlines()[0]}"
    RESULTS.publish(text, params, runs, base, error=error)
    return report.finish(base, error is not None)


if __name__ == "__main__":
    sys.exit(main())
