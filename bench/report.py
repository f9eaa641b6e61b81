"""What the side-by-side benchmarks (smtp_ingest, smtp_relay, pop3_load, imap_*) share.

- The record of a run: ``bench/results/NAME-YYYYmmdd-HHMMSS.{json,txt}`` (gitignored) with the
  parameters, the machine, the servers' versions, every run and the printed table (`Results`).
- Medians, ratios and the accepted / end-to-end median table of the SMTP benchmarks.
- CPU figures: a session's CPU time from /proc (a server and every process it forks), how busy
  the machine's CPUs were, this process's and its reaped children's CPU time.
- Small pieces of the command line and the run: ``--servers``, the alternating order of the
  servers, the work directory, SIGTERM.

Standard library and tests/helpers only; nothing here starts a server.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from tests.helpers.tools import program

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# How each server names its version (first line of the output).
_VERSION_COMMANDS: dict[str, Callable[[], list[str]]] = {
    "mailhouse": lambda: [sys.executable, "-m", "mailhouse", "--version"],
    "postfix": lambda: [program("postconf"), "-d", "-h", "mail_version"],
    "dovecot": lambda: ["dovecot", "--version"],
}


# ---------------------------------------------------------------------- the saved record


def stamp() -> str:
    """The time stamp in result file names: YYYYmmdd-HHMMSS (local time)."""
    return time.strftime("%Y%m%d-%H%M%S")


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg": os.getloadavg(),
    }


def version_of(argv: list[str] | Callable[[], list[str]]) -> str:
    """First line of a program's output; "" when it printed nothing, "unknown" when it could
    not run (`argv` may be a callable, for a program that may not be installed)."""
    try:
        command = argv() if callable(argv) else argv
        out = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else ""


def versions(*servers: str) -> dict[str, str]:
    """{server: version} for mailhouse, postfix and dovecot, in the order given."""
    return {name: version_of(_VERSION_COMMANDS[name]) for name in servers}


@dataclass(frozen=True)
class Results:
    """How one benchmark records its runs: RESULTS_DIR/BENCHMARK-STAMP.json (parameters,
    machine, the versions of `servers`, every run with its computed `rates`, the extra fields,
    the work directory) and .txt (the printed table)."""

    benchmark: str
    servers: tuple[str, ...]  # whose versions are recorded, in this order
    rates: tuple[str, ...]  # a run's properties recorded along with its fields

    def path(self, when: str, suffix: str) -> Path:
        return RESULTS_DIR / f"{self.benchmark}-{when}{suffix}"

    def save(
        self, report: str, params: Any, runs: Sequence[Any], work_dir: Path, **extra: Any
    ) -> Path:
        """Write the JSON and text record; the JSON's path."""
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        when = stamp()
        record = {
            "benchmark": self.benchmark,
            "when": when,
            "params": asdict(params),
            "machine": machine(),
            "versions": versions(*self.servers),
            "runs": [
                {**asdict(run), **{name: getattr(run, name) for name in self.rates}} for run in runs
            ],
            **extra,
            "work_dir": str(work_dir),
        }
        path = self.path(when, ".json")
        path.write_text(json.dumps(record, indent=2) + "\n")
        self.path(when, ".txt").write_text(report + "\n")
        return path

    def publish(
        self, report: str, params: Any, runs: Sequence[Any], work_dir: Path, **extra: Any
    ) -> Path:
        """Print the table, save the record (`save`), print where."""
        print()
        print(report)
        path = self.save(report, params, runs, work_dir, **extra)
        print(f"\nsaved {path}")
        return path


# ---------------------------------------------------------------------- medians and ratios

R = TypeVar("R", bound="ServerRun")


class ServerRun(Protocol):
    @property
    def server(self) -> str: ...


class RateRun(ServerRun, Protocol):
    """A run of an SMTP benchmark: accepted and end-to-end messages per second."""

    @property
    def repeat(self) -> int: ...

    @property
    def accepted_rate(self) -> float: ...

    @property
    def delivered_rate(self) -> float: ...


class Rates:
    """accepted_rate and delivered_rate for the Run dataclass of an SMTP benchmark, which
    defines these three fields."""

    messages: int
    accept_seconds: float  # until every message got its 250
    deliver_seconds: float  # until the last message was delivered

    @property
    def accepted_rate(self) -> float:
        return self.messages / self.accept_seconds

    @property
    def delivered_rate(self) -> float:
        return self.messages / self.deliver_seconds


def median(values: Iterable[float], default: float = math.nan) -> float:
    """The median, or `default` when there are no values."""
    data = list(values)
    return statistics.median(data) if data else default


def ratio(value: float, reference: float) -> float:
    """value / reference, never dividing by zero."""
    return value / max(1e-9, reference)


def by_server(runs: Iterable[R], order: Iterable[str] | None = None) -> dict[str, list[R]]:
    """The runs per server, in `order` (servers without a run left out) or in the order the
    servers first ran."""
    grouped: dict[str, list[R]] = {}
    for run in runs:
        grouped.setdefault(run.server, []).append(run)
    if order is None:
        return grouped
    return {name: grouped[name] for name in order if name in grouped}


def rate_columns(first: str, second: str, widths: tuple[int, int, int, int]) -> str:
    """The heading of an accepted / end-to-end msg/s table."""
    name, rep, acc, dlv = widths
    return f"{first:<{name}}{second:>{rep}}{'accepted msg/s':>{acc}}{'end-to-end msg/s':>{dlv}}"


def rate_medians(
    runs: Sequence[RateRun],
    servers: Sequence[str],
    widths: tuple[int, int, int, int],
    reference: str,
    label: str,
) -> list[str]:
    """A blank line, then per server (in `servers` order) the median accepted and end-to-end
    msg/s, then the ratio row mailhouse / `reference` when both ran."""
    name_w, rep_w, acc_w, dlv_w = widths
    medians = {
        name: (median(r.accepted_rate for r in mine), median(r.delivered_rate for r in mine))
        for name, mine in by_server(runs, servers).items()
    }
    lines = ["", rate_columns("median", "", widths)]
    for name, (acc, dlv) in medians.items():
        lines.append(f"{name:<{name_w}}{'':>{rep_w}}{acc:>{acc_w}.0f}{dlv:>{dlv_w}.0f}")
    if "mailhouse" in medians and reference in medians:
        (mh_acc, mh_dlv), (ref_acc, ref_dlv) = medians["mailhouse"], medians[reference]
        lines.append(
            f"{label:<{name_w}}{'':>{rep_w}}{ratio(mh_acc, ref_acc):>{acc_w - 1}.2f}x"
            f"{ratio(mh_dlv, ref_dlv):>{dlv_w - 1}.2f}x"
        )
    return lines


def rate_progress(run: RateRun) -> str:
    """The line printed after each run of an SMTP benchmark."""
    return (
        f"  {run.server:<10} repeat {run.repeat}: accepted {run.accepted_rate:,.0f} msg/s,"
        f" end-to-end {run.delivered_rate:,.0f} msg/s"
    )


# ---------------------------------------------------------------------- CPU


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs, from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Share of all CPUs busy between two `cpu_times()` readings (0..1)."""
    return (after[0] - before[0]) / max(1, after[1] - before[1])


def session_cpu(sid: int) -> float:
    """CPU seconds (user+sys) used so far by the processes of session `sid`: each live process's
    own time plus that of the children it has reaped (a process that exits is counted by its
    parent once reaped, so the sum stays correct while workers come and go)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            continue  # exited meanwhile
        # fields[0] is field 3 (state): session is field 6, utime..cstime fields 14..17.
        if len(fields) > 14 and int(fields[3]) == sid:
            total += sum(int(x) for x in fields[11:15])
    return total / tick


def own_cpu() -> float:
    """This process's CPU seconds (user+sys), all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children_cpu() -> float:
    """CPU seconds (user+sys) of this process's reaped children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------------- command line and run


def parse_servers(
    parser: argparse.ArgumentParser, text: str, known: Sequence[str], error: str
) -> tuple[str, ...]:
    """``--servers a,b``: the names in order, once each; `parser.error(error)` unless they are
    a non-empty subset of `known`."""
    servers = tuple(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
    if not servers or set(servers) - set(known):
        parser.error(error)
    return servers


def require_positive(parser: argparse.ArgumentParser, **values: int) -> None:
    """`parser.error` for the first option (by keyword) below 1."""
    for name, value in values.items():
        if value < 1:
            parser.error(f"--{name} must be at least 1")


def run_order(servers: Sequence[str], repeat: int) -> tuple[str, ...]:
    """Who goes first alternates with each repeat, so neither always runs on the warmer
    machine."""
    return tuple(servers) if repeat % 2 else tuple(reversed(servers))


def json_summary(stdout: str) -> dict[str, Any]:
    """The JSON object on the last line of a load client's output, or {}."""
    lines = stdout.strip().splitlines()
    try:
        summary = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        return {}
    return summary if isinstance(summary, dict) else {}


def work_dir(prefix: str, mode: int | None = None) -> Path:
    """A new directory /tmp/PREFIXxxxx (chmod `mode` when given: servers dropping to other
    users must reach it)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    if mode is not None:
        path.chmod(mode)
    return path


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def finish(work_dir: Path, failed: bool, label: str = "") -> int:
    """The exit status: after a failure 1, keeping the work directory (its path on stderr,
    after `label`) with the logs; else 0, the directory removed."""
    if failed:
        print(f"{label}work directory kept: {work_dir}", file=sys.stderr)
        return 1
    remove_tree(work_dir)
    return 0


def exit_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so a benchmark's `finally` stops its servers."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
