"""One big mailbox, mailhouse vs Dovecot 2.3, side by side in one run (issue 8, step 7).

One user whose INBOX holds `--messages` (100,000) generated messages (bench/imap_mail.py: a
mix of sizes and MIME structures, about 10 KB each, deterministic for `--seed`). Dovecot gets
them as Maildir files written directly (its first SELECT then builds its index: timed apart as
"SELECT (first)"); mailhouse gets the same files with ``mailhouse import --maildir``.

Then, per repeat and server (alternating who goes first), one implicit-TLS connection, LOGIN,
and each of these timed from sending the command to its tagged OK:

    SELECT INBOX
    UID FETCH 1:* (FLAGS)                               a client's flag resync
    UID FETCH 1:* (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Cc Bcc Subject
        Date Message-ID Priority X-Priority References Newsgroups In-Reply-To Content-Type
        Reply-To)])                                     Thunderbird's header download
    FETCH N-1999:* (UID BODYSTRUCTURE)                  the newest 2,000
    SEARCH SUBJECT "<word in 1 % of Subjects>"          a header search
    SEARCH TEXT "<word in 0.5 % of bodies>"             a full-text search (no FTS index)
    SORT (REVERSE DATE) UTF-8 ALL                       only if the server announces SORT
    STORE 1:* +FLAGS (\\Flagged)                        and back: STORE 1:* -FLAGS.SILENT

Every FETCH must answer for every message it names; the SEARCH hit counts are printed (both
servers should find the same). A command the server refuses with NO (as mailhouse refuses a
search past its ``search_content_limit`` with NO [LIMIT]) is shown as refused; a BAD, or a NO
to SELECT, fails the run. Figures: seconds per command per server (median over repeats),
the server's CPU seconds (its whole session) and the client's, and the ratio of the times
mailhouse/Dovecot (lower is better).

Run from the repository root, as root (Dovecot needs it):
    python -m bench.imap_big                        # 100,000 messages (about 1 GB per server)
    python -m bench.imap_big --messages 2000        # a quick check
    python -m bench.imap_big --server dovecot       # one side only (mailhouse | both)
Results go to bench/results/imap_big-YYYYmmdd-HHMMSS.{json,txt} (gitignored). Exit 0 when
mailhouse does not serve IMAP yet (Dovecot's figures alone, the reason printed), 1 on any other
error. Network use: 127.0.0.0/8 only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make `bench` and `tests.helpers` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import report
from bench.imap_client import ImapClientError, ImapConnection, client_context, install_uvloop
from bench.imap_mail import SUBJECT_WORD, TEXT_WORD, mailbox
from bench.imap_servers import DOMAIN as BENCH_DOMAIN
from bench.imap_servers import (
    PASSWORD,
    SERVER_CHOICES,
    SERVERS,
    ImapServers,
    Side,
    add_server_option,
    exit_status,
    unavailable_lines,
)
from tests.helpers.dovecot import DovecotError
from tests.helpers.mailhouse import MailhouseError
from tests.helpers.net import LOOPBACK
from tests.helpers.tools import missing_programs, missing_reason

RESULTS = report.Results("imap_big", ("dovecot", "mailhouse"), ())
USER = f"big0@{BENCH_DOMAIN}"
MAX_MESSAGES = 1_000_000
BODYSTRUCTURES = 2000  # the newest messages whose BODYSTRUCTURE is fetched
THUNDERBIRD_HEADERS = (
    b"UID FETCH 1:* (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Cc Bcc Subject "
    b"Date Message-ID Priority X-Priority References Newsgroups In-Reply-To Content-Type "
    b"Reply-To)])"
)
FIRST_SELECT = "SELECT (first)"
# (label, command, whether it must answer for every message); SORT and the BODYSTRUCTURE range
# are filled in per session.
COMMANDS: tuple[tuple[str, bytes, bool], ...] = (
    ("SELECT", b"SELECT INBOX", False),
    ("UID FETCH 1:* (FLAGS)", b"UID FETCH 1:* (FLAGS)", True),
    ("Thunderbird headers", THUNDERBIRD_HEADERS, True),
    (f"BODYSTRUCTURE newest {BODYSTRUCTURES}", b"", False),
    ("SEARCH SUBJECT", b'SEARCH SUBJECT "%s"' % SUBJECT_WORD.encode(), False),
    ("SEARCH TEXT", b'SEARCH TEXT "%s"' % TEXT_WORD.encode(), False),
    ("SORT (REVERSE DATE)", b"SORT (REVERSE DATE) UTF-8 ALL", False),
    ("STORE 1:* +FLAGS", b"STORE 1:* +FLAGS (\\Flagged)", True),
    ("STORE 1:* -FLAGS.SILENT", b"STORE 1:* -FLAGS.SILENT (\\Flagged)", False),
)
LABELS = (FIRST_SELECT, *(label for label, _, _ in COMMANDS))
_EXISTS = re.compile(rb"^\* (\d+) EXISTS", re.IGNORECASE | re.MULTILINE)


class BenchError(RuntimeError):
    pass


@dataclass(frozen=True)
class Params:
    messages: int
    repeat: int
    seed: int
    servers: tuple[str, ...]
    mailhouse_toml: str
    timeout: float


@dataclass
class Run:
    server: str
    repeat: int  # 0: the first SELECT
    command: str
    seconds: float
    server_cpu: float
    client_cpu: float
    responses: int  # untagged responses (SEARCH/SORT: hits)
    refused: str = ""  # a command the server refused with NO (e.g. [LIMIT]): its tagged reply


async def _session(side: Side, params: Params, repeat: int, first: bool) -> list[Run]:
    """One connection: LOGIN, then the commands (only SELECT when `first`), each timed."""
    conn = await ImapConnection.connect(LOOPBACK, side.port, client_context(), params.timeout)
    runs: list[Run] = []
    try:
        await conn.login(USER, PASSWORD)
        capabilities = (await conn.command(b"CAPABILITY")).untagged
        sort = any(b" SORT" in line.upper() for line in capabilities)
        exists = 0
        for label, command, every in COMMANDS[:1] if first else COMMANDS:
            if label.startswith("SORT") and not sort:
                continue
            if label.startswith("BODYSTRUCTURE"):
                command = b"FETCH %d:* (UID BODYSTRUCTURE)" % max(1, exists - BODYSTRUCTURES + 1)
            searching = label.startswith(("SEARCH", "SORT"))
            keep = label == "SELECT" or searching
            server0, client0 = report.session_cpu(side.sid), report.own_cpu()
            started = time.perf_counter()
            reply = await conn.command(command, keep=keep, check=False)
            seconds = time.perf_counter() - started
            if not reply.ok and (label == "SELECT" or reply.status != b"NO"):
                raise BenchError(f"{side.name}: {command[:60]!r} -> {reply.tagged[:300]!r}")
            server_cpu = report.session_cpu(side.sid) - server0
            client_cpu = report.own_cpu() - client0
            if label == "SELECT":
                match = _EXISTS.search(b"".join(reply.untagged))
                exists = int(match.group(1)) if match else 0
                if exists != params.messages:
                    raise BenchError(f"{side.name}: SELECT says {exists}, not {params.messages}")
            if every and reply.ok and reply.count < exists:
                raise BenchError(f"{side.name}: {label} answered {reply.count} of {exists}")
            responses = len(reply.search_numbers()) if searching else reply.count
            status = "" if reply.ok else reply.tagged.decode(errors="replace")[:200]
            runs.append(
                Run(side.name, 0 if first else repeat, FIRST_SELECT if first else label,
                    seconds, server_cpu, client_cpu, responses, status)
            )  # fmt: skip
        await conn.command(b"LOGOUT", keep=False)
    finally:
        conn.close()
    return runs


def session(side: Side, params: Params, repeat: int, first: bool = False) -> list[Run]:
    try:
        return asyncio.run(_session(side, params, repeat, first))
    except ImapClientError as exc:
        raise BenchError(f"{side.name}: {exc}\n{side.diagnostics()}") from None


def table(runs: list[Run], params: Params, octets: int) -> str:
    lines = [
        f"IMAP big mailbox: {params.messages:,} messages ({octets / 1e6:,.0f} MB) in one INBOX, "
        f"one implicit-TLS connection, median of {params.repeat} repeat(s)",
        "",
    ]
    by = report.by_server(runs, SERVERS)
    if not by:
        return "\n".join(lines)
    both = "mailhouse" in by and "dovecot" in by
    head = f"{'command':<34}"
    for name in by:
        head += f"{name + ' s':>14}{'srv CPU':>9}{'hits':>8}"
    lines.append(head + (f"{'time mh/dc':>12}" if both else ""))
    notes: list[str] = []
    for label in LABELS:
        row = f"{label:<34}"
        seconds: dict[str, float] = {}
        for name, mine in by.items():
            picked = [r for r in mine if r.command == label]
            if not picked:
                row += f"{'-':>14}{'':>9}{'':>8}"
                continue
            refused = [r.refused for r in picked if r.refused]
            if refused:
                notes.append(f"{name} refused {label}: {refused[0]}")
                row += f"{'refused':>14}{'':>9}{'NO':>8}"
                continue
            seconds[name] = report.median(r.seconds for r in picked)
            hits = str(picked[0].responses) if label.startswith(("SEARCH", "SORT")) else ""
            row += f"{seconds[name]:>14.3f}{report.median(r.server_cpu for r in picked):>8.2f}s"
            row += f"{hits:>8}"
        if both and len(seconds) == 2:
            row += f"{report.ratio(seconds['mailhouse'], seconds['dovecot']):>11.2f}x"
        lines.append(row)
    if both:
        lines.append("(time ratios: lower is better; target <= 1.0x)")
    return "\n".join(lines + notes)


def parse_args(argv: list[str] | None = None) -> Params:
    parser = argparse.ArgumentParser(
        prog="bench.imap_big",
        description="One 100,000-message mailbox over IMAP, mailhouse vs Dovecot "
        "(see the module doc).",
    )
    parser.add_argument("--messages", type=int, default=100_000, help="in the INBOX (100000)")
    parser.add_argument("--repeat", type=int, default=1, help="alternating sessions per server")
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=1800.0, help="per command (1800 s)")
    add_server_option(parser)
    ns = parser.parse_args(argv)
    if not 1 <= ns.messages <= MAX_MESSAGES:
        parser.error(f"--messages: 1..{MAX_MESSAGES}")
    report.require_positive(parser, repeat=ns.repeat)
    return Params(
        messages=ns.messages,
        repeat=min(ns.repeat, 20),
        seed=ns.seed,
        servers=SERVER_CHOICES[ns.server],
        mailhouse_toml=ns.mailhouse_toml,
        timeout=ns.timeout,
    )


def main(argv: list[str] | None = None) -> int:
    params = parse_args(sys.argv[1:] if argv is None else argv)
    missing = missing_programs("dovecot", "openssl")
    if missing:
        print(f"imap_big: {missing_reason(missing)}", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("imap_big: run as root (a private Dovecot needs it)", file=sys.stderr)
        return 2

    report.exit_on_sigterm()  # so the finally below stops both servers
    install_uvloop(True)
    base = report.work_dir("mh-imapbig-", 0o755)
    servers: ImapServers | None = None
    runs: list[Run] = []
    octets = 0
    error: str | None = None
    try:
        servers = ImapServers(base, params.servers, [USER], params.mailhouse_toml)
        started = time.monotonic()
        count, octets = servers.fill(lambda user: mailbox(params.messages, user, params.seed))
        imported = " (and imported into mailhouse)" if "mailhouse" in params.servers else ""
        print(
            f"{count:,} messages, {octets / 1e6:,.0f} MB written{imported} in "
            f"{time.monotonic() - started:.0f}s; work dir {base}",
            flush=True,
        )
        servers.start()
        for line in unavailable_lines(servers):
            print(line, flush=True)
        sides = servers.sides
        for name in (n for n in SERVERS if n in sides):
            runs += session(sides[name], params, 0, first=True)
            print(f"  {name:<10} {FIRST_SELECT}: {runs[-1].seconds:.3f}s", flush=True)
        for repeat in range(1, params.repeat + 1):
            for name in (n for n in report.run_order(SERVERS, repeat) if n in sides):
                done = session(sides[name], params, repeat)
                runs += done
                timings = ", ".join(f"{r.command} {r.seconds:.2f}s" for r in done)
                print(f"  {name:<10} repeat {repeat}: {timings}", flush=True)
    except (BenchError, MailhouseError, DovecotError, OSError) as exc:
        error = f"{type(exc).__name__}: {exc}"
        print(f"imap_big: {error}", file=sys.stderr)
    finally:
        if servers is not None:
            servers.close()

    text = table(runs, params, octets)
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
