"""IMAP load benchmark, mailhouse vs Dovecot 2.3, side by side in one run (issue 8, step 7).

C clients at once, each logging in to its own mailbox of N messages over implicit TLS (imaps,
RFC 8314) and running `--rounds` sessions one after another. A session is what a mail client
does when it opens and works in a mailbox:

    connect (TCP + TLS + greeting), LOGIN, SELECT INBOX,
    FETCH 1:* (FLAGS)                                   the flag resync
    UID FETCH 1:* (UID BODY.PEEK[HEADER.FIELDS (From To Subject Date Message-ID)])
    FETCH n BODY[]  x --bodies (random n)               reading messages (sets \\Seen)
    SEARCH UNSEEN, SEARCH FROM "<a last name>"
    STORE n +FLAGS (\\Seen)  x 2
    APPEND INBOX (\\Seen) {about 2 KB}                  a draft or a sent copy
    UID STORE <its APPENDUID> +FLAGS.SILENT (\\Deleted) (without UIDPLUS: NOOP, STORE *)
    EXPUNGE                                             must expunge exactly that message
    IDLE for --idle seconds, DONE
    LOGOUT

so every mailbox keeps N messages. Each client's random choices come from its own seeded rng,
so both servers get exactly the same commands. The load client is this module run as its own
process (``python -m bench.imap_load client ...``, asyncio with uvloop when installed, the raw
IMAP client of bench/imap_client.py): every tagged reply must be OK, SELECT must report N
messages, the FETCHes must answer for every message; anything else fails the run.

Figures per run: commands/s over the client's wall time (IDLE counted as one command; its wait
is part of the wall time, the same on both sides), and per command the latency p50/p95/p99
(send to tagged reply; IDLE: its time beyond the wait; connect: TCP + TLS handshake +
greeting), server CPU (every process of the server's session), client CPU, how busy the CPUs
were; then the ratio mailhouse/Dovecot of commands/s and of each command's p50 latency.

Before the measured runs, one unmeasured round per server (Dovecot builds its indexes then).

Run from the repository root, as root (Dovecot needs it):
    python -m bench.imap_load                       # -c 20 clients, -n 300 messages, 20 rounds
    python -m bench.imap_load --quick               # -c 4 -n 100 --rounds 2, a smoke run
    python -m bench.imap_load --server dovecot      # one side only (mailhouse | both)
    python -m bench.imap_load --repeat 3            # medians of 3 alternating runs
Results go to bench/results/imap_load-YYYYmmdd-HHMMSS.{json,txt} (gitignored). Exit 0 when
mailhouse does not serve IMAP yet (Dovecot's figures alone, the reason printed), 1 on any
other error. Network use: 127.0.0.0/8 only. Every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import random
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `bench` and `tests.helpers` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import report
from bench.imap_client import (
    ImapClientError,
    ImapConnection,
    client_context,
    install_uvloop,
    percentiles,
    quoted,
)
from bench.imap_mail import FROM_NAME, append_message, mailbox
from bench.imap_servers import (
    PASSWORD,
    PASSWORD_ENV,
    SERVER_CHOICES,
    SERVERS,
    ImapServers,
    Side,
    add_server_option,
    exit_status,
    unavailable_lines,
    users_for,
)
from tests.helpers.dovecot import DovecotError
from tests.helpers.mailhouse import MailhouseError
from tests.helpers.net import LOOPBACK
from tests.helpers.tools import missing_programs, missing_reason

RESULTS = report.Results("imap_load", ("dovecot", "mailhouse"), ("cmd_rate",))
MAX_CLIENTS = 500
MAX_MESSAGES = 100_000
OPS = (
    "connect", "login", "select", "fetch_flags", "fetch_headers", "fetch_body",
    "search_unseen", "search_from", "store_seen", "append", "store_deleted", "expunge", "idle",
    "logout",
)  # fmt: skip
HEADERS = b"UID FETCH 1:* (UID BODY.PEEK[HEADER.FIELDS (From To Subject Date Message-ID)])"
_EXISTS = re.compile(rb"^\* (\d+) EXISTS", re.IGNORECASE)


class BenchError(RuntimeError):
    pass


# ============================================================================ the load client


@dataclass(frozen=True)
class ClientConfig:
    host: str
    port: int
    users: tuple[str, ...]
    password: str
    expect: int  # messages each mailbox holds
    rounds: int = 1
    bodies: int = 5
    idle: float = 0.1
    seed: int = 8
    timeout: float = 60.0
    deadline: float = 900.0


def _exists(untagged: list[bytes]) -> int:
    for response in untagged:
        match = _EXISTS.match(response)
        if match:
            return int(match.group(1))
    raise ImapClientError("SELECT sent no EXISTS")


async def _session(
    config: ClientConfig, user: str, rng: random.Random, timings: dict[str, list[float]]
) -> int:
    """One session (see the module doc); the number of commands sent."""
    clock = time.perf_counter

    started = clock()
    conn = await ImapConnection.connect(config.host, config.port, client_context(), config.timeout)
    timings["connect"].append(clock() - started)
    commands = 0

    async def run(op: str, text: bytes, keep: bool = True) -> Any:
        nonlocal commands
        commands += 1
        started = clock()
        reply = await conn.command(text, keep=keep)
        timings[op].append(clock() - started)
        return reply

    try:
        await run("login", b"LOGIN %s %s" % (quoted(user), quoted(config.password)))
        exists = _exists((await run("select", b"SELECT INBOX")).untagged)
        if exists != config.expect:
            raise ImapClientError(f"{user}: SELECT says {exists} messages, not {config.expect}")
        for op, text in (("fetch_flags", b"FETCH 1:* (FLAGS)"), ("fetch_headers", HEADERS)):
            got = (await run(op, text, keep=False)).count
            if got < exists:
                raise ImapClientError(f"{user}: {text!r} answered {got} of {exists} messages")
        for _ in range(config.bodies):
            number = rng.randint(1, exists)
            if (await run("fetch_body", b"FETCH %d BODY[]" % number, keep=False)).count < 1:
                raise ImapClientError(f"{user}: FETCH {number} BODY[] sent nothing")
        await run("search_unseen", b"SEARCH UNSEEN")
        await run("search_from", b'SEARCH FROM "%s"' % FROM_NAME.encode())
        for _ in range(2):
            await run("store_seen", b"STORE %d +FLAGS (\\Seen)" % rng.randint(1, exists))
        commands += 1
        started = clock()
        draft = append_message(rng.randrange(10**9), user)
        appended = await conn.append(b"INBOX", b"\\Seen", draft)
        timings["append"].append(clock() - started)
        uid = appended.append_uid()
        if uid is not None:
            await run("store_deleted", b"UID STORE %d +FLAGS.SILENT (\\Deleted)" % uid)
        else:  # no UIDPLUS: make sure the session knows the new message, then mark the last
            commands += 1
            await conn.command(b"NOOP")
            await run("store_deleted", b"STORE * +FLAGS.SILENT (\\Deleted)")
        reply = await run("expunge", b"EXPUNGE")
        expunged = sum(1 for r in reply.untagged if r.upper().endswith(b" EXPUNGE\r\n"))
        if expunged != 1:
            raise ImapClientError(f"{user}: EXPUNGE expunged {expunged} messages, not 1")
        commands += 1
        timings["idle"].append(await conn.idle(config.idle))
        await run("logout", b"LOGOUT", keep=False)
    finally:
        conn.close()
    return commands


async def _run_clients(config: ClientConfig) -> dict[str, Any]:
    timings: dict[str, list[float]] = {op: [] for op in OPS}

    async def client(user: str) -> int:
        rng = random.Random(f"{config.seed}:{user}")
        return sum([await _session(config, user, rng, timings) for _ in range(config.rounds)])

    cpu0 = os.times()
    started = time.perf_counter()
    tasks = [asyncio.ensure_future(client(user)) for user in config.users]
    try:
        done = await asyncio.wait_for(asyncio.gather(*tasks), config.deadline)
    except TimeoutError:
        raise ImapClientError(f"the run did not finish within {config.deadline}s") from None
    finally:
        for task in tasks:
            task.cancel()
    wall = time.perf_counter() - started
    usage = os.times()
    return {
        "clients": len(config.users),
        "sessions": len(config.users) * config.rounds,
        "commands": sum(done),
        "wall": wall,
        "client_cpu": usage.user + usage.system - cpu0.user - cpu0.system,
        "ops": {op: percentiles(values) for op, values in timings.items() if values},
    }


def client_main(argv: list[str]) -> int:
    """``python -m bench.imap_load client HOST:PORT --users u1,u2 ...``: one JSON line out."""
    parser = argparse.ArgumentParser(prog="bench.imap_load client")
    parser.add_argument("address", help="127.0.0.1:PORT (implicit TLS)")
    parser.add_argument("--users", required=True, help="comma-separated logins, one client each")
    parser.add_argument("--password-env", default=PASSWORD_ENV)
    parser.add_argument("--expect", type=int, required=True, help="messages in each mailbox")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--bodies", type=int, default=5)
    parser.add_argument("--idle", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--deadline", type=float, default=900.0)
    parser.add_argument("--no-uvloop", action="store_true")
    ns = parser.parse_args(argv)
    host, _, port = ns.address.rpartition(":")
    users = tuple(u for u in ns.users.split(",") if u)
    if not 1 <= len(users) <= MAX_CLIENTS:
        parser.error(f"1..{MAX_CLIENTS} users")
    if not ipaddress.ip_address(host).is_loopback:
        parser.error(f"loopback addresses only, not {host}")
    config = ClientConfig(
        host=host,
        port=int(port),
        users=users,
        password=os.environ.get(ns.password_env, PASSWORD),
        expect=ns.expect,
        rounds=max(1, min(ns.rounds, 1000)),
        bodies=max(0, min(ns.bodies, 100)),
        idle=max(0.0, min(ns.idle, 60.0)),
        seed=ns.seed,
        timeout=ns.timeout,
        deadline=ns.deadline,
    )
    install_uvloop(not ns.no_uvloop)
    try:
        summary = asyncio.run(_run_clients(config))
    except (ImapClientError, OSError, ValueError) as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1
    print(json.dumps(summary))
    return 0


# ============================================================================ the benchmark


@dataclass(frozen=True)
class Params:
    clients: int
    messages: int
    rounds: int
    bodies: int
    idle: float
    repeat: int
    warmup: bool
    seed: int
    servers: tuple[str, ...]
    mailhouse_toml: str
    timeout: float
    deadline: float


@dataclass
class Run:
    server: str
    repeat: int
    sessions: int
    commands: int
    wall: float
    server_cpu: float
    client_cpu: float
    busy: float  # share of all CPUs busy during the run (0..1)
    ops: dict[str, dict[str, float]]  # op -> count, p50, p95, p99, max (seconds)

    @property
    def cmd_rate(self) -> float:
        return self.commands / self.wall if self.wall else 0.0


def load(side: Side, users: list[str], params: Params, rounds: int) -> dict[str, Any]:
    """Run the load client as its own process; its JSON summary (BenchError on any error)."""
    argv = [
        sys.executable, "-m", "bench.imap_load", "client", f"{LOOPBACK}:{side.port}",
        "--users", ",".join(users), "--expect", str(params.messages),
        "--rounds", str(rounds), "--bodies", str(params.bodies), "--idle", str(params.idle),
        "--seed", str(params.seed), "--timeout", str(params.timeout),
        "--deadline", str(params.deadline),
    ]  # fmt: skip
    env = {**os.environ, PASSWORD_ENV: PASSWORD}
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        out = subprocess.run(
            argv, capture_output=True, text=True, env=env, cwd=repo,
            timeout=params.deadline + 60, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{side.name}: load client still running after {exc.timeout}s") from None
    summary = report.json_summary(out.stdout)
    if out.returncode != 0 or "error" in summary or not summary:
        raise BenchError(
            f"{side.name}: load client failed (exit {out.returncode}): "
            f"{summary.get('error') or out.stdout[-2000:]}\n{out.stderr[-3000:]}\n"
            f"{side.diagnostics()}"
        )
    return summary


def measure(side: Side, users: list[str], params: Params, repeat: int) -> Run:
    server0, cpu0 = report.session_cpu(side.sid), report.cpu_times()
    summary = load(side, users, params, params.rounds)
    cpu1 = report.cpu_times()
    return Run(
        server=side.name,
        repeat=repeat,
        sessions=int(summary["sessions"]),
        commands=int(summary["commands"]),
        wall=float(summary["wall"]),
        server_cpu=report.session_cpu(side.sid) - server0,
        client_cpu=float(summary["client_cpu"]),
        busy=report.busy_share(cpu0, cpu1),
        ops=summary["ops"],
    )


def table(runs: list[Run], params: Params) -> str:
    lines = [
        f"IMAP load: {params.clients} clients x {params.rounds} sessions, {params.messages} "
        f"messages per mailbox, {params.bodies} bodies and {params.idle:g}s IDLE per session, "
        "implicit TLS",
        "",
        f"{'server':<10} {'rep':>3} {'sessions':>8} {'commands':>8} {'wall s':>7} {'cmd/s':>8} "
        f"{'srv CPU':>8} {'ms/cmd':>6} {'cli CPU':>8} {'busy':>5}",
    ]
    for r in runs:
        lines.append(
            f"{r.server:<10} {r.repeat:>3} {r.sessions:>8} {r.commands:>8} {r.wall:>7.2f} "
            f"{r.cmd_rate:>8,.0f} {r.server_cpu:>7.2f}s {r.server_cpu / r.commands * 1e3:>6.2f} "
            f"{r.client_cpu:>7.2f}s {r.busy:>5.0%}"
        )
    by = report.by_server(runs, SERVERS)
    if not by:
        return "\n".join(lines)
    rates = {name: report.median((r.cmd_rate for r in rs), 0.0) for name, rs in by.items()}
    lines.append("")
    for name, rate in rates.items():
        lines.append(f"{name:<10} median {rate:,.0f} commands/s")
    both = "mailhouse" in by and "dovecot" in by
    if both:
        lines.append(
            f"ratio mailhouse/dovecot: {report.ratio(rates['mailhouse'], rates['dovecot']):.2f}x "
            "commands/s (higher is better; target >= 1.0x)"
        )

    def pct(name: str, op: str, key: str) -> float:
        return report.median(r.ops[op][key] * 1e3 for r in by[name] if op in r.ops)

    head = f"{'latency ms':<14}" + "".join(f"{n + ' p50/p95/p99':>28}" for n in by)
    lines += ["", head + (f"{'p50 mh/dc':>11}" if both else "")]
    for op in OPS:
        row = f"{op:<14}"
        for name in by:
            row += f"{pct(name, op, 'p50'):>12.2f}{pct(name, op, 'p95'):>8.2f}"
            row += f"{pct(name, op, 'p99'):>8.2f}"
        if both:
            row += f"{report.ratio(pct('mailhouse', op, 'p50'), pct('dovecot', op, 'p50')):>10.2f}x"
        lines.append(row)
    if both:
        lines.append("(latency ratios: lower is better)")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> Params:
    parser = argparse.ArgumentParser(
        prog="bench.imap_load",
        description="IMAP load over implicit TLS, mailhouse vs Dovecot (see the module doc). "
        "`python -m bench.imap_load client --help` for the load client alone.",
    )
    parser.add_argument("-c", "--clients", type=int, default=20, help="concurrent clients (20)")
    parser.add_argument("-n", "--messages", type=int, default=300, help="per mailbox (300)")
    parser.add_argument("--rounds", type=int, default=20, help="sessions per client (20)")
    parser.add_argument("--bodies", type=int, default=5, help="FETCH BODY[] per session (5)")
    parser.add_argument("--idle", type=float, default=0.1, help="IDLE seconds per session")
    parser.add_argument("--repeat", type=int, default=1, help="alternating runs per server")
    parser.add_argument("--no-warmup", action="store_true", help="skip the unmeasured round")
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="-c 4 -n 100 --rounds 2")
    parser.add_argument("--timeout", type=float, default=60.0, help="per reply (60 s)")
    parser.add_argument("--deadline", type=float, default=900.0, help="per run (900 s)")
    add_server_option(parser)
    ns = parser.parse_args(argv)
    clients, messages, rounds = (4, 100, 2) if ns.quick else (ns.clients, ns.messages, ns.rounds)
    if not 1 <= clients <= MAX_CLIENTS:
        parser.error(f"--clients: 1..{MAX_CLIENTS}")
    if not 1 <= messages <= MAX_MESSAGES:
        parser.error(f"--messages: 1..{MAX_MESSAGES}")
    report.require_positive(parser, rounds=rounds, repeat=ns.repeat)
    return Params(
        clients=clients,
        messages=messages,
        rounds=min(rounds, 1000),
        bodies=max(0, min(ns.bodies, 100)),
        idle=max(0.0, min(ns.idle, 60.0)),
        repeat=min(ns.repeat, 20),
        warmup=not ns.no_warmup,
        seed=ns.seed,
        servers=SERVER_CHOICES[ns.server],
        mailhouse_toml=ns.mailhouse_toml,
        timeout=ns.timeout,
        deadline=ns.deadline,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["client"]:
        return client_main(argv[1:])
    params = parse_args(argv)
    missing = missing_programs("dovecot", "openssl")
    if missing:
        print(f"imap_load: {missing_reason(missing)}", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("imap_load: run as root (a private Dovecot needs it)", file=sys.stderr)
        return 2

    report.exit_on_sigterm()  # so the finally below stops both servers
    base = report.work_dir("mh-imapload-", 0o755)
    users = users_for(params.clients)
    servers: ImapServers | None = None
    runs: list[Run] = []
    error: str | None = None
    try:
        servers = ImapServers(base, params.servers, users, params.mailhouse_toml)
        count, octets = servers.fill(lambda user: mailbox(params.messages, user, params.seed))
        print(f"{count} messages, {octets / 1e6:.1f} MB in {len(users)} mailboxes; work dir {base}")
        servers.start()
        for line in unavailable_lines(servers):
            print(line, flush=True)
        sides = servers.sides
        if params.warmup:  # not measured: Dovecot's indexes, both servers' caches
            for side in sides.values():
                load(side, users, params, rounds=1)
        for repeat in range(1, params.repeat + 1):
            for name in (n for n in report.run_order(SERVERS, repeat) if n in sides):
                run = measure(sides[name], users, params, repeat)
                runs.append(run)
                print(
                    f"  {run.server:<10} repeat {repeat}: {run.cmd_rate:,.0f} commands/s "
                    f"({run.wall:.2f}s, server CPU {run.server_cpu:.2f}s, client CPU "
                    f"{run.client_cpu:.2f}s)",
                    flush=True,
                )
    except (BenchError, MailhouseError, DovecotError, ImapClientError, OSError) as exc:
        error = f"{type(exc).__name__}: {exc}"
        print(f"imap_load: {error}", file=sys.stderr)
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
