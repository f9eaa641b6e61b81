"""Greeting+EHLO latency while another connection floods the server (issue 7, "Done when").

The criterion measured: "one flooding connection cannot raise another client's greeting+EHLO
above 100 ms". A *probe* connects to 127.0.0.1, reads the whole 220 greeting, sends
``EHLO probe.bench.test`` and reads the EHLO reply up to its final ``250 `` line; its latency is
the time from ``connect()`` to that line (then QUIT, not timed). Probes run one after another,
alternating the MX port and the submission port (STARTTLS style: the greeting and EHLO are plain
text), a short gap between them, in these scenarios:

- ``baseline``: nothing else runs;
- ``flood-read xK``: K connections to the MX port each write ``NOOP\\r\\n`` pipelined as fast as
  the socket takes it, while reading (and discarding) the replies; when the server hangs up
  (the junk-command limit: after ``junk_command_limit`` NOOPs each further one counts toward
  ``max_errors``, then 421), the flooder reconnects at once. K = 1, and ``--flooders K`` too;
- ``flood-noread x1``: one connection to the MX port pipelines NOOPs and never reads a byte
  (the write-stall case: the server's replies back up), reconnecting when cut off.

Each scenario runs on two server configurations (``--limits``):

- ``default``: mailhouse as shipped. Its junk-command limit hangs up on a NOOP flooder after
  about 120 commands, so the flood is mostly a stream of new connections;
- ``lifted``: ``[limits] junk_command_limit`` = 10^9, so the flooder is never hung up: what is
  left protecting the probes is the transport alone (a bound on how many pipelined commands one
  connection is served per event-loop turn, the linear parser, and for the non-reading flooder
  the write-stall handling: reading paused while writes are backed up).

The flooders run in a child process (threads inside it, one per connection), so their Python
loops never hold the GIL of the process that times the probes; on a 2-vCPU machine they still
compete with the server for the CPUs, as a real attacker on the same host would.

Optional ``--postfix`` runs the same probes against a private Postfix 3.7 (tests/helpers/
postfix.py: smtpd on a loopback port, a second STARTTLS-required submission smtpd; for
``lifted``, ``smtpd_junk_command_limit`` = 10^9) for a ratio. Postfix forks one smtpd process
per connection and tarpits junk (``smtpd_error_sleep_time``), so it is the reference for
isolation, not for speed. Needs root.

Run from the repository root:
    python -m bench.flood_latency               # 50 probes per port and scenario
    python -m bench.flood_latency --quick       # 10 probes
    python -m bench.flood_latency --flooders 4 --limits default --postfix

The table gives median, p95 and max in ms per scenario and port, and PASS/FAIL of max and of
p95 against the 100 ms target (the target is on max; p95 is printed because one scheduling
hiccup on a shared 2-vCPU machine can make a single probe slow). It is a benchmark: the exit
status is 0 whatever the figures (1 only when a server could not be started). Results also go
to bench/results/flood_latency-YYYYmmdd-HHMMSS.{json,txt} (gitignored). Traffic goes to
127.0.0.1 only; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing
import os
import queue
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `bench` and `tests.helpers` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import report
from tests.helpers.mailhouse import MailhouseError, MailhouseServer
from tests.helpers.net import LOOPBACK
from tests.helpers.postfix import PostfixError, PostfixInstance, Submission
from tests.helpers.tools import missing_programs

TARGET_MS = 100.0
LIFTED_JUNK_LIMIT = 1_000_000_000
PROBE_EHLO = b"EHLO probe.bench.test\r\n"
NOOP = b"NOOP\r\n"
NOOP_CHUNK = NOOP * 512  # 3 KB per write: a pipelined burst
MAX_REPLY_BYTES = 65_536  # a probe gives up on a greeting or EHLO reply longer than this
FLOOD_CONNECT_TIMEOUT = 2.0
SEND_WAIT = 0.2  # seconds a non-reading flooder's blocked send waits before it looks at `stop`
FLOOD_MAX_CONNECTIONS = 200_000  # per flooder thread and scenario (time bounds it first)
FLOOD_SLACK = 60.0  # seconds a flooder may outlive its scenario's expected length
SETTLE = 0.5  # seconds between scenarios, so a cut-off flooder's connection is gone
LIMITS = ("default", "lifted")
PORTS = ("mx", "submission")


@dataclass(frozen=True)
class Params:
    samples: int  # probes per port and scenario
    flooders: int  # K for the extra flood-read scenario (1: only the x1 scenario)
    warmup: float  # seconds of flood before the first probe
    gap: float  # seconds between probes
    timeout: float  # seconds a probe may take before it counts as failed
    limits: tuple[str, ...]
    postfix: bool


@dataclass
class FloodStats:
    """What one flooder thread did during a scenario."""

    connections: int = 0
    connect_errors: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    replies: int = 0  # reply lines read (the reading flooder)
    stalled: float = 0.0  # seconds a send waited because the server was not reading us
    seconds: float = 0.0


@dataclass(frozen=True)
class Row:
    """One scenario on one port of one server: the probe latencies and the flood behind them."""

    server: str  # "mailhouse" | "postfix"
    limits: str  # "default" | "lifted"
    scenario: str  # "baseline" | "flood-read x1" | "flood-noread x1" ...
    port: str  # "mx" | "submission"
    latencies_ms: tuple[float, ...]
    failures: tuple[str, ...]
    flood: FloodStats | None
    busy: float  # share of the machine's CPUs busy during the scenario (0..1)

    @property
    def median(self) -> float:
        return report.median(self.latencies_ms)

    @property
    def p95(self) -> float:
        return percentile(self.latencies_ms, 95)

    @property
    def max(self) -> float:
        return max(self.latencies_ms, default=math.nan)


class ProbeError(RuntimeError):
    pass


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (an observed value; NaN for no values)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


# ---------------------------------------------------------------------- the probe


def read_reply(sock: socket.socket, buffer: bytearray, code: bytes, deadline: float) -> None:
    """Read lines until the final line of a `code` reply ("250 " after "250-" lines); raise
    ProbeError on another code, a closed connection, too many bytes or the deadline."""
    while True:
        while b"\n" in buffer:
            end = buffer.index(b"\n") + 1
            line = bytes(buffer[:end])
            del buffer[:end]
            if not line.startswith(code):
                raise ProbeError(f"expected {code.decode()}, got {line[:80]!r}")
            if line[3:4] != b"-":
                return
        if len(buffer) > MAX_REPLY_BYTES:
            raise ProbeError(f"{code.decode()} reply longer than {MAX_REPLY_BYTES} bytes")
        left = deadline - time.perf_counter()
        if left <= 0:
            raise ProbeError(f"no complete {code.decode()} reply in time")
        sock.settimeout(left)
        data = sock.recv(4096)
        if not data:
            raise ProbeError(f"connection closed waiting for {code.decode()}")
        buffer += data


def probe(port: int, timeout: float) -> float:
    """Seconds from connect() to the final line of the EHLO reply (QUIT afterwards, untimed)."""
    started = time.perf_counter()
    deadline = started + timeout
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
            buffer = bytearray()
            read_reply(sock, buffer, b"220", deadline)
            sock.sendall(PROBE_EHLO)
            read_reply(sock, buffer, b"250", deadline)
            elapsed = time.perf_counter() - started
            with contextlib.suppress(OSError, ProbeError):
                sock.sendall(b"QUIT\r\n")
                read_reply(sock, buffer, b"221", time.perf_counter() + timeout)
            return elapsed
    except OSError as exc:  # refused, reset, timed out
        raise ProbeError(f"{type(exc).__name__}: {exc}") from None


# ---------------------------------------------------------------------- the flooders


def flood_reading(port: int, stop: Event, stats: FloodStats, until: float) -> None:
    """Pipeline NOOPs whenever the socket takes more, read every reply; reconnect when cut off."""
    while not stop.is_set() and time.monotonic() < until:
        if stats.connections >= FLOOD_MAX_CONNECTIONS:
            return
        try:
            sock = socket.create_connection((LOOPBACK, port), timeout=FLOOD_CONNECT_TIMEOUT)
        except OSError:
            stats.connect_errors += 1
            stop.wait(0.01)
            continue
        stats.connections += 1
        sock.setblocking(False)
        out = bytearray()
        with sock, selectors.DefaultSelector() as selector:
            selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
            try:
                while not stop.is_set() and time.monotonic() < until:
                    for _key, events in selector.select(0.2):
                        if events & selectors.EVENT_READ:
                            data = sock.recv(65_536)
                            if not data:
                                raise ConnectionResetError("server hung up")
                            stats.bytes_received += len(data)
                            stats.replies += data.count(b"\n")
                        if events & selectors.EVENT_WRITE:
                            if not out:
                                out += NOOP_CHUNK  # whole commands, even after a partial send
                            sent = sock.send(out)
                            del out[:sent]
                            stats.bytes_sent += sent
            except OSError:
                continue  # cut off (421 and close, or reset): connect again


def flood_noread(port: int, stop: Event, stats: FloodStats, until: float) -> None:
    """Pipeline NOOPs and never read: the replies back up until the server stops reading us
    (or hangs up, and we connect again)."""
    while not stop.is_set() and time.monotonic() < until:
        if stats.connections >= FLOOD_MAX_CONNECTIONS:
            return
        try:
            sock = socket.create_connection((LOOPBACK, port), timeout=FLOOD_CONNECT_TIMEOUT)
        except OSError:
            stats.connect_errors += 1
            stop.wait(0.01)
            continue
        stats.connections += 1
        sock.settimeout(SEND_WAIT)  # a blocked send wakes up to look at `stop`
        view = memoryview(NOOP_CHUNK)
        offset = 0
        with sock:
            try:
                while not stop.is_set() and time.monotonic() < until:
                    try:
                        sent = sock.send(view[offset:])
                    except TimeoutError:
                        stats.stalled += SEND_WAIT  # the server is not reading us
                        continue
                    stats.bytes_sent += sent
                    offset = (offset + sent) % len(NOOP_CHUNK)
            except OSError:
                continue


def flood_process(
    port: int, mode: str, count: int, stop: Event, results: Queue[Any], seconds: float
) -> None:
    """The child process: `count` flooder threads until `stop` (at most `seconds`); then the
    stats of every thread on `results`."""
    target = flood_reading if mode == "read" else flood_noread
    started = time.monotonic()
    until = started + seconds
    stats = [FloodStats() for _ in range(count)]
    threads = [
        threading.Thread(target=target, args=(port, stop, s, until), daemon=True) for s in stats
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(0.0, until - time.monotonic()) + 5.0)
    elapsed = time.monotonic() - started
    for s in stats:
        s.seconds = elapsed
    results.put([asdict(s) for s in stats])


class Flood:
    """A flooder child process for one scenario (a context manager: stopped on exit)."""

    def __init__(self, port: int, mode: str, count: int, seconds: float) -> None:
        ctx = multiprocessing.get_context("fork")
        self.stop = ctx.Event()
        self.results: Queue[Any] = ctx.Queue()
        self.process = ctx.Process(
            target=flood_process,
            args=(port, mode, count, self.stop, self.results, seconds),
            daemon=True,
        )
        self.stats = FloodStats()

    def __enter__(self) -> Flood:
        self.process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        try:
            per_thread = self.results.get(timeout=15.0)
        except queue.Empty:  # the child died or hung: its stats are lost
            per_thread = []
        self.process.join(timeout=5.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5.0)
        for item in per_thread:
            one = FloodStats(**item)
            self.stats.connections += one.connections
            self.stats.connect_errors += one.connect_errors
            self.stats.bytes_sent += one.bytes_sent
            self.stats.bytes_received += one.bytes_received
            self.stats.replies += one.replies
            self.stats.stalled = max(self.stats.stalled, one.stalled)
            self.stats.seconds = max(self.stats.seconds, one.seconds)


# ---------------------------------------------------------------------- scenarios


def scenarios(params: Params) -> list[tuple[str, str | None, int]]:
    """(name, flood mode or None, flooders) in the order they run."""
    out: list[tuple[str, str | None, int]] = [("baseline", None, 0), ("flood-read x1", "read", 1)]
    if params.flooders > 1:
        out.append((f"flood-read x{params.flooders}", "read", params.flooders))
    out.append(("flood-noread x1", "noread", 1))
    return out


def run_scenario(
    server: str,
    limits: str,
    name: str,
    ports: dict[str, int],
    flood: tuple[str, int] | None,
    params: Params,
) -> list[Row]:
    """Probe both ports `samples` times each (alternating), behind a flood of the MX port."""
    latencies: dict[str, list[float]] = {p: [] for p in PORTS}
    failures: dict[str, list[str]] = {p: [] for p in PORTS}
    expected = params.warmup + params.samples * len(PORTS) * (params.gap + params.timeout)
    busy_before = report.cpu_times()
    flooder = Flood(ports["mx"], flood[0], flood[1], expected + FLOOD_SLACK) if flood else None
    with flooder if flooder is not None else contextlib.nullcontext():
        if flooder is not None:
            time.sleep(params.warmup)
        for _ in range(params.samples):
            for port in PORTS:
                try:
                    latencies[port].append(probe(ports[port], params.timeout) * 1000)
                except ProbeError as exc:
                    failures[port].append(str(exc))
                time.sleep(params.gap)
    busy = report.busy_share(busy_before, report.cpu_times())
    stats = flooder.stats if flooder is not None else None
    return [
        Row(server, limits, name, p, tuple(latencies[p]), tuple(failures[p]), stats, busy)
        for p in PORTS
    ]


def run_all(server: str, limits: str, ports: dict[str, int], params: Params) -> list[Row]:
    rows: list[Row] = []
    for name, mode, count in scenarios(params):
        flood = (mode, count) if mode is not None else None
        found = run_scenario(server, limits, name, ports, flood, params)
        for row in found:
            print(progress(row), flush=True)
        rows += found
        time.sleep(SETTLE)
    return rows


class LimitedMailhouse(MailhouseServer):
    """MailhouseServer with more keys in its [limits] table (the helper writes that table;
    a second one in extra_toml would be a TOML error)."""

    limits_toml = ""

    def config_text(self) -> str:
        text = super().config_text()
        head = "\n[limits]\n"
        if self.limits_toml and head in text:
            text = text.replace(head, head + self.limits_toml, 1)
        return text


def measure_mailhouse(base: Path, limits: str, params: Params) -> list[Row]:
    server = LimitedMailhouse(
        base / f"mailhouse-{limits}", protocols=("smtp", "submission"), hostname="mx.bench.test"
    )
    if limits == "lifted":
        server.limits_toml = f"junk_command_limit = {LIFTED_JUNK_LIMIT}\n"
        server.write_config()
    try:
        server.start()
        ports = {"mx": server.port("smtp"), "submission": server.port("submission")}
        print(f"mailhouse ({limits} limits) on {LOOPBACK}: MX {ports['mx']}, "
              f"submission {ports['submission']}", flush=True)
        return run_all("mailhouse", limits, ports, params)
    finally:
        server.close()


def measure_postfix(base: Path, limits: str, params: Params) -> list[Row]:
    extra = {"smtpd_junk_command_limit": str(LIFTED_JUNK_LIMIT)} if limits == "lifted" else {}
    postfix = PostfixInstance(
        myhostname="postfix.bench.test",
        extra_main=extra,
        submission=Submission(users={"probe@bench.test": "probe-password"}, implicit_tls=False),
    )
    try:
        postfix.start()
        assert postfix.submission_port is not None
        ports = {"mx": postfix.port, "submission": postfix.submission_port}
        print(f"Postfix ({limits} limits) on {LOOPBACK}: MX {ports['mx']}, "
              f"submission {ports['submission']}", flush=True)
        return run_all("postfix", limits, ports, params)
    finally:
        postfix.close()


# ---------------------------------------------------------------------- the report


def verdict(value: float) -> str:
    return "PASS" if value <= TARGET_MS else "FAIL"


def flood_text(stats: FloodStats | None) -> str:
    if stats is None:
        return ""
    seconds = max(stats.seconds, 1e-9)
    text = (
        f"{stats.connections:,} conn in {stats.seconds:.1f} s, "
        f"{stats.bytes_sent / 1e6:,.0f} MB written"
    )
    if stats.replies:
        text += f", {stats.replies / seconds:,.0f} replies/s read"
    if stats.stalled:
        text += f", stalled {stats.stalled:.1f} s"
    if stats.connect_errors:
        text += f", {stats.connect_errors} connect errors"
    return text


def progress(row: Row) -> str:
    fails = f", {len(row.failures)} failed" if row.failures else ""
    return (
        f"  {row.server:<9} {row.limits:<7} {row.scenario:<16} {row.port:<10}"
        f" median {row.median:7.1f}  p95 {row.p95:7.1f}  max {row.max:7.1f} ms{fails}"
    )


def source_commit() -> str:
    """The commit of the code measured (the server runs from this checkout's src/), with
    "+dirty" when src/ has uncommitted changes."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        try:
            done = subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short=12", "HEAD") or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--", "src") else "")


def table(rows: list[Row], params: Params, commit: str) -> str:
    head = (
        f"{'server':<10}{'limits':<8}{'scenario':<17}{'port':<11}{'n':>4}{'fail':>5}"
        f"{'median':>8}{'p95':>8}{'max':>8}  {'max<=100':<9}{'p95<=100':<9}{'busy':>5}  flood"
    )
    lines = [
        f"greeting+EHLO latency (ms), {params.samples} probes per port and scenario, "
        f"target {TARGET_MS:.0f} ms on max; commit {commit}",
        "",
        head,
    ]
    for row in rows:
        failed = bool(row.failures)
        lines.append(
            f"{row.server:<10}{row.limits:<8}{row.scenario:<17}{row.port:<11}"
            f"{len(row.latencies_ms):>4}{len(row.failures):>5}"
            f"{row.median:>8.1f}{row.p95:>8.1f}{row.max:>8.1f}  "
            f"{'FAIL' if failed else verdict(row.max):<9}"
            f"{'FAIL' if failed else verdict(row.p95):<9}"
            f"{row.busy * 100:>4.0f}%  {flood_text(row.flood) if row.port == 'mx' else ''}"
        )
    lines += ratio_lines(rows)
    failures = [(r, f) for r in rows for f in r.failures[:3]]
    if failures:
        lines += ["", "failed probes (first 3 per row):"]
        lines += [f"  {r.server} {r.limits} {r.scenario} {r.port}: {f}" for r, f in failures]
    lines += [
        "",
        "A failed probe (refused, reset, wrong reply, or over the probe timeout) fails its row.",
        "max is one probe: on a shared 2-vCPU machine a single scheduling hiccup shows there;",
        "p95 shows whether it is a pattern. busy = share of both CPUs busy during the scenario.",
    ]
    return "\n".join(lines)


def ratio_lines(rows: list[Row]) -> list[str]:
    """mailhouse / Postfix of the median and max, per limits, scenario and port (both ran)."""
    postfix = {(r.limits, r.scenario, r.port): r for r in rows if r.server == "postfix"}
    pairs = [
        (r, postfix[(r.limits, r.scenario, r.port)])
        for r in rows
        if r.server == "mailhouse" and (r.limits, r.scenario, r.port) in postfix
    ]
    if not pairs:
        return []
    lines = ["", "ratio mailhouse / Postfix (below 1: mailhouse answers faster)", ""]
    for mh, pf in pairs:
        lines.append(
            f"{mh.limits:<8}{mh.scenario:<17}{mh.port:<11}"
            f" median {report.ratio(mh.median, pf.median):5.2f}x"
            f"  max {report.ratio(mh.max, pf.max):5.2f}x"
        )
    return lines


# ---------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> Params:
    parser = argparse.ArgumentParser(
        description="Greeting+EHLO latency of probes on MX and submission while a connection "
        "floods the MX port with pipelined NOOPs (target: max <= 100 ms)."
    )
    parser.add_argument("--samples", type=int, default=50, help="probes per port and scenario")
    parser.add_argument("--quick", action="store_true", help="--samples 10, shorter warm-up")
    parser.add_argument(
        "--flooders", type=int, default=1, help="K: also a scenario with K flooding connections"
    )
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="seconds of flood before the first probe"
    )
    parser.add_argument("--gap", type=float, default=0.02, help="seconds between probes")
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="seconds before a probe counts as failed"
    )
    parser.add_argument(
        "--limits",
        default="default,lifted",
        help="comma-separated subset of default,lifted (lifted: junk-command limit 10^9)",
    )
    parser.add_argument(
        "--postfix", action="store_true", help="also probe a private Postfix (needs root)"
    )
    ns = parser.parse_args(argv)
    limits = report.parse_servers(
        parser, ns.limits, LIMITS, "--limits takes default, lifted or both"
    )
    samples = 10 if ns.quick else ns.samples
    report.require_positive(parser, samples=samples, flooders=ns.flooders)
    if ns.flooders > 90:
        parser.error("--flooders must stay below the per-address connection cap (100)")
    if not 0 < ns.timeout <= 60 or not 0 <= ns.gap <= 5 or not 0 <= ns.warmup <= 60:
        parser.error("--timeout must be in (0, 60], --gap in [0, 5], --warmup in [0, 60]")
    return Params(
        samples=samples,
        flooders=ns.flooders,
        warmup=min(ns.warmup, 0.5) if ns.quick else ns.warmup,
        gap=ns.gap,
        timeout=ns.timeout,
        limits=limits,
        postfix=ns.postfix,
    )


def main(argv: list[str] | None = None) -> int:
    params = parse_args(argv)
    servers = ["mailhouse"]
    if params.postfix:
        missing = missing_programs("postfix", "saslpasswd2", "openssl")
        if os.geteuid() != 0 or missing:
            why = "not root" if os.geteuid() != 0 else f"missing {', '.join(missing)}"
            print(f"flood_latency: --postfix skipped ({why})", file=sys.stderr)
        else:
            servers.append("postfix")
    report.exit_on_sigterm()
    base = report.work_dir("mh-flood-")
    rows: list[Row] = []
    try:
        for limits in params.limits:
            rows += measure_mailhouse(base, limits, params)
            if "postfix" in servers:
                rows += measure_postfix(base, limits, params)
    except (MailhouseError, PostfixError) as exc:
        print(f"flood_latency: {exc}", file=sys.stderr)
        return report.finish(base, failed=True, label="flood_latency: ")
    results = report.Results("flood_latency", tuple(servers), ("median", "p95", "max"))
    commit = source_commit()
    results.publish(table(rows, params, commit), params, rows, base, commit=commit)
    report.remove_tree(base)
    return 0


if __name__ == "__main__":
    sys.exit(main())
