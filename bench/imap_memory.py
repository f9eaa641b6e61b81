"""Memory of idle IMAP connections, mailhouse vs Dovecot 2.3, in one run (issue 8, step 7).

Each server in turn (the other one idle, not measured) gets `--connections` (500) implicit-TLS
connections spread over `--users` (50) accounts, each: greeting, LOGIN, SELECT INBOX (a small
mailbox of `--messages`), then IDLE (RFC 2177) until the measurement is done (``--mode login``:
no IDLE, just logged in with INBOX selected). At most `OPENING` connections are being opened at
once. Once all are open and `--settle` seconds have passed, the server's memory is read:

    PSS (proportional set size, /proc/PID/smaps_rollup) summed over every process of the
    server's session: Dovecot's master, its log, config, anvil and auth processes and every
    imap-login and imap process; mailhouse's main process and its worker processes.

PSS charges each shared page to its sharers in equal parts, so the sum is the memory the server
uses in all, each page once. The same sum is read before the connections open (the idle server,
after one login per user to start what starts on demand); the figures are the total with the
connections, the increase per connection ((with - before) / connections) and the ratio of the
per-connection increases mailhouse/Dovecot (lower is better). Dovecot runs its defaults (one
imap-login process, which also relays the TLS session, and one imap process per connection),
with its process limits raised so 500 connections fit (bench/imap_servers.py).

The client is this process (asyncio, bench/imap_client.py); its RLIMIT_NOFILE soft limit is
raised as far as the hard limit allows (one descriptor per connection and some).

Run from the repository root, as root (Dovecot needs it):
    python -m bench.imap_memory                     # 500 connections, 50 users, IDLE
    python -m bench.imap_memory --connections 50    # a quick check
    python -m bench.imap_memory --server dovecot    # one side only (mailhouse | both)
Results go to bench/results/imap_memory-YYYYmmdd-HHMMSS.{json,txt} (gitignored). Exit 0 when
mailhouse does not serve IMAP yet (Dovecot's figures alone, the reason printed), 1 on any other
error. Network use: 127.0.0.0/8 only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make `bench` and `tests.helpers` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import report
from bench.imap_client import ImapClientError, ImapConnection, client_context, install_uvloop
from bench.imap_mail import mailbox
from bench.imap_servers import (
    PASSWORD,
    SERVER_CHOICES,
    SERVERS,
    ImapServers,
    Side,
    add_server_option,
    exit_status,
    session_pss,
    unavailable_lines,
    users_for,
)
from tests.helpers.dovecot import DovecotError
from tests.helpers.mailhouse import MailhouseError
from tests.helpers.net import LOOPBACK
from tests.helpers.tools import missing_programs, missing_reason

RESULTS = report.Results("imap_memory", ("dovecot", "mailhouse"), ("per_connection_kib",))
MAX_CONNECTIONS = 5000
OPENING = 20  # connections being opened at once
SPARE_FDS = 200  # descriptors beyond one per connection


class BenchError(RuntimeError):
    pass


@dataclass(frozen=True)
class Params:
    connections: int
    users: int
    messages: int
    mode: str  # "idle" or "login"
    settle: float
    seed: int
    servers: tuple[str, ...]
    mailhouse_toml: str
    timeout: float


@dataclass
class Run:
    server: str
    connections: int
    open_seconds: float  # to open every connection
    pss_before_kib: int
    pss_with_kib: int
    processes_before: int
    processes_with: int

    @property
    def per_connection_kib(self) -> float:
        return (self.pss_with_kib - self.pss_before_kib) / max(1, self.connections)


def raise_fd_limit(connections: int) -> int:
    """Raise this process's RLIMIT_NOFILE soft limit for `connections`; the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + SPARE_FDS
    if soft != resource.RLIM_INFINITY and soft < wanted:
        soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


async def _open(side: Side, user: str, params: Params, gate: asyncio.Semaphore) -> ImapConnection:
    async with gate:
        conn = await ImapConnection.connect(LOOPBACK, side.port, client_context(), params.timeout)
        try:
            await conn.login(user, PASSWORD)
            await conn.command(b"SELECT INBOX", keep=False)
            if params.mode == "idle":
                await conn.start_idle()
        except BaseException:
            conn.close()
            raise
        return conn


async def _measure(side: Side, users: list[str], params: Params) -> Run:
    gate = asyncio.Semaphore(OPENING)
    # One login per user first, so the idle figure includes what starts on demand (auth
    # workers, caches); then the idle server's memory.
    for conn in await asyncio.gather(*(_open(side, u, params, gate) for u in users)):
        conn.close()
    await asyncio.sleep(params.settle)
    before, processes_before = session_pss(side.sid)
    started = time.perf_counter()
    tasks = [
        asyncio.ensure_future(_open(side, users[i % len(users)], params, gate))
        for i in range(params.connections)
    ]
    try:
        connections = await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is None:
                task.result().close()
            task.cancel()
        raise
    open_seconds = time.perf_counter() - started
    try:
        await asyncio.sleep(params.settle)
        with_connections, processes_with = session_pss(side.sid)
    finally:
        for conn in connections:
            conn.close()
    await asyncio.sleep(params.settle)  # let the server wind the sessions down
    return Run(side.name, params.connections, open_seconds, before, with_connections,
               processes_before, processes_with)  # fmt: skip


def measure(side: Side, users: list[str], params: Params) -> Run:
    try:
        return asyncio.run(_measure(side, users, params))
    except ImapClientError as exc:
        raise BenchError(f"{side.name}: {exc}\n{side.diagnostics()}") from None


def table(runs: list[Run], params: Params) -> str:
    what = "IDLE" if params.mode == "idle" else "logged in, no IDLE"
    lines = [
        f"IMAP memory: {params.connections} connections over {params.users} users, INBOX "
        f"({params.messages} messages) selected, {what}; implicit TLS",
        "",
        f"{'server':<10} {'processes':>15} {'PSS idle MiB':>13} {'PSS with MiB':>13} "
        f"{'per conn KiB':>13} {'open s':>7}",
    ]
    for r in runs:
        lines.append(
            f"{r.server:<10} {r.processes_before:>6} -> {r.processes_with:>5} "
            f"{r.pss_before_kib / 1024:>13.1f} {r.pss_with_kib / 1024:>13.1f} "
            f"{r.per_connection_kib:>13.1f} {r.open_seconds:>7.1f}"
        )
    by = {r.server: r for r in runs}
    if "mailhouse" in by and "dovecot" in by:
        per = report.ratio(by["mailhouse"].per_connection_kib, by["dovecot"].per_connection_kib)
        total = report.ratio(by["mailhouse"].pss_with_kib, by["dovecot"].pss_with_kib)
        lines.append(
            f"ratio mailhouse/dovecot: {per:.2f}x per connection, {total:.2f}x in all "
            "(lower is better)"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> Params:
    parser = argparse.ArgumentParser(
        prog="bench.imap_memory",
        description="Memory of idle IMAP connections, mailhouse vs Dovecot (see the module doc).",
    )
    parser.add_argument("--connections", type=int, default=500, help="held at once (500)")
    parser.add_argument("--users", type=int, default=50, help="accounts they use (50)")
    parser.add_argument("--messages", type=int, default=20, help="per INBOX (20)")
    parser.add_argument("--mode", choices=("idle", "login"), default="idle")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds before reading PSS")
    parser.add_argument("--seed", type=int, default=500)
    parser.add_argument("--timeout", type=float, default=60.0, help="per reply (60 s)")
    add_server_option(parser)
    ns = parser.parse_args(argv)
    if not 1 <= ns.connections <= MAX_CONNECTIONS:
        parser.error(f"--connections: 1..{MAX_CONNECTIONS}")
    report.require_positive(parser, users=ns.users, messages=ns.messages)
    return Params(
        connections=ns.connections,
        users=min(ns.users, ns.connections),
        messages=min(ns.messages, 10_000),
        mode=ns.mode,
        settle=max(0.0, min(ns.settle, 60.0)),
        seed=ns.seed,
        servers=SERVER_CHOICES[ns.server],
        mailhouse_toml=ns.mailhouse_toml,
        timeout=ns.timeout,
    )


def main(argv: list[str] | None = None) -> int:
    params = parse_args(sys.argv[1:] if argv is None else argv)
    missing = missing_programs("dovecot", "openssl")
    if missing:
        print(f"imap_memory: {missing_reason(missing)}", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("imap_memory: run as root (a private Dovecot needs it)", file=sys.stderr)
        return 2
    limit = raise_fd_limit(params.connections)
    if limit != resource.RLIM_INFINITY and limit < params.connections + SPARE_FDS:
        print(f"imap_memory: RLIMIT_NOFILE {limit} is too low", file=sys.stderr)
        return 2

    report.exit_on_sigterm()  # so the finally below stops both servers
    install_uvloop(True)
    base = report.work_dir("mh-imapmem-", 0o755)
    users = users_for(params.users, prefix="idle")
    servers: ImapServers | None = None
    runs: list[Run] = []
    error: str | None = None
    try:
        servers = ImapServers(base, params.servers, users, params.mailhouse_toml)
        servers.fill(lambda user: mailbox(params.messages, user, params.seed))
        servers.start()
        for line in unavailable_lines(servers):
            print(line, flush=True)
        for name in (n for n in SERVERS if n in servers.sides):
            run = measure(servers.sides[name], users, params)
            runs.append(run)
            print(
                f"  {name:<10} {run.connections} connections open in {run.open_seconds:.1f}s: "
                f"{run.per_connection_kib:.0f} KiB each",
                flush=True,
            )
    except (BenchError, MailhouseError, DovecotError, OSError) as exc:
        error = f"{type(exc).__name__}: {exc}"
        print(f"imap_memory: {error}", file=sys.stderr)
    finally:
        if servers is not None:
            servers.close()

    text = table(runs, params)
    if servers is not None and servers.unavailable:
        text += "\n\n" + "\n".join(unavailable_lines(servers))
    if error:
        text += f"\n\nFAILED: {error.splitlines()[0]}"
    unavailable = servers.unavailable if servers is not None else {}
    RESULTS.publish(text, params, runs, base, error=error, unavailable=unavailable)
    failed = servers is None or exit_status(servers, error)
    return report.finish(base, failed)


if __name__ == "__main__":
    sys.exit(main())
