"""Group commit: one thread owns the SQLite write connection and commits whatever is pending as one
transaction.

Why: with `synchronous=FULL` every commit costs a WAL fsync, and a delivery also needs its blob's
directory entry fsynced. Paying both per message caps a server near 1,200 deliveries/s on this
hardware; paying them once per batch lets the cost be shared by everyone who arrived while the
previous batch was committing, so batches grow with load and latency stays about two fsyncs.

One batch:
  1. take every pending job (block only for the first);
  2. fsync the blob directories the batch's deliveries touched, once each;
  3. take the WriteLock (below); BEGIN IMMEDIATE; take the jobs that arrived meanwhile (their
     directories fsynced too); run each job inside its own SAVEPOINT; COMMIT (one WAL fsync);
     drop the WriteLock;
  4. run after-commit hooks, then resolve every caller's future on its own event loop via
     `call_soon_threadsafe` (one wake-up per loop per batch).

Failure policy: a job that raises is rolled back to its savepoint and fails alone; its neighbours
still commit. A failure of the batch itself (the directory fsync, BEGIN, a savepoint rollback or
COMMIT: disk full, I/O error, lock timeout) fails every job in it; those errors are environmental,
so a retry inside the batch would only fail again. When COMMIT itself fails the transaction may
still have reached the WAL, so `on_failure(maybe_committed=True)` tells deliveries to keep their
blob file: a row never points at a missing blob, and a truly orphaned file is reaped at the next
open. Callers then answer 451/452 and the sender retries: a duplicate is possible, a loss is not
(qmail's rule, security.md §1).

Across processes (the listener, the queue process, the POP3 and IMAP workers each have a writer):
every writer takes `WriteLock`, a blocking flock on one file, before BEGIN IMMEDIATE and drops it
after COMMIT/ROLLBACK. SQLite alone makes a writer that finds the database locked sleep in steps
(1, 2, 5, 10 ms …) and poll; the flock wakes the next writer the moment the lock is free, and a
writer takes into its batch every job that arrived while it waited, so group commit keeps working
across processes (docs/decisions.md, "The cross-process write path"). Writers that do not take it
(schema migration, the blob garbage collection at open and after an account's removal, a store
opened with write_lock=False) still meet SQLite's busy handler, which stays the fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mailhouse import metrics
from mailhouse.errors import MailError
from mailhouse.store.failures import storage_error

log = logging.getLogger("mailhouse.store.writer")

T = TypeVar("T")

_Settlement = tuple["asyncio.Future[Any]", Any, BaseException | None]


@dataclass(eq=False, slots=True)
class WriteJob:
    """One caller's write. `apply` runs on the writer thread inside the batch transaction."""

    apply: Callable[[sqlite3.Connection], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    sync_days: frozenset[str] = frozenset()
    on_failure: Callable[[bool], None] | None = None  # argument: maybe_committed
    after_commit: Callable[[], None] | None = None
    result: Any = None
    error: BaseException | None = field(default=None)


# A BEGIN IMMEDIATE (or a WriteLock acquisition) slower than this waited for another process's
# write transaction.
BUSY_WAIT: float = 0.001
LOCK_FILE_MODE = 0o600


class WriteLock:
    """The cross-process write lock: flock(LOCK_EX) on `path`, held for one write transaction.

    Why flock: the kernel wakes the waiters the moment the holder unlocks, where SQLite's busy
    handler sleeps in steps and polls (and lets a writer that just committed take the lock again
    ahead of one that has slept for 10 ms). It is dropped when its open file description goes,
    so a holder killed with SIGKILL never leaves it taken. One open file description per
    instance, used only by its writer thread (flock locks belong to the description: two
    instances in one process exclude each other like two processes do).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = self._open()

    def _open(self) -> int:
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC  # a planted link: refused
        return os.open(self.path, flags, LOCK_FILE_MODE)

    def acquire(self) -> None:
        """Block until this writer holds the lock (no timeout: the holder keeps it only for one
        transaction, and the kernel drops it if the holder dies)."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def release(self) -> None:
        """Never fails and never leaves the lock held: if unlocking errs, the descriptor is
        closed (which drops the lock) and a fresh one opened."""
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        except OSError:
            log.exception("store.write_lock.unlock_failed")
            os.close(self._fd)
            self._fd = -1
            self._fd = self._open()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@dataclass(slots=True)
class WriterStats:
    batches: int = 0
    jobs: int = 0
    largest_batch: int = 0
    # Lock contention with other processes writing the same database (the queue process, the
    # CLI): batches whose BEGIN IMMEDIATE waited, and the seconds spent waiting in all.
    busy_waits: int = 0
    busy_seconds: float = 0.0
    # With a WriteLock: batches that waited for it, and the seconds spent waiting in all (the
    # same contention, met in the kernel's queue instead of SQLite's busy handler).
    lock_waits: int = 0
    lock_seconds: float = 0.0


class GroupCommitWriter:
    """Owns `conn` (autocommit mode) from start() until stop(); and `lock`, when given, which it
    holds around each batch transaction and closes at stop()."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        sync_days: Callable[[Iterable[str]], None],
        name: str = "mailhouse-store-writer",
        lock: WriteLock | None = None,
    ) -> None:
        self._conn = conn
        self._sync_days = sync_days
        self._lock = lock
        self._stop_seen = False  # the writer thread saw stop()'s sentinel
        self._queue: queue.SimpleQueue[WriteJob | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._closed = False
        self.stats = WriterStats()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Commit what is queued, then end the thread. Blocks: call it from a worker thread."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join()
        if self._lock is not None:
            self._lock.close()

    async def run(
        self,
        apply: Callable[[sqlite3.Connection], T],
        *,
        sync_days: frozenset[str] = frozenset(),
        on_failure: Callable[[bool], None] | None = None,
        after_commit: Callable[[], None] | None = None,
    ) -> T:
        """Run `apply` in the next batch and return its result once the batch is durable.

        sqlite3 and OS errors come back as MailError/StorageFull; anything else `apply` raises
        (KeyError, ValueError) comes back unchanged.
        """
        if self._closed:
            raise RuntimeError("store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(WriteJob(apply, loop, future, sync_days, on_failure, after_commit))
        return await future

    # --- writer thread ------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop_seen:
            first = self._queue.get()
            batch: list[WriteJob] = []
            if first is None:
                self._stop_seen = True
            else:
                batch.append(first)
            self._drain(batch)
            if batch:
                try:
                    self._commit(batch)
                except BaseException as exc:  # a bug here must not strand callers forever
                    log.exception("store.writer.crashed")
                    self._fail(batch, exc, maybe_committed=True)
                self.stats.batches += 1
                self.stats.jobs += len(batch)
                self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
                self._settle(batch)

    def _drain(self, into: list[WriteJob]) -> None:
        """Move every pending job into `into`, without blocking; note the stop sentinel."""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is None:
                self._stop_seen = True
            else:
                into.append(job)

    def _synced(self, jobs: list[WriteJob]) -> list[WriteJob]:
        """fsync the blob directories `jobs` touched, once each; the jobs that may go on (when
        that fails, those that needed it fail)."""
        days = {day for job in jobs for day in job.sync_days}
        if not days:
            return jobs
        try:
            self._sync_days(days)
        except OSError as exc:
            self._fail([job for job in jobs if job.sync_days], exc, maybe_committed=False)
            return [job for job in jobs if not job.sync_days]
        return jobs

    def _commit(self, batch: list[WriteJob]) -> None:
        """Commit `batch`, and the jobs that arrive while it waits for the locks (appended to
        `batch`, so they are counted and settled with it)."""
        started = time.perf_counter()
        ready = self._synced(list(batch))
        if not ready:
            return
        lock = self._lock
        if lock is None:
            committed = self._transaction(ready, batch)
        else:
            began = time.perf_counter()
            try:
                lock.acquire()
            except OSError as exc:
                self._fail(ready, exc, maybe_committed=False)
                return
            waited = time.perf_counter() - began
            if waited > BUSY_WAIT:
                self.stats.lock_waits += 1
                self.stats.lock_seconds += waited
            try:
                committed = self._transaction(ready, batch)
            finally:  # the hooks below run unlocked: they may write (garbage) or take time
                lock.release()
        counted = metrics.get()
        counted.commit_batches.observe(len(committed))
        counted.commit_seconds.observe(time.perf_counter() - started)
        for job in committed:
            if job.error is None and job.after_commit is not None:
                try:
                    job.after_commit()
                except Exception:
                    log.exception("store.writer.after_commit_failed")
            elif job.error is not None and job.on_failure is not None:
                job.on_failure(False)

    def _transaction(self, ready: list[WriteJob], batch: list[WriteJob]) -> list[WriteJob]:
        """BEGIN IMMEDIATE; take the jobs that came while it waited (group commit across
        processes: a writer's batch grows while another process holds the lock); a savepoint
        per job; COMMIT. The jobs committed, or [] when the batch failed (every job with it)."""
        conn = self._conn
        began = time.perf_counter()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._fail(ready, exc, maybe_committed=False)
            return []
        waited = time.perf_counter() - began
        if waited > BUSY_WAIT:
            self.stats.busy_waits += 1
            self.stats.busy_seconds += waited
        try:
            late: list[WriteJob] = []
            self._drain(late)
            if late:
                batch.extend(late)
                ready = ready + self._synced(late)
            return ready if self._jobs_and_commit(ready) else []
        except BaseException:  # never leave SQLite's lock held once the WriteLock is gone
            self._rollback()
            raise

    def _jobs_and_commit(self, batch: list[WriteJob]) -> bool:
        """Inside BEGIN IMMEDIATE: each job in its savepoint, then COMMIT; False when the batch
        failed (every job with it)."""
        conn = self._conn
        try:
            for job in batch:
                conn.execute("SAVEPOINT job")
                try:
                    job.result = job.apply(conn)
                except Exception as exc:
                    job.error = _job_error(exc)
                    conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
        except sqlite3.Error as exc:  # the transaction itself is broken
            self._rollback()
            self._fail(batch, exc, maybe_committed=False)
            return False
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            self._fail(batch, exc, maybe_committed=True)
            return False
        return True

    def _rollback(self) -> None:
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            log.exception("store.writer.rollback_failed")

    @staticmethod
    def _fail(batch: list[WriteJob], exc: BaseException, *, maybe_committed: bool) -> None:
        log.warning("store.writer.batch_failed jobs=%d error=%r", len(batch), exc)
        for job in batch:
            job.error = storage_error(exc)
            job.error.__cause__ = exc
            job.result = None
            if job.on_failure is not None:
                try:
                    job.on_failure(maybe_committed)
                except Exception:
                    log.exception("store.writer.on_failure_failed")

    @staticmethod
    def _settle(batch: list[WriteJob]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[_Settlement]] = {}
        for job in batch:
            by_loop.setdefault(job.loop, []).append((job.future, job.result, job.error))
        for loop, settlements in by_loop.items():
            # RuntimeError: the caller's loop is closed, nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle_all, settlements)


def _job_error(exc: Exception) -> BaseException:
    """Storage failures become replies; a caller's own error (KeyError …) passes unchanged."""
    if isinstance(exc, (sqlite3.Error, OSError)) and not isinstance(exc, MailError):
        error = storage_error(exc)
        error.__cause__ = exc
        return error
    return exc


def _settle_all(settlements: list[_Settlement]) -> None:
    for future, result, error in settlements:
        if future.done():  # the caller was cancelled; the write stands
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
