"""The cross-process write lock (sqlite_writer.WriteLock): writers of several store instances on
one data directory take turns through a flock, never deadlock, and never leave it held: not after
a failed transaction, not after a kill -9 of the holder."""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import sqlite3
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailhouse.errors import MailError
from mailhouse.store import open_store
from mailhouse.store.base import DeliveryTarget, FlagOp, Outcome, Store
from mailhouse.store.sqlite import LOCK_NAME, WRITE_LOCK_NAME, SqliteStore
from mailhouse.store.sqlite_writer import GroupCommitWriter, WriteLock
from tests.helpers.locks import is_flocked
from tests.store.conftest import deliver_bytes
from tests.store.test_sqlite import insert

MESSAGE = b"Subject: turn\r\n\r\nbody\r\n"
REPO = Path(__file__).resolve().parents[2]
WRITES = 40  # per writer in the concurrency tests


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


async def inbox(store: Store, account_id: int) -> int:
    found = await store.get_mailbox(account_id, "INBOX")
    assert found is not None
    return found.id


# --- two store instances on one data directory ---------------------------------------------------
async def test_the_lock_file_is_not_the_reapers(data_dir: Path) -> None:
    store = SqliteStore(data_dir)
    await store.open()
    try:
        assert WRITE_LOCK_NAME != LOCK_NAME
        assert (data_dir / WRITE_LOCK_NAME).is_file()
        assert (data_dir / WRITE_LOCK_NAME).stat().st_mode & 0o777 == 0o600
        assert not is_flocked(data_dir / WRITE_LOCK_NAME)  # held only during a transaction
    finally:
        await store.close()


async def test_two_stores_in_one_process_write_concurrently(data_dir: Path) -> None:
    """Each instance has its own open file description, so they exclude each other as two
    processes would, and neither waits for the other forever."""
    first, second = SqliteStore(data_dir), SqliteStore(data_dir)
    await first.open()
    await second.open()
    try:
        alice = await first.add_account("alice@example.org", "h")
        bob = await second.add_account("bob@example.org", "h")

        async def deliveries(store: Store, account_id: int) -> list[list[Outcome]]:
            return list(await asyncio.gather(*(
                deliver_bytes(store, MESSAGE, [DeliveryTarget(account_id)]) for _ in range(WRITES)
            )))

        results = await asyncio.wait_for(
            asyncio.gather(deliveries(first, alice.id), deliveries(second, bob.id)), 60
        )
        assert all(r == [Outcome.DELIVERED] for rs in results for r in rs)
        assert len(await first.list_uids(await inbox(first, bob.id))) == WRITES
        assert len(await second.list_uids(await inbox(second, alice.id))) == WRITES
        jobs = first.writer_stats.jobs + second.writer_stats.jobs
        assert jobs == 2 * WRITES + 2
    finally:
        await first.close()
        await second.close()


CHILD_WRITER = """
import asyncio, sys
from pathlib import Path
from mailhouse.store import open_store
from mailhouse.store.base import FlagOp

async def main() -> None:
    store = open_store(Path(sys.argv[1]))
    await store.open()
    mailbox, uids = int(sys.argv[2]), [int(x) for x in sys.argv[3].split(",")]
    print("ready", flush=True)
    sys.stdin.readline()
    async def toggle(uid: int) -> None:
        for n in range(10):
            op = FlagOp.ADD if n % 2 == 0 else FlagOp.REMOVE
            update = await store.store_flags(mailbox, [uid], op, ["\\\\Seen"])
            assert update.changed, "every write is a change"
    await asyncio.gather(*(toggle(uid) for uid in uids))
    await store.close()
    print("done", flush=True)

asyncio.run(main())
"""


async def test_two_processes_write_concurrently(data_dir: Path) -> None:
    store = open_store(data_dir)
    await store.open()
    try:
        alice = await store.add_account("alice@example.org", "h")
        for _ in range(8):
            await deliver_bytes(store, MESSAGE, [DeliveryTarget(alice.id)])
        mailbox = await inbox(store, alice.id)
        uids = await store.list_uids(mailbox)
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD_WRITER, str(data_dir), str(mailbox),
            ",".join(str(u) for u in uids[:4]),
            cwd=REPO, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )
        assert child.stdin is not None and child.stdout is not None
        try:
            assert await asyncio.wait_for(child.stdout.readline(), 30) == b"ready\n"
            child.stdin.write(b"go\n")

            async def toggle(uid: int) -> None:
                for n in range(10):
                    op = FlagOp.ADD if n % 2 == 0 else FlagOp.REMOVE
                    update = await store.store_flags(mailbox, [uid], op, ["\\Seen"])
                    assert update.changed

            mine = asyncio.gather(*(toggle(uid) for uid in uids[4:]), deliver_bytes(
                store, MESSAGE, [DeliveryTarget(alice.id)]))
            await asyncio.wait_for(mine, 60)
            assert await asyncio.wait_for(child.stdout.readline(), 60) == b"done\n"
            assert await asyncio.wait_for(child.wait(), 30) == 0
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()
        flags = await store.list_flags(mailbox)
        assert len(flags) == 9
        assert all("\\Seen" not in m.flags for m in flags)  # ten toggles each: back to unseen
        info = await store.status(mailbox)
        assert info is not None and info.highest_modseq >= 80
    finally:
        await store.close()


# --- the lock is released on every path ----------------------------------------------------------
@pytest.fixture
def locked_writer(tmp_path: Path) -> Iterator[tuple[GroupCommitWriter, Path]]:
    conn = sqlite3.connect(tmp_path / "w.db", isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("CREATE TABLE p (id INTEGER PRIMARY KEY)")
    conn.execute("CREATE TABLE t (x INTEGER UNIQUE)")
    conn.execute("CREATE TABLE c (p INTEGER REFERENCES p (id) DEFERRABLE INITIALLY DEFERRED)")
    path = tmp_path / "write.lock"
    writer = GroupCommitWriter(conn, lambda days: None, lock=WriteLock(path))
    writer.start()
    yield writer, path
    writer.stop()
    conn.close()


class Escape(BaseException):
    """Not an Exception: it escapes the per-job handling and breaks the whole transaction."""


async def test_every_failure_releases_the_lock(
    locked_writer: tuple[GroupCommitWriter, Path],
) -> None:
    writer, path = locked_writer
    held: list[bool] = []

    def probe(conn: sqlite3.Connection) -> None:
        held.append(is_flocked(path))

    def job_fails(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t (x) VALUES (1)")
        raise KeyError("its own error")

    def commit_fails(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO c (p) VALUES (42)")  # a dangling reference, found at COMMIT

    def escapes(conn: sqlite3.Connection) -> None:
        raise Escape

    await writer.run(probe)
    assert held == [True]  # held inside the transaction
    with pytest.raises(KeyError):
        await writer.run(job_fails)
    assert not is_flocked(path)
    with pytest.raises(MailError):
        await writer.run(commit_fails)
    assert not is_flocked(path)
    with pytest.raises(MailError):
        await writer.run(escapes)
    assert not is_flocked(path)
    assert await writer.run(insert(2)) == 2  # the next writer goes on
    count = await writer.run(lambda conn: conn.execute("SELECT count(*) FROM t").fetchone()[0])
    assert count == 1


async def test_a_failing_unlock_still_drops_the_lock(
    locked_writer: tuple[GroupCommitWriter, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    writer, path = locked_writer
    real_flock = fcntl.flock

    def flock(fd: int, operation: int) -> None:
        if operation == fcntl.LOCK_UN:
            raise OSError("unlock refused")
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock)
    assert await writer.run(insert(1)) == 1
    monkeypatch.setattr(fcntl, "flock", real_flock)
    assert not is_flocked(path)  # the descriptor was closed, and a new one opened
    assert await writer.run(insert(2)) == 2
    assert not is_flocked(path)


async def test_jobs_arriving_while_waiting_for_the_lock_join_the_batch(
    locked_writer: tuple[GroupCommitWriter, Path],
) -> None:
    """Group commit across processes: while another process holds the lock, a writer's batch
    keeps growing, so one commit serves everything that queued meanwhile."""
    writer, path = locked_writer
    other = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.flock(other, fcntl.LOCK_EX)  # another process's transaction
        first = asyncio.create_task(writer.run(insert(1)))
        await asyncio.sleep(0.1)  # the writer thread now waits in flock with a batch of one
        later = [asyncio.create_task(writer.run(insert(x))) for x in (2, 3, 4)]
        await asyncio.sleep(0.1)
        fcntl.flock(other, fcntl.LOCK_UN)
        assert await asyncio.wait_for(asyncio.gather(first, *later), 10) == [1, 2, 3, 4]
    finally:
        os.close(other)
    assert (writer.stats.batches, writer.stats.jobs, writer.stats.largest_batch) == (1, 4, 4)
    assert writer.stats.lock_waits == 1 and writer.stats.lock_seconds >= 0.15


# --- the kernel drops the lock of a killed holder ------------------------------------------------
CHILD_HOLDER = """
import asyncio, sys, time
from pathlib import Path
from mailhouse.store import open_store

async def main() -> None:
    store = open_store(Path(sys.argv[1]))
    await store.open()
    def hold(conn) -> None:
        conn.execute("INSERT INTO domains (name) VALUES ('child.example')")
        print("holding", flush=True)
        time.sleep(60)  # killed long before this ends
    await store._write(hold)

asyncio.run(main())
"""


async def test_a_killed_holder_releases_the_lock(data_dir: Path) -> None:
    store = SqliteStore(data_dir)
    await store.open()
    try:
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD_HOLDER, str(data_dir), cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
        )
        assert child.stdout is not None
        try:
            assert await asyncio.wait_for(child.stdout.readline(), 30) == b"holding\n"
            assert is_flocked(data_dir / WRITE_LOCK_NAME)
            mine = asyncio.create_task(store.add_domain("parent.example"))
            done, _ = await asyncio.wait({mine}, timeout=0.3)
            assert not done  # waiting for the child's transaction
            child.send_signal(signal.SIGKILL)
            await asyncio.wait_for(mine, 10)  # the kernel dropped the dead holder's flock
        finally:
            if child.returncode is None:
                child.kill()
            await child.wait()
        assert await store.list_domains() == ["parent.example"]  # the child's never committed
        assert store.writer_stats.lock_waits == 1
    finally:
        await store.close()


async def test_a_writer_without_the_lock_still_waits_on_sqlite(data_dir: Path) -> None:
    """The busy handler stays the fallback: a store opened without the lock (as bench does)
    and one with it still commit side by side."""
    locked, unlocked = SqliteStore(data_dir), SqliteStore(data_dir, write_lock=False)
    await locked.open()
    await unlocked.open()
    try:
        await asyncio.wait_for(asyncio.gather(
            *(locked.add_domain(f"a{n}.example") for n in range(WRITES)),
            *(unlocked.add_domain(f"b{n}.example") for n in range(WRITES)),
        ), 60)
        assert len(await locked.list_domains()) == 2 * WRITES
        assert unlocked.writer_stats.lock_waits == 0
    finally:
        await locked.close()
        await unlocked.close()


def test_the_lock_is_closed_with_the_writer(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "w.db", isolation_level=None, check_same_thread=False)
    lock = WriteLock(tmp_path / "write.lock")
    writer = GroupCommitWriter(conn, lambda days: None, lock=lock)
    writer.start()
    writer.stop()
    stopper = threading.Thread(target=writer.stop)  # a second stop is harmless
    stopper.start()
    stopper.join(10)
    lock.close()  # and so is a second close
    conn.close()


async def test_a_link_planted_at_the_lock_file_is_never_followed(
    data_dir: Path, tmp_path: Path
) -> None:
    data_dir.mkdir()
    target = tmp_path / "elsewhere"
    (data_dir / WRITE_LOCK_NAME).symlink_to(target)
    store = SqliteStore(data_dir)
    with pytest.raises(OSError):
        await store.open()
    assert not target.exists()
