"""Relay benchmark, mailhouse vs Postfix, side by side in one run: authenticated submission over
TLS -> durable queue -> remote SMTP delivery into Postfix's smtp-sink (issue 3, item 8).

Both servers do the same job on this machine, each idle while the other is measured:

- mailhouse: ``python -m mailhouse serve`` with only the ``submissions`` listener (implicit TLS,
  RFC 8314; ``--tls starttls`` uses ``submission`` instead), domain bench.test with the user
  sender@bench.test made with the CLI, ``[delivery] port`` = its sink's port, ``[dns]`` pointing
  at a test DNS server (tests/helpers/dns.py) that says sink.test's MX is mx.sink.test ->
  127.0.0.2, and ``[dkim] enabled = false`` (Postfix does not sign; ``--dkim`` turns signing on).
- Postfix 3.7 (Debian): a private instance (tests/helpers/postfix.py) with a submission smtpd
  that requires Cyrus SASL AUTH (sasldb) over TLS and the sender to be the login, relaying
  everything through its queue (qmgr, smtp(8)) to ``relayhost = [127.0.0.2]:PORT``.
- Each has its own ``smtp-sink`` on 127.0.0.2 (bench/sink.py), which counts messages live and
  dumps them, so every message can be checked by its Message-ID. Both servers use the same
  certificate (RSA 2048), so TLS costs both the same.

The load is bench/loadgen.py, run as its own process, the same command against each: S sessions
sending M messages of L bytes, a new connection per message (--reuse: one per session), TLS,
``AUTH PLAIN sender@bench.test``, MAIL/RCPT/DATA, From sender@bench.test to rcpt@sink.test. It
fails on any reply other than the expected one.

Figures per run:
- accepted msg/s: messages / load-generator wall time (every message got its 250, i.e. is in
  the server's durable queue).
- end-to-end msg/s: messages / (time the sink's counter reached the run's last message - the
  load generator's start).
Afterwards the sink dumps are read: every Message-ID sent must have arrived exactly once, else
the run exits 1 (LOST or DUPLICATED).

Run from the repository root, as root (Postfix needs it):
    python -m bench.smtp_relay                 # -s 20 -m 2000 -l 4096, one repeat each
    python -m bench.smtp_relay --quick         # -m 200, a smoke run
    python -m bench.smtp_relay --repeat 3 --reuse
Results go to bench/results/ (gitignored) as JSON and text, and a table is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `bench` and `tests.helpers` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import report
from bench.sink import SinkError, SmtpSink
from tests.helpers.mailhouse import MailhouseError, MailhouseServer
from tests.helpers.net import LOOPBACK
from tests.helpers.postfix import PostfixError, PostfixInstance, Submission, make_self_signed
from tests.helpers.tools import missing_programs, missing_reason

DOMAIN = "bench.test"
SENDER = f"sender@{DOMAIN}"
RECIPIENT = "rcpt@sink.test"
SINK_DOMAIN = "sink.test"
SINK_MX = "mx.sink.test"
PASSWORD = "bench-relay-password"  # a throwaway account on a loopback-only test server
PASSWORD_ENV = "MH_BENCH_PASSWORD"
REPO = Path(__file__).resolve().parents[1]
SERVERS = ("mailhouse", "postfix")
RESULTS = report.Results(
    "smtp_relay", ("postfix", "mailhouse"), ("accepted_rate", "delivered_rate")
)
WIDTHS = (11, 7, 16, 18)  # table columns: server, repeat, accepted, end-to-end


@dataclass(frozen=True)
class Params:
    sessions: int
    messages: int
    size: int
    repeat: int
    reuse: bool
    pipelining: bool
    tls: str  # "implicit" | "starttls"
    dkim: bool
    warmup: int
    drain_timeout: float
    sink_host: str
    servers: tuple[str, ...]
    profile: bool = False  # py-spy record mailhouse during the measured runs

    def describe(self) -> str:
        mode = "connection reuse" if self.reuse else "new connection per message"
        tls = "implicit TLS (465 style)" if self.tls == "implicit" else "STARTTLS (587 style)"
        extra = ", PIPELINING" if self.pipelining else ""
        return (
            f"loadgen -s {self.sessions} -m {self.messages} -l {self.size}: {tls} + AUTH PLAIN,"
            f" {mode}{extra}; mailhouse DKIM {'on' if self.dkim else 'off'};"
            f" {self.repeat} repeat(s)"
        )


@dataclass
class Run(report.Rates):
    server: str
    repeat: int
    messages: int
    accept_seconds: float  # load generator wall time (every message got its 250)
    deliver_seconds: float  # load generator start -> sink counted the run's last message
    client_cpu_seconds: float  # the load generator's user+sys CPU
    server_cpu_seconds: float  # the server's processes (its session), user+sys
    harness_cpu_seconds: float  # this process: the test DNS server thread, sink counters
    machine_busy: float  # share of all CPUs busy during the run (0..1), from /proc/stat
    latency_ms: dict[str, float] = field(default_factory=dict)


class BenchError(RuntimeError):
    pass


# ---------------------------------------------------------------------- helpers


def loadgen(port: int, params: Params, messages: int, tag: str, timeout: float) -> dict[str, Any]:
    """Run bench/loadgen.py as a process against 127.0.0.1:port; its JSON summary, plus the
    monotonic time it was started and its CPU time. Raises BenchError on any failure."""
    argv = [
        sys.executable, "-m", "bench.loadgen", f"{LOOPBACK}:{port}",
        "-s", str(params.sessions), "-m", str(messages), "-l", str(params.size),
        "--tls", params.tls, "--user", SENDER, "--password-env", PASSWORD_ENV,
        "-f", SENDER, "-t", RECIPIENT, "--tag", tag, "--json",
        "--deadline", str(timeout),
    ]  # fmt: skip
    if params.reuse:
        argv.append("--reuse")
    if params.pipelining:
        argv.append("--pipelining")
    env = {**os.environ, PASSWORD_ENV: PASSWORD}
    cpu_before = report.children_cpu()
    started = time.monotonic()
    try:
        result = subprocess.run(
            argv,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout + 30,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"load generator still running after {timeout + 30}s") from exc
    cpu = report.children_cpu() - cpu_before
    summary = report.json_summary(result.stdout)
    if result.returncode != 0 or summary.get("error"):
        raise BenchError(
            f"load generator failed (exit {result.returncode}): "
            f"{summary.get('error') or result.stderr.strip()[-3000:]}"
        )
    summary["started"] = started
    summary["cpu"] = cpu
    return summary


class DnsZone:
    """The test DNS server (tests/helpers/dns.py, a thread in this process):
    sink.test MX 10 mx.sink.test, mx.sink.test A <sink host>."""

    def __init__(self, sink_host: str) -> None:
        from tests.helpers.dns import DnsServer

        self.server = DnsServer(
            {
                SINK_DOMAIN: {"MX": [(10, SINK_MX)]},
                SINK_MX: {"A": [sink_host]},
            }
        )

    def start(self) -> None:
        self.server.start()

    @property
    def address(self) -> str:
        return self.server.nameserver

    def close(self) -> None:
        self.server.stop()


def mailhouse_toml(params: Params, sink: SmtpSink, dns: str, cert: Path, key: Path) -> str:
    return "\n".join(
        [
            "[tls]",
            f"cert = {json.dumps(str(cert))}",
            f"key = {json.dumps(str(key))}",
            "",
            "[delivery]",
            f"port = {sink.port}",
            "",
            "[dns]",
            f"nameservers = [{json.dumps(dns)}]",
            "",
            "[dkim]",
            f"enabled = {'true' if params.dkim else 'false'}",
            "",
        ]
    )


def mailhouse_queue(server: MailhouseServer) -> str:
    """`mailhouse queue list` output (for diagnostics), never raising."""
    try:
        result = server.cli("queue", "list", check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"(queue list failed: {exc})"
    out = (result.stdout + result.stderr).decode(errors="replace")
    return out[-3000:] or "(empty output)"


# ---------------------------------------------------------------------- one run


class Side:
    """One server under test with its sink: how to submit to it and how to diagnose it."""

    def __init__(
        self,
        name: str,
        port: Callable[[], int],
        sink: SmtpSink,
        diagnose: Callable[[], str],
        session_id: Callable[[], int | None],
    ) -> None:
        self.name = name
        self.port = port
        self.session_id = session_id
        self.sink = sink
        self.diagnose = diagnose
        self.tags: list[tuple[str, int]] = []  # (tag, messages) of every batch sent

    def batch(self, params: Params, messages: int, tag: str) -> tuple[dict[str, Any], float]:
        """Send one batch; wait until the sink has all of it. (loadgen summary, e2e seconds)"""
        target = self.sink.count + messages
        self.sink.arm(target)
        summary = loadgen(self.port(), params, messages, tag, params.drain_timeout)
        self.tags.append((tag, messages))  # every message of it got its 250
        if not self.sink.wait_for(target, params.drain_timeout):
            raise BenchError(
                f"{self.name}: the sink has {self.sink.count} of {target} messages "
                f"{params.drain_timeout}s after the batch {tag!r}\n{self.diagnose()}"
            )
        reached = self.sink.reached_at
        assert reached is not None
        return summary, reached - float(summary["started"])

    def server_cpu(self) -> float:
        sid = self.session_id()
        return report.session_cpu(sid) if sid is not None else float("nan")

    def run(self, params: Params, repeat: int) -> Run:
        profiler = self.start_profiler(params, repeat)
        cpu0 = report.cpu_times()
        server0, harness0 = self.server_cpu(), report.own_cpu()
        try:
            summary, e2e = self.batch(params, params.messages, f"{self.name}-r{repeat}")
        finally:
            server1, harness1 = self.server_cpu(), report.own_cpu()
            cpu1 = report.cpu_times()
            stop_profiler(profiler)
        return Run(
            server=self.name,
            repeat=repeat,
            messages=params.messages,
            accept_seconds=float(summary["seconds"]),
            deliver_seconds=e2e,
            client_cpu_seconds=float(summary["cpu"]),
            server_cpu_seconds=server1 - server0,
            harness_cpu_seconds=harness1 - harness0,
            machine_busy=report.busy_share(cpu0, cpu1),
            latency_ms=dict(summary.get("latency_ms") or {}),
        )

    def start_profiler(self, params: Params, repeat: int) -> subprocess.Popen[bytes] | None:
        """py-spy on mailhouse (--profile): folded stacks, one line per stack with its count."""
        pid = self.session_id()
        if not params.profile or self.name != "mailhouse" or pid is None:
            return None
        report.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        out = RESULTS.path(report.stamp(), f"-{self.name}-r{repeat}")
        argv = [
            "py-spy", "record", "--pid", str(pid), "--rate", "250", "--format", "raw",
            "--threads", "--subprocesses", "--output", f"{out}.folded", "--nonblocking",
        ]  # fmt: skip
        try:
            profiler = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
        except FileNotFoundError:
            print("smtp_relay: --profile needs py-spy (pip install py-spy)", file=sys.stderr)
            return None
        time.sleep(0.5)  # let it attach
        return profiler

    def check(self) -> dict[str, Any]:
        """Every Message-ID sent must be in the sink's dump exactly once."""
        seen = self.sink.message_ids()
        expected = {
            f"<{tag}.{n}@{DOMAIN}>" for tag, count in self.tags for n in range(1, count + 1)
        }
        missing = sorted(expected - set(seen))
        duplicated = sorted(mid for mid in expected if seen.get(mid, 0) > 1)
        unexpected = sorted(set(seen) - expected)
        return {
            "sent": len(expected),
            "arrived": sum(1 for mid in expected if mid in seen),
            "sink_counter": self.sink.count,
            "missing": len(missing),
            "duplicated": len(duplicated),
            "unexpected": len(unexpected),
            "examples": (missing + duplicated + unexpected)[:10],
        }


def stop_profiler(profiler: subprocess.Popen[bytes] | None) -> None:
    """SIGINT makes py-spy write its output; bounded wait, then kill."""
    if profiler is None:
        return
    profiler.send_signal(signal.SIGINT)
    try:
        profiler.wait(timeout=30)
    except subprocess.TimeoutExpired:
        profiler.kill()
        profiler.wait(timeout=5)


# ---------------------------------------------------------------------- report


def table(runs: list[Run], params: Params, checks: dict[str, dict[str, Any]]) -> str:
    lines = [
        params.describe(),
        "",
        report.rate_columns("server", "repeat", WIDTHS)
        + f"{'p50/p99 ms':>12}{'server CPU':>12}{'client CPU':>12}{'harness CPU':>13}"
        f"{'CPUs busy':>11}",
    ]
    for run in runs:
        lat = run.latency_ms
        latency = f"{lat.get('p50', 0):.0f}/{lat.get('p99', 0):.0f}" if lat else "-"
        per_msg = 1000.0 / run.messages
        lines.append(
            f"{run.server:<11}{run.repeat:>7}{run.accepted_rate:>16.0f}"
            f"{run.delivered_rate:>18.0f}{latency:>12}"
            f"{run.server_cpu_seconds * per_msg:>9.2f} ms"
            f"{run.client_cpu_seconds * per_msg:>9.2f} ms"
            f"{run.harness_cpu_seconds * per_msg:>10.2f} ms"
            f"{run.machine_busy:>10.0%}"
        )
    lines += report.rate_medians(runs, params.servers, WIDTHS, "postfix", "ratio mh/pf")
    lines += [
        "",
        "CPU columns: user+sys CPU time per message of the server's processes, of the load"
        " generator, and of this harness (the test DNS server mailhouse queries, the sink"
        " counters); CPUs busy: all CPUs of the machine during the run.",
    ]
    for name, check in checks.items():
        lines.append(
            f"sink check {name}: {check['arrived']} of {check['sent']} Message-IDs arrived"
            f" (missing {check['missing']}, duplicated {check['duplicated']},"
            f" unexpected {check['unexpected']}; sink counter {check['sink_counter']},"
            " warm-up included)"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> Params:
    parser = argparse.ArgumentParser(
        prog="python -m bench.smtp_relay",
        description="Relay benchmark (submission -> queue -> smtp-sink): mailhouse vs Postfix.",
    )
    parser.add_argument("-s", "--sessions", type=int, default=20, help="concurrent sessions")
    parser.add_argument("-m", "--messages", type=int, default=2000, help="messages per run")
    parser.add_argument("-l", "--size", type=int, default=4096, help="message bytes")
    parser.add_argument("--repeat", type=int, default=1, help="runs per server (alternating)")
    parser.add_argument("--reuse", action="store_true", help="one connection per session")
    parser.add_argument("--pipelining", action="store_true", help="loadgen --pipelining")
    parser.add_argument("--tls", choices=("implicit", "starttls"), default="implicit")
    parser.add_argument("--dkim", action="store_true", help="mailhouse signs (Postfix does not)")
    parser.add_argument("--quick", action="store_true", help="-m 200 (a smoke run)")
    parser.add_argument("--warmup", type=int, default=100, help="warm-up messages (0: none)")
    parser.add_argument(
        "--drain-timeout", type=float, default=600.0, help="seconds allowed per batch"
    )
    parser.add_argument("--sink-host", default="127.0.0.2", help="loopback address of sinks")
    parser.add_argument(
        "--servers", default="mailhouse,postfix", help="comma-separated subset (default: both)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy record mailhouse during measured runs (folded stacks in bench/results/)",
    )
    ns = parser.parse_args(argv)
    servers = report.parse_servers(
        parser, ns.servers, SERVERS, "--servers takes mailhouse, postfix or both"
    )
    messages = 200 if ns.quick else ns.messages
    report.require_positive(
        parser, sessions=ns.sessions, messages=messages, repeat=ns.repeat, size=ns.size
    )
    if not ns.sink_host.startswith("127."):
        parser.error("--sink-host must be a 127.0.0.0/8 address")
    return Params(
        sessions=ns.sessions,
        messages=messages,
        size=ns.size,
        repeat=ns.repeat,
        reuse=ns.reuse,
        pipelining=ns.pipelining,
        tls=ns.tls,
        dkim=ns.dkim,
        warmup=max(0, min(ns.warmup, messages)),
        drain_timeout=ns.drain_timeout,
        sink_host=ns.sink_host,
        servers=servers,
        profile=ns.profile,
    )


def main(argv: list[str] | None = None) -> int:
    params = parse_args(argv)
    use_mailhouse = "mailhouse" in params.servers
    use_postfix = "postfix" in params.servers
    needed = ["smtp-sink", "openssl"]
    if use_postfix:
        needed += ["postfix", "postconf", "saslpasswd2"]
    missing = missing_programs(*needed)
    if missing:
        reason = missing_reason(missing)
        if "saslpasswd2" in missing:
            reason += "; saslpasswd2 is in the Debian package sasl2-bin"
        print(f"smtp_relay: {reason}", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print(
            "smtp_relay: run as root (a private Postfix and smtp-sink -u need it)", file=sys.stderr
        )
        return 2

    report.exit_on_sigterm()  # so the finally below stops Postfix, mailhouse and the sinks
    base = report.work_dir("mh-relay-", 0o755)
    cert, key = base / "tls" / "cert.pem", base / "tls" / "key.pem"
    make_self_signed(cert, key, DOMAIN)
    sinks = {name: SmtpSink(base / f"sink-{name}", params.sink_host) for name in params.servers}
    dns: DnsZone | None = None
    server: MailhouseServer | None = None
    postfix: PostfixInstance | None = None
    sides: dict[str, Side] = {}
    runs: list[Run] = []
    failed = False
    try:
        for sink in sinks.values():
            sink.start()
        if use_mailhouse:
            dns = DnsZone(params.sink_host)
            dns.start()
            listener = "submissions" if params.tls == "implicit" else "submission"
            mh_sink = sinks["mailhouse"]
            server = MailhouseServer(
                base / "mailhouse",
                protocols=(listener,),
                hostname="mx.bench.test",
                extra_toml=mailhouse_toml(params, mh_sink, dns.address, cert, key),
            )
            server.add_domain(DOMAIN)
            server.add_user(SENDER, PASSWORD)
            server.start()
            mh = server
            sides["mailhouse"] = Side(
                "mailhouse",
                lambda: mh.port(listener),
                mh_sink,
                lambda: f"{mh.log_tail(40)}\nqueue list:\n{mailhouse_queue(mh)}",
                lambda: mh.process.pid if mh.process is not None else None,  # own session
            )
            print(
                f"mailhouse {listener} on {LOOPBACK}:{mh.port(listener)}, "
                f"sink {params.sink_host}:{mh_sink.port}, DNS {dns.address}",
                flush=True,
            )
        if use_postfix:
            pf_sink = sinks["postfix"]
            postfix = PostfixInstance(
                myhostname="postfix.bench.test",
                relayhost=(params.sink_host, pf_sink.port),
                submission=Submission(
                    users={SENDER: PASSWORD},
                    implicit_tls=params.tls == "implicit",
                    cert_file=cert,
                    key_file=key,
                ),
            )
            postfix.start()
            pf = postfix
            assert pf.submission_port is not None
            pf_port = pf.submission_port
            sides["postfix"] = Side(
                "postfix",
                lambda: pf_port,
                pf_sink,
                lambda: f"queued: {pf.pending_count()}\nmaillog:\n{pf.maillog()[-3000:]}",
                pf.master_pid,  # master runs in a session of its own, with every daemon
            )
            print(
                f"Postfix submission on {LOOPBACK}:{pf_port}, "
                f"sink {params.sink_host}:{pf_sink.port}",
                flush=True,
            )
        if params.warmup:
            for side in sides.values():
                side.batch(params, params.warmup, f"warmup-{side.name}")
        for repeat in range(1, params.repeat + 1):
            for name in (n for n in report.run_order(SERVERS, repeat) if n in sides):
                run = sides[name].run(params, repeat)
                runs.append(run)
                print(report.rate_progress(run), flush=True)
        time.sleep(1.0)  # let a late duplicate show up before the dumps are read
    except (BenchError, SinkError, MailhouseError, PostfixError) as exc:
        print(f"smtp_relay: {exc}", file=sys.stderr)
        failed = True
    finally:
        checks = {name: side.check() for name, side in sides.items()}
        if dns is not None and "mailhouse" in checks:
            queries = dns.server.queries
            checks["mailhouse"]["dns_queries"] = len(queries)
            checks["mailhouse"]["dns_queries_by_type"] = dict(Counter(t for _, t in queries))
        if server is not None:
            server.close()
            # Store lock contention, per process (role=main: listeners, role=queue: the queue
            # process): batches whose BEGIN IMMEDIATE waited for the other's write.
            with contextlib.suppress(OSError):
                for line in server.log_path.read_text(errors="replace").splitlines():
                    if "event=store.writer_stats" in line:
                        print("mailhouse", line.partition(" INFO ")[2], flush=True)
        if postfix is not None:
            postfix.close()
        if dns is not None:
            dns.close()
        for sink in sinks.values():
            sink.close()

    RESULTS.publish(table(runs, params, checks), params, runs, base, checks=checks)
    bad = {n: c for n, c in checks.items() if c["missing"] or c["duplicated"]}
    for name, check in bad.items():
        print(
            f"smtp_relay: {name}: {check['missing']} LOST, {check['duplicated']} DUPLICATED"
            f" (e.g. {', '.join(check['examples'][:5])})",
            file=sys.stderr,
        )
    return report.finish(base, failed or bool(bad), "smtp_relay: ")


if __name__ == "__main__":
    sys.exit(main())
