"""Group commit: one thread owns the SQLite write connection and commits whatever is pending as one
transaction.

Why: with `synchronous=FULL` every commit costs a WAL fsync, and a delivery also needs its blob's
directory entry fsynced. Paying both per message caps a server near 1,200 deliveries/s on this
hardware; paying them once per batch lets the cost be shared by everyone who arrived while the
previous batch was committing, so batches grow with load and latency stays about two fsyncs.

One batch:
  1. take every pending job (block only for the first);
  2. fsync the blob directories the batch's deliveries touched, once each;
  3. BEGIN IMMEDIATE; run each job inside its own SAVEPOINT; COMMIT (one WAL fsync);
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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

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


# A BEGIN IMMEDIATE slower than this waited for another process's write transaction.
BUSY_WAIT: float = 0.001


@dataclass(slots=True)
class WriterStats:
    batches: int = 0
    jobs: int = 0
    largest_batch: int = 0
    # Lock contention with other processes writing the same database (the queue process, the
    # CLI): batches whose BEGIN IMMEDIATE waited, and the seconds spent waiting in all.
    busy_waits: int = 0
    busy_seconds: float = 0.0


class GroupCommitWriter:
    """Owns `conn` (autocommit mode) from start() until stop()."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        sync_days: Callable[[Iterable[str]], None],
        name: str = "mailhouse-store-writer",
    ) -> None:
        self._conn = conn
        self._sync_days = sync_days
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
        stopping = False
        while not stopping:
            first = self._queue.get()
            batch: list[WriteJob] = []
            if first is None:
                stopping = True
            else:
                batch.append(first)
            while True:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                else:
                    batch.append(job)
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

    def _commit(self, batch: list[WriteJob]) -> None:
        days = {day for job in batch for day in job.sync_days}
        if days:
            try:
                self._sync_days(days)
            except OSError as exc:
                needing = [job for job in batch if job.sync_days]
                self._fail(needing, exc, maybe_committed=False)
                batch = [job for job in batch if not job.sync_days]
                if not batch:
                    return
        conn = self._conn
        began = time.perf_counter()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._fail(batch, exc, maybe_committed=False)
            return
        waited = time.perf_counter() - began
        if waited > BUSY_WAIT:
            self.stats.busy_waits += 1
            self.stats.busy_seconds += waited
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
            return
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            self._fail(batch, exc, maybe_committed=True)
            return
        for job in batch:
            if job.error is None and job.after_commit is not None:
                try:
                    job.after_commit()
                except Exception:
                    log.exception("store.writer.after_commit_failed")
            elif job.error is not None and job.on_failure is not None:
                job.on_failure(False)

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
