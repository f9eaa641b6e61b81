"""Write contention benchmark: several processes writing one SQLite store (issue 8, §1, the
cross-process write path).

`mailhouse serve` runs several processes on one database (the listener delivering mail, the
queue process, the POP3 and IMAP workers; IMAP sets \\Seen on reads), each with its own
group-commit writer thread (src/mailhouse/store/sqlite_writer.py). They meet at SQLite's write
lock. This measures what that costs, with and without the WriteLock hand-off (a blocking flock
around each write transaction), beside the same load run through one process (one writer).

Each phase gets a fresh data directory: domain-less accounts d0..d3 that receive the deliveries
and f0..f7 whose INBOX holds `--messages` messages each for the flag writers. Then, for K in
``--writers`` (1, 2, 4):

- **split**: one process delivers (``store.deliver``, ``--deliver-tasks`` N concurrent tasks, as
  fast as they can or at ``--rate`` messages/s in all) and K processes each run ``--flag-tasks``
  M tasks of ``store.store_flags`` (flat out, or ``--flag-rate`` writes/s per process). Every
  flag write is a real change: each task owns its own messages and alternately adds and removes
  \\Seen on them, so no write is an empty transaction. Run once with ``write_lock=False``
  (SQLite's busy handler only) and once with the WriteLock ("flock"), in alternating order.
- **single**: the same N delivery tasks and K x M flag tasks in ONE process, one writer.

Every process is its own ``python -m bench.write_contention worker`` with its own SqliteStore
(real fsync: synchronous=FULL, the store's default); all open their store, say ready, and start
together when the parent says go, for ``--seconds`` (10). Figures per process: writes/s, latency
p50/p99 of one store call, and its WriterStats (batches, jobs, largest batch, busy_waits and
busy_seconds: BEGIN IMMEDIATE slower than 1 ms; lock_waits and lock_seconds: WriteLock
acquisitions slower than 1 ms). Per phase: the writes/s of all processes together and how busy
the machine's CPUs were.

Run from the repository root:
    python -m bench.write_contention                 # K = 1, 2, 4; 10 s per phase (~2 min)
    python -m bench.write_contention --quick         # K = 2, 3 s per phase
    python -m bench.write_contention --rate 300 --flag-rate 400   # offered rates, not flat out
Results go to bench/results/write_contention-YYYYmmdd-HHMMSS.{json,txt} (gitignored). Exit 1
when a process fails or a write errs. No network; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import report
from mailhouse.store.base import DeliveryTarget, FlagOp
from mailhouse.store.sqlite import SqliteStore

DELIVER_ACCOUNTS = 4
FLAG_ACCOUNTS = 8
READY_TIMEOUT = 60.0  # a worker opens its store and reads its messages within this
PHASE_GRACE = 60.0  # a worker ends this long after its phase, or is killed
RESULTS = report.Results("write_contention", ("mailhouse",), ("total_rate",))
SEEN = ("\\Seen",)
STATS = ("batches", "jobs", "largest_batch", "busy_waits", "busy_seconds", "lock_waits",
         "lock_seconds")


def message(number: int) -> bytes:
    """A plain 2 KB message, different each time (delivery parses and stores its structure)."""
    head = (
        f"From: load@sender.test\r\nTo: d@bench.test\r\nSubject: contention {number}\r\n"
        f"Message-ID: <{number}.{os.getpid()}@sender.test>\r\n"
        "Date: Fri, 04 Dec 2026 21:00:00 +0000\r\n\r\n"
    ).encode()
    return head + b"Lorem ipsum dolor sit amet, consectetur adipiscing elit.\r\n" * 36


# ---------------------------------------------------------------------- the worker process


@dataclass
class Counter:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    empty: int = 0  # flag writes that changed nothing (must stay 0)


def slot_uids(uids: dict[int, list[int]], slot: int, slots: int) -> tuple[int, list[int]]:
    """The mailbox and messages flag task `slot` of `slots` owns: tasks are spread over the
    flag accounts' mailboxes round-robin, and share a mailbox's messages out by stride, so no
    two tasks (in any process) ever touch the same message."""
    mailboxes = sorted(uids)
    mailbox = mailboxes[slot % len(mailboxes)]
    sharing = range(slot % len(mailboxes), slots, len(mailboxes))
    return mailbox, uids[mailbox][sharing.index(slot)::len(sharing)]


async def deliver_task(store: SqliteStore, targets: list[int], task: int, tasks: int,
                       rate: float, deadline: float, counter: Counter) -> None:
    interval = tasks / rate if rate > 0 else 0.0
    started = time.perf_counter()
    n = 0
    while time.perf_counter() < deadline:
        if interval:  # the tasks take turns: task t sends at (n + t/tasks) intervals
            due = started + (n + task / tasks) * interval
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
        target = DeliveryTarget(targets[(task + n) % len(targets)])
        began = time.perf_counter()
        try:
            spool = store.new_spool()
            await spool.write(message(task * 1_000_000 + n))
            await store.deliver(spool, [target])
        except Exception:
            counter.errors += 1
        else:
            counter.latencies.append(time.perf_counter() - began)
        n += 1


async def flag_task(store: SqliteStore, mailbox: int, uids: list[int], interval: float,
                    offset: float, deadline: float, counter: Counter) -> None:
    seen: set[int] = set()  # the test data starts unseen; this task alone touches these
    started = time.perf_counter()
    n = 0
    while time.perf_counter() < deadline and uids:
        if interval:  # `offset` (0..1) spreads the tasks over the interval
            await asyncio.sleep(max(0.0, started + (n + offset) * interval - time.perf_counter()))
        uid = uids[n % len(uids)]
        op = FlagOp.REMOVE if uid in seen else FlagOp.ADD
        began = time.perf_counter()
        try:
            update = await store.store_flags(mailbox, [uid], op, SEEN)
        except Exception:
            counter.errors += 1
        else:
            counter.latencies.append(time.perf_counter() - began)
            if not update.changed:
                counter.empty += 1
            seen.symmetric_difference_update({uid})
        n += 1


def percentile(sorted_values: list[float], share: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(share * len(sorted_values)))]


async def worker(args: argparse.Namespace) -> dict[str, Any]:
    store = SqliteStore(Path(args.data_dir), write_lock=args.lock)
    await store.open()
    try:
        targets = []
        for i in range(DELIVER_ACCOUNTS):
            account = await store.get_account(f"d{i}@bench.test")
            assert account is not None
            targets.append(account.id)
        uids: dict[int, list[int]] = {}
        for i in range(FLAG_ACCOUNTS):
            account = await store.get_account(f"f{i}@bench.test")
            assert account is not None
            inbox = await store.get_mailbox(account.id, "INBOX")
            assert inbox is not None
            uids[inbox.id] = await store.list_uids(inbox.id)
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # go
        began = time.perf_counter()
        deadline = began + args.seconds
        delivered, flagged = Counter(), Counter()
        tasks = [
            deliver_task(store, targets, t, args.deliver_tasks, args.rate, deadline, delivered)
            for t in range(args.deliver_tasks)
        ]
        for t in range(args.flag_tasks):
            mailbox, mine = slot_uids(uids, args.first_slot + t, args.slots)
            interval = args.flag_tasks / args.flag_rate if args.flag_rate > 0 else 0.0
            tasks.append(flag_task(store, mailbox, mine, interval, t / args.flag_tasks, deadline,
                                   flagged))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - began
        stats = asdict(store.writer_stats)
    finally:
        await store.close()
    latencies = sorted(delivered.latencies + flagged.latencies)
    return {
        "deliveries": len(delivered.latencies),
        "flag_writes": len(flagged.latencies),
        "errors": delivered.errors + flagged.errors,
        "empty": flagged.empty,
        "seconds": elapsed,
        "p50_ms": 1000 * percentile(latencies, 0.50),
        "p99_ms": 1000 * percentile(latencies, 0.99),
        "deliver_p50_ms": 1000 * percentile(sorted(delivered.latencies), 0.50),
        "flag_p50_ms": 1000 * percentile(sorted(flagged.latencies), 0.50),
        **{name: stats[name] for name in STATS},
    }


def worker_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench.write_contention worker")
    parser.add_argument("data_dir")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--deliver-tasks", type=int, default=0)
    parser.add_argument("--rate", type=float, default=0.0, help="deliveries/s in all (0: flat out)")
    parser.add_argument("--flag-tasks", type=int, default=0)
    parser.add_argument("--flag-rate", type=float, default=0.0, help="flag writes/s (0: flat out)")
    parser.add_argument("--first-slot", type=int, default=0)
    parser.add_argument("--slots", type=int, default=1, help="flag tasks of all processes")
    parser.add_argument("--lock", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(worker(args))), flush=True)
    return 0


# ---------------------------------------------------------------------- the parent


@dataclass(frozen=True)
class Params:
    seconds: float
    deliver_tasks: int
    flag_tasks: int
    writers: tuple[int, ...]
    messages: int
    rate: float
    flag_rate: float


@dataclass
class Process:
    role: str  # "deliver", "flags-1" …, or "all" (the single layout)
    summary: dict[str, Any]

    @property
    def writes(self) -> int:
        return int(self.summary["deliveries"]) + int(self.summary["flag_writes"])

    @property
    def rate(self) -> float:
        return self.writes / max(1e-9, float(self.summary["seconds"]))


@dataclass
class Run:
    lock: str  # "sqlite" (busy handler only) or "flock" (the WriteLock)
    layout: str  # "split" or "single"
    writers: int  # K
    busy: float
    processes: list[Process]

    @property
    def total_rate(self) -> float:
        return sum(p.rate for p in self.processes)


async def prepare(data_dir: Path, messages: int) -> None:
    """A fresh store: the delivery accounts, and the flag accounts with their messages."""
    store = SqliteStore(data_dir)
    await store.open()
    try:
        for i in range(DELIVER_ACCOUNTS):
            await store.add_account(f"d{i}@bench.test", "x")

        async def fill(account_id: int, first: int) -> None:
            for n in range(messages):
                spool = store.new_spool()
                await spool.write(message(first + n))
                await store.deliver(spool, [DeliveryTarget(account_id)])

        accounts = [await store.add_account(f"f{i}@bench.test", "x") for i in range(FLAG_ACCOUNTS)]
        await asyncio.gather(*(fill(a.id, i * messages) for i, a in enumerate(accounts)))
    finally:
        await store.close()


def worker_command(data_dir: Path, params: Params, lock: bool, flag_rate: float,
                   **options: int) -> list[str]:
    argv = [sys.executable, "-m", "bench.write_contention", "worker", str(data_dir),
            "--seconds", str(params.seconds), "--rate", str(params.rate),
            "--flag-rate", str(flag_rate),
            "--lock" if lock else "--no-lock"]
    for name, value in options.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    return argv


def run_phase(work: Path, params: Params, writers: int, layout: str, lock: bool) -> Run:
    data_dir = work / f"{layout}-{'flock' if lock else 'sqlite'}-{writers}"
    asyncio.run(prepare(data_dir, params.messages))
    slots = writers * params.flag_tasks
    if layout == "single":
        # The flag writes of all K processes, at K times the rate of one.
        commands = {"all": worker_command(data_dir, params, lock, writers * params.flag_rate,
                                          flag_tasks=slots, first_slot=0, slots=slots,
                                          deliver_tasks=params.deliver_tasks)}
    else:
        commands = {"deliver": worker_command(data_dir, params, lock, 0.0,
                                              deliver_tasks=params.deliver_tasks)}
        for k in range(writers):
            commands[f"flags-{k + 1}"] = worker_command(
                data_dir, params, lock, params.flag_rate, flag_tasks=params.flag_tasks,
                first_slot=k * params.flag_tasks, slots=slots)
    children = {
        role: subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for role, argv in commands.items()
    }
    try:
        for role, child in children.items():
            assert child.stdout is not None
            line = child.stdout.readline().strip()  # bounded: the worker says ready or exits
            if line != "ready":
                raise RuntimeError(f"{role}: worker did not start ({line!r})")
        cpu0 = report.cpu_times()
        for child in children.values():
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        processes = []
        for role, child in children.items():
            out, _ = child.communicate(timeout=params.seconds + PHASE_GRACE)
            summary = report.json_summary(out)
            if child.returncode != 0 or not summary:
                raise RuntimeError(f"{role}: worker failed (exit {child.returncode})")
            processes.append(Process(role, summary))
        busy = report.busy_share(cpu0, report.cpu_times())
    finally:
        for child in children.values():
            if child.poll() is None:
                child.kill()
                child.wait()
    report.remove_tree(data_dir)
    return Run("flock" if lock else "sqlite", layout, writers, busy, processes)


def progress(run: Run) -> str:
    parts = ", ".join(f"{p.role} {p.rate:,.0f}/s" for p in run.processes)
    return (f"  K={run.writers} {run.layout:<6} {run.lock:<6}: {run.total_rate:,.0f} writes/s"
            f" ({parts}), CPUs {run.busy:.0%}")


def table(params: Params, runs: list[Run]) -> str:
    lines = [
        f"write_contention: {params.deliver_tasks} delivery tasks"
        f" ({'flat out' if not params.rate else f'{params.rate:g}/s'}) in one process,"
        f" K processes x {params.flag_tasks} flag tasks (\\Seen on/off,"
        f" {'flat out' if not params.flag_rate else f'{params.flag_rate:g}/s each'});"
        f" {params.seconds:g} s per phase; synchronous=FULL",
        "",
        f"{'K':>2} {'layout':<7}{'lock':<7}{'process':<9}{'writes/s':>9}{'p50 ms':>8}"
        f"{'p99 ms':>8}{'batches':>9}{'jobs':>8}{'largest':>8}{'busy_w':>8}{'busy_s':>8}"
        f"{'lock_w':>8}{'lock_s':>8}",
    ]
    for run in runs:
        for p in run.processes:
            s = p.summary
            lines.append(
                f"{run.writers:>2} {run.layout:<7}{run.lock:<7}{p.role:<9}{p.rate:>9,.0f}"
                f"{s['p50_ms']:>8.1f}{s['p99_ms']:>8.1f}{s['batches']:>9}{s['jobs']:>8}"
                f"{s['largest_batch']:>8}{s['busy_waits']:>8}{s['busy_seconds']:>8.2f}"
                f"{s['lock_waits']:>8}{s['lock_seconds']:>8.2f}"
            )
    lines += ["", f"{'K':>2} {'layout':<7}{'lock':<7}{'writes/s in all':>16}{'deliveries/s':>14}"
                  f"{'flag writes/s':>15}{'CPUs busy':>11}"]
    for run in runs:
        deliveries = sum(int(p.summary["deliveries"]) / p.summary["seconds"]
                         for p in run.processes)
        flags = sum(int(p.summary["flag_writes"]) / p.summary["seconds"] for p in run.processes)
        lines.append(f"{run.writers:>2} {run.layout:<7}{run.lock:<7}{run.total_rate:>16,.0f}"
                     f"{deliveries:>14,.0f}{flags:>15,.0f}{run.busy:>10.0%}")
    lines += ["", "writes: store calls that returned (deliveries + flag writes); latency: one "
              "call, all of a process's calls; busy_w/busy_s: batches whose BEGIN IMMEDIATE "
              "waited > 1 ms and the seconds in all (SQLite's busy handler); lock_w/lock_s: "
              "the same for the WriteLock (flock)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        return worker_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m bench.write_contention",
        description="several processes writing one SQLite store, with and without the flock "
                    "hand-off, beside one process doing it all",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="per phase (10)")
    parser.add_argument("-n", "--deliver-tasks", type=int, default=20, help="delivery tasks (20)")
    parser.add_argument("-m", "--flag-tasks", type=int, default=8,
                        help="flag tasks per flag process (8)")
    parser.add_argument("--writers", default="1,2,4", help="K: flag processes, comma-separated")
    parser.add_argument("--messages", type=int, default=64, help="per flag account (64)")
    parser.add_argument("--rate", type=float, default=0.0, help="deliveries/s in all (0: flat out)")
    parser.add_argument("--flag-rate", type=float, default=0.0,
                        help="flag writes/s per flag process (0: flat out)")
    parser.add_argument("--quick", action="store_true", help="--writers 2 --seconds 3")
    args = parser.parse_args(argv)
    if args.quick:
        args.writers, args.seconds = "2", 3.0
    writers = tuple(int(x) for x in args.writers.split(",") if x.strip())
    report.require_positive(parser, deliver_tasks=args.deliver_tasks,
                            flag_tasks=args.flag_tasks, messages=args.messages)
    if not writers or min(writers) < 1 or args.seconds <= 0:
        parser.error("--writers needs numbers of at least 1 and --seconds a positive time")
    if max(writers) * args.flag_tasks > FLAG_ACCOUNTS * args.messages:
        parser.error("more flag tasks than messages: raise --messages")
    params = Params(args.seconds, args.deliver_tasks, args.flag_tasks, writers, args.messages,
                    args.rate, args.flag_rate)
    report.exit_on_sigterm()
    work = report.work_dir("mh-write-contention-")
    runs: list[Run] = []
    failed = False
    try:
        for i, k in enumerate(writers):
            for lock in report.run_order(("sqlite", "flock"), i + 1):
                runs.append(run_phase(work, params, k, "split", lock == "flock"))
                print(progress(runs[-1]), flush=True)
            runs.append(run_phase(work, params, k, "single", True))
            print(progress(runs[-1]), flush=True)
        errors = sum(int(p.summary["errors"]) + int(p.summary["empty"])
                     for run in runs for p in run.processes)
        if errors:
            print(f"{errors} writes failed or changed nothing", file=sys.stderr)
            failed = True
        RESULTS.publish(table(params, runs), params, runs, work)
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
        print(f"write_contention: {exc}", file=sys.stderr)
        failed = True
    return report.finish(work, failed)


if __name__ == "__main__":
    sys.exit(main())
