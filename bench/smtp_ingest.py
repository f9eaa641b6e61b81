"""SMTP ingest, mailhouse vs Postfix, side by side in one run (bench/README.md).

Both servers run on this machine at the same time, each idle while the other is measured:

- mailhouse: a fresh data dir, domain bench.test with users user0..user9, MX listener on a free
  loopback port. A 250 after DATA means the message is durably in the recipient's mailbox, so
  its accepted rate is also its end-to-end rate.
- Postfix 3.7 (Debian): a private instance whose virtual(8) agent delivers bench.test to
  maildirs (``virtual_mailbox_domains/maps/base``, static uid), fsyncing each file. Its
  accepted rate counts the 250s (queue file fsynced); its end-to-end rate runs until the last
  message is a file in the maildir.

The load is Postfix's own generator, the same command against each:
``smtp-source -s 20 -m 5000 -l 4096 -f sender@load.test -t user0@bench.test 127.0.0.1:PORT``
(``-d`` with --reuse). smtp-source aborts on any non-2xx reply, so a clean exit means every
message got its 250; afterwards the mailhouse mailbox is exported and counted, and Postfix's
maildir is counted, to prove nothing was lost.

Run from the repository root, as root (Postfix needs it):
    python -m bench.smtp_ingest            # -s 20 -m 5000 -l 4096, one repeat
    python -m bench.smtp_ingest --quick    # -m 500
    python -m bench.smtp_ingest --repeat 3 --reuse
Results go to bench/results/ (gitignored) as JSON, and a table is printed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make `bench` and `tests.helpers` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import report
from tests.helpers.maildir import count_maildir
from tests.helpers.mailhouse import MailhouseServer
from tests.helpers.net import LOOPBACK
from tests.helpers.postfix import PostfixInstance
from tests.helpers.tools import missing_programs, missing_reason, program

DOMAIN = "bench.test"
USERS = [f"user{i}@{DOMAIN}" for i in range(10)]
TARGET_USER = USERS[0]  # measured runs
WARMUP_USER = USERS[-1]  # warm-up runs, kept out of the counts
SENDER = "sender@load.test"
SERVERS = ("mailhouse", "postfix")
RESULTS = report.Results(
    "smtp_ingest", ("postfix", "mailhouse"), ("accepted_rate", "delivered_rate")
)
WIDTHS = (12, 7, 17, 19)  # table columns: server, repeat, accepted, end-to-end


@dataclass(frozen=True)
class Params:
    sessions: int
    messages: int
    size: int
    repeat: int
    reuse: bool
    warmup: int
    drain_timeout: float
    servers: tuple[str, ...]

    def smtp_source_args(self, messages: int, recipient: str) -> list[str]:
        args = ["-s", str(self.sessions), "-m", str(messages), "-l", str(self.size)]
        if self.reuse:
            args.append("-d")
        return [*args, "-f", SENDER, "-t", recipient]


@dataclass(frozen=True)
class Run(report.Rates):
    server: str  # "mailhouse" | "postfix"
    repeat: int
    messages: int
    accept_seconds: float  # smtp-source wall time: every message got its 250
    deliver_seconds: float  # until the last message was in the mailbox


class BenchError(RuntimeError):
    pass


def smtp_source(port: int, args: list[str], timeout: float) -> float:
    """Run smtp-source against 127.0.0.1:port; return its wall time, raise on any failure."""
    argv = [program("smtp-source"), *args, f"{LOOPBACK}:{port}"]
    started = time.perf_counter()
    result = subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise BenchError(
            f"{' '.join(argv)} exited {result.returncode}:\n{result.stderr[-3000:]}"
        )
    return elapsed


def mailhouse_stored(server: MailhouseServer, address: str, tag: str) -> int:
    """Export `address` with the CLI and count the messages."""
    dest = server.base / "exports" / tag
    dest.parent.mkdir(parents=True, exist_ok=True)
    server.cli("export", address, "--maildir", str(dest), timeout=600)
    return count_maildir(dest)


def run_mailhouse(server: MailhouseServer, params: Params, repeat: int) -> Run:
    args = params.smtp_source_args(params.messages, TARGET_USER)
    elapsed = smtp_source(server.smtp_port, args, timeout=params.drain_timeout)
    # 250 means stored in the mailbox: accepted and delivered are the same moment.
    return Run("mailhouse", repeat, params.messages, elapsed, elapsed)


def run_postfix(postfix: PostfixInstance, params: Params, repeat: int) -> Run:
    postfix.clear_mailbox(TARGET_USER)
    args = params.smtp_source_args(params.messages, TARGET_USER)
    started = time.perf_counter()
    accept = smtp_source(postfix.port, args, timeout=params.drain_timeout)
    deadline = started + params.drain_timeout
    delivered = postfix.mailbox_count(TARGET_USER)
    while delivered < params.messages and time.perf_counter() < deadline:
        time.sleep(0.01)
        delivered = postfix.mailbox_count(TARGET_USER)
    finished = time.perf_counter()
    if delivered != params.messages:
        raise BenchError(
            f"Postfix delivered {delivered} of {params.messages} within "
            f"{params.drain_timeout}s ({postfix.pending_count()} still queued)\n"
            f"{postfix.maillog()[-3000:]}"
        )
    return Run("postfix", repeat, params.messages, accept, finished - started)


def warm_up(
    server: MailhouseServer | None, postfix: PostfixInstance | None, params: Params
) -> None:
    """A short run against each (to another user), so neither pays first-connection costs."""
    if params.warmup <= 0:
        return
    args = params.smtp_source_args(params.warmup, WARMUP_USER)
    if server is not None:
        smtp_source(server.smtp_port, args, timeout=params.drain_timeout)
    if postfix is not None:
        smtp_source(postfix.port, args, timeout=params.drain_timeout)
        deadline = time.monotonic() + params.drain_timeout
        while postfix.mailbox_count(WARMUP_USER) < params.warmup and time.monotonic() < deadline:
            time.sleep(0.05)


def table(runs: list[Run], params: Params, stored: dict[str, int]) -> str:
    """The side-by-side table: per repeat, then medians and the mailhouse/Postfix ratio."""
    mode = "connection reuse" if params.reuse else "new connection per message"
    lines = [
        f"smtp-source -s {params.sessions} -m {params.messages} -l {params.size}"
        f"{' -d' if params.reuse else ''}  ({mode}), {params.repeat} repeat(s)",
        "",
        report.rate_columns("server", "repeat", WIDTHS),
    ]
    for run in runs:
        lines.append(
            f"{run.server:<12}{run.repeat:>7}{run.accepted_rate:>17.0f}{run.delivered_rate:>19.0f}"
        )
    lines += report.rate_medians(runs, params.servers, WIDTHS, "postfix", "ratio mh/pf")
    lines.append("")
    if "mailhouse" in params.servers:
        lines += [
            "mailhouse: 250 = stored in the mailbox, so accepted = end-to-end.",
            f"  stored check: {stored['mailhouse']} of {stored['mailhouse_expected']} "
            "messages exported.",
        ]
    if "postfix" in params.servers:
        lines += [
            "Postfix: accepted = queue file fsynced; end-to-end = last file in the "
            "virtual(8) maildir.",
            f"  stored check: {stored['postfix']} of {params.messages} in the last run's maildir.",
        ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> Params:
    parser = argparse.ArgumentParser(
        description="SMTP ingest benchmark: mailhouse vs Postfix, side by side, one run."
    )
    parser.add_argument("-s", "--sessions", type=int, default=20, help="parallel sessions")
    parser.add_argument("-m", "--messages", type=int, default=5000, help="messages per run")
    parser.add_argument("-l", "--size", type=int, default=4096, help="payload bytes")
    parser.add_argument("--repeat", type=int, default=1, help="runs per server (alternating)")
    parser.add_argument("--reuse", action="store_true", help="smtp-source -d (keep connection)")
    parser.add_argument("--quick", action="store_true", help="-m 500 (smoke run)")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up messages (0: none)")
    parser.add_argument(
        "--drain-timeout", type=float, default=600.0, help="seconds allowed per run"
    )
    parser.add_argument(
        "--servers",
        default="mailhouse,postfix",
        help="comma-separated subset of mailhouse,postfix (default: both)",
    )
    ns = parser.parse_args(argv)
    servers = report.parse_servers(
        parser, ns.servers, SERVERS, "--servers takes mailhouse, postfix or both"
    )
    messages = 500 if ns.quick else ns.messages
    report.require_positive(parser, sessions=ns.sessions, messages=messages, repeat=ns.repeat)
    return Params(
        sessions=ns.sessions,
        messages=messages,
        size=ns.size,
        repeat=ns.repeat,
        reuse=ns.reuse,
        warmup=min(ns.warmup, messages),
        drain_timeout=ns.drain_timeout,
        servers=servers,
    )


def main(argv: list[str] | None = None) -> int:
    params = parse_args(argv)
    use_mailhouse = "mailhouse" in params.servers
    use_postfix = "postfix" in params.servers
    missing = missing_programs("smtp-source", *(("postfix", "postqueue") if use_postfix else ()))
    if missing:
        print(f"smtp_ingest: {missing_reason(missing)}", file=sys.stderr)
        return 2
    if use_postfix and os.geteuid() != 0:
        print("smtp_ingest: run as root (a private Postfix needs it)", file=sys.stderr)
        return 2

    base = report.work_dir("mh-bench-")
    server = MailhouseServer(base / "mailhouse", hostname="mx.bench.test")
    postfix = PostfixInstance(mailboxes=USERS, myhostname="postfix.bench.test")
    runs: list[Run] = []
    stored = {"mailhouse": 0, "mailhouse_expected": 0, "postfix": 0}
    try:
        if use_mailhouse:
            server.add_domain(DOMAIN)
            for user in USERS:
                server.add_user(user, "bench-password")
            server.start()
            print(f"mailhouse on {LOOPBACK}:{server.smtp_port}", flush=True)
        if use_postfix:
            postfix.start()
            print(f"Postfix on {LOOPBACK}:{postfix.port}", flush=True)
        warm_up(server if use_mailhouse else None, postfix if use_postfix else None, params)
        for repeat in range(1, params.repeat + 1):
            for name in (n for n in report.run_order(SERVERS, repeat) if n in params.servers):
                run = (
                    run_mailhouse(server, params, repeat)
                    if name == "mailhouse"
                    else run_postfix(postfix, params, repeat)
                )
                runs.append(run)
                print(report.rate_progress(run), flush=True)
        if use_mailhouse:
            stored["mailhouse"] = mailhouse_stored(server, TARGET_USER, "final")
            stored["mailhouse_expected"] = params.messages * params.repeat
        if use_postfix:
            stored["postfix"] = postfix.mailbox_count(TARGET_USER)
    except BenchError as exc:
        print(f"smtp_ingest: {exc}", file=sys.stderr)
        print(server.log_tail(30), file=sys.stderr)
        return 1
    finally:
        server.close()
        postfix.close()

    RESULTS.publish(table(runs, params, stored), params, runs, base, stored=stored)
    lost = stored["mailhouse_expected"] - stored["mailhouse"]
    if lost > 0 or (use_postfix and stored["postfix"] != params.messages):
        print(
            f"smtp_ingest: LOST MESSAGES: mailhouse {lost}, Postfix "
            f"{params.messages - stored['postfix'] if use_postfix else 0}",
            file=sys.stderr,
        )
        return 1
    report.remove_tree(base)
    return 0


if __name__ == "__main__":
    sys.exit(main())
