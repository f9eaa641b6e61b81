"""What only the embedded store promises: persistence, other processes, schema versions, crash
leftovers, disk errors, group commit."""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from mailhouse.errors import ConfigError, MailError, StorageFull
from mailhouse.store import blobs, open_store, schema
from mailhouse.store.base import DeliveryTarget, Outcome, Store
from mailhouse.store.failures import storage_error
from mailhouse.store.sqlite_writer import GroupCommitWriter
from tests.store.conftest import deliver_bytes, read_all

MESSAGE = b"Subject: durable\r\n\r\nbody\r\n"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


async def opened(data_dir: Path) -> Store:
    store = open_store(data_dir, "sqlite")
    await store.open()
    return store


def blob_files(data_dir: Path) -> list[Path]:
    return sorted(p for p in (data_dir / "blobs").glob("*/*") if p.is_file())


def db_rows(data_dir: Path, query: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(data_dir / "mailhouse.db") as conn:
        return conn.execute(query).fetchall()


async def inbox(store: Store, account_id: int) -> int:
    return next(m.id for m in await store.list_mailboxes(account_id) if m.name == "INBOX")


# --- persistence and other processes --------------------------------------------------------------
async def test_reopen_keeps_everything(data_dir: Path) -> None:
    store = await opened(data_dir)
    await store.add_domain("example.org")
    alice = await store.add_account("alice@example.org", "h")
    big = os.urandom(700_000)
    await deliver_bytes(store, MESSAGE, [DeliveryTarget(alice.id, flags=("\\Seen",))])
    await deliver_bytes(store, big, [DeliveryTarget(alice.id)])
    directory = await store.directory()
    mailboxes = await store.list_mailboxes(alice.id)
    messages = await store.list_messages(await inbox(store, alice.id))
    await store.close()

    store = await opened(data_dir)
    try:
        assert await store.directory() == directory
        assert await store.list_mailboxes(alice.id) == mailboxes
        assert await store.list_messages(mailboxes[0].id) == messages
        assert [await read_all(store, m) for m in messages] == [MESSAGE, big]
        await deliver_bytes(store, MESSAGE, [DeliveryTarget(alice.id)])
        assert [m.uid for m in await store.list_messages(mailboxes[0].id)] == [1, 2, 3]
    finally:
        await store.close()


async def test_directory_serial_is_seen_across_processes(data_dir: Path) -> None:
    """The CLI edits the database while the server runs; the server polls the serial."""
    store = await opened(data_dir)
    try:
        before = await store.directory_serial()
        script = (
            "import asyncio, sys\n"
            "from pathlib import Path\n"
            "from mailhouse.store import open_store\n"
            "async def main():\n"
            "    s = open_store(Path(sys.argv[1]))\n"
            "    await s.open()\n"
            "    await s.add_domain('cli.example')\n"
            "    await s.close()\n"
            "asyncio.run(main())\n"
        )
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, str(data_dir), cwd=REPO
        )
        assert await asyncio.wait_for(process.wait(), 30) == 0
        assert await store.directory_serial() > before
        assert "cli.example" in (await store.directory()).domains
        await store.add_domain("server.example")  # and the server can still write
        assert await store.list_domains() == ["cli.example", "server.example"]
    finally:
        await store.close()


async def test_wal_and_schema_version(data_dir: Path) -> None:
    store = await opened(data_dir)
    await store.close()
    assert db_rows(data_dir, "PRAGMA journal_mode") == [("wal",)]
    assert db_rows(data_dir, "PRAGMA user_version") == [(schema.latest_version(),)]


async def test_migration_upgrades_an_older_database(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await opened(data_dir)
    await store.add_account("alice@example.org", "h")
    await store.close()

    def fill_notes(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE accounts SET note = 'migrated'")

    steps = [*schema.MIGRATIONS, "ALTER TABLE accounts ADD COLUMN note TEXT;", fill_notes]
    monkeypatch.setattr(schema, "MIGRATIONS", steps)
    store = await opened(data_dir)
    try:
        assert await store.get_account("alice@example.org") is not None
    finally:
        await store.close()
    assert db_rows(data_dir, "PRAGMA user_version") == [(len(steps),)]
    assert db_rows(data_dir, "SELECT note FROM accounts") == [("migrated",)]


async def test_a_newer_database_is_refused(data_dir: Path) -> None:
    store = await opened(data_dir)
    await store.close()
    with sqlite3.connect(data_dir / "mailhouse.db") as conn:
        conn.execute("PRAGMA user_version = 999")
    with pytest.raises(ConfigError, match="newer"):
        await opened(data_dir)


def test_statements_splits_scripts() -> None:
    assert schema.statements("CREATE TABLE a (x);\nINSERT INTO a VALUES (';');\n") == [
        "CREATE TABLE a (x);",
        "INSERT INTO a VALUES (';');",
    ]
    with pytest.raises(ValueError):
        schema.statements("CREATE TABLE a (x")


# --- blobs: reference counts and crash leftovers --------------------------------------------------
async def test_blob_file_goes_with_its_last_reference(data_dir: Path) -> None:
    store = await opened(data_dir)
    try:
        alice = await store.add_account("alice@example.org", "h")
        bob = await store.add_account("bob@example.org", "h")
        await deliver_bytes(store, MESSAGE, [DeliveryTarget(alice.id), DeliveryTarget(bob.id)])
        [path] = blob_files(data_dir)
        assert path.read_bytes() == MESSAGE
        assert db_rows(data_dir, "SELECT refcount FROM blobs") == [(2,)]
        await store.remove_account("alice@example.org")
        assert blob_files(data_dir) == [path]
        assert db_rows(data_dir, "SELECT refcount FROM blobs") == [(1,)]
        await store.remove_account("bob@example.org")
        assert blob_files(data_dir) == []
        assert db_rows(data_dir, "SELECT * FROM blobs") == []
    finally:
        await store.close()


async def test_undeliverable_message_leaves_no_file(data_dir: Path) -> None:
    store = await opened(data_dir)
    try:
        assert await deliver_bytes(store, MESSAGE, [DeliveryTarget(999)]) == [Outcome.PERMANENT]
        spool = store.new_spool()
        await spool.write(os.urandom(400_000))  # spilled to its file
        await spool.abort()
        assert blob_files(data_dir) == []
    finally:
        await store.close()


async def test_orphans_are_reaped_at_open(data_dir: Path) -> None:
    store = await opened(data_dir)
    alice = await store.add_account("alice@example.org", "h")
    await deliver_bytes(store, MESSAGE, [DeliveryTarget(alice.id)])
    await store.close()
    [kept] = blob_files(data_dir)
    orphan = kept.with_name("f" * 32)
    orphan.write_bytes(b"half a messa")
    temp = kept.with_name("something.tmp")
    temp.write_bytes(b"")
    unrelated = kept.with_name("README")  # not ours: never touched
    unrelated.write_bytes(b"")

    store = await opened(data_dir)
    try:
        assert sorted(blob_files(data_dir)) == sorted([kept, unrelated])
        [message] = await store.list_messages(await inbox(store, alice.id))
        assert await read_all(store, message) == MESSAGE
    finally:
        await store.close()


async def test_no_reaping_while_another_process_may_be_delivering(data_dir: Path) -> None:
    server = await opened(data_dir)
    try:
        spool = server.new_spool()
        await spool.write(os.urandom(300_000))  # in flight: its file exists, no row yet
        [in_flight] = blob_files(data_dir)
        cli = await opened(data_dir)
        await cli.close()
        assert blob_files(data_dir) == [in_flight]
        alice = await server.add_account("alice@example.org", "h")
        assert await server.deliver(spool, [DeliveryTarget(alice.id)]) == [Outcome.DELIVERED]
    finally:
        await server.close()


async def test_garbage_left_by_a_crash_is_collected_at_open(data_dir: Path) -> None:
    store = await opened(data_dir)
    alice = await store.add_account("alice@example.org", "h")
    await deliver_bytes(store, MESSAGE, [DeliveryTarget(alice.id)])
    await store.close()
    # As if the process died after committing refcount 0 but before unlinking the file.
    with sqlite3.connect(data_dir / "mailhouse.db") as conn:
        conn.execute("DELETE FROM messages")
        conn.execute("UPDATE blobs SET refcount = 0")
    store = await opened(data_dir)
    await store.close()
    assert blob_files(data_dir) == []
    assert db_rows(data_dir, "SELECT * FROM blobs") == []


# --- disk errors ----------------------------------------------------------------------------------
def failing(err: int) -> Callable[..., NoReturn]:
    def fail(*args: object) -> NoReturn:
        raise OSError(err, os.strerror(err))

    return fail


async def assert_nothing_stored(store: Store, data_dir: Path, account_id: int) -> None:
    messages = await store.list_messages(await inbox(store, account_id))
    assert messages == []
    [info] = [m for m in await store.list_mailboxes(account_id) if m.name == "INBOX"]
    assert (info.uidnext, info.highest_modseq, info.message_count) == (1, 1, 0)
    assert db_rows(data_dir, "SELECT * FROM blobs") == []
    assert blob_files(data_dir) == []


@pytest.mark.parametrize("call", ["write", "fsync"])
@pytest.mark.parametrize(
    ("err", "expected"),
    [(errno.ENOSPC, StorageFull), (errno.EDQUOT, StorageFull), (errno.EIO, MailError)],
)
async def test_disk_errors_store_nothing(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, call: str, err: int, expected: type
) -> None:
    store = await opened(data_dir)
    try:
        alice = await store.add_account("alice@example.org", "h")
        spool = store.new_spool()
        await spool.write(MESSAGE)
        with monkeypatch.context() as patch:
            patch.setattr(os, call, failing(err))
            with pytest.raises(MailError) as raised:
                await store.deliver(spool, [DeliveryTarget(alice.id)])
        assert type(raised.value) is expected
        assert raised.value.reply.code == (452 if expected is StorageFull else 451)
        await assert_nothing_stored(store, data_dir, alice.id)
        # Space is back: delivery resumes.
        assert await deliver_bytes(store, MESSAGE, [DeliveryTarget(alice.id)]) == [
            Outcome.DELIVERED
        ]
    finally:
        await store.close()


async def test_disk_full_while_spilling(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = await opened(data_dir)
    try:
        alice = await store.add_account("alice@example.org", "h")
        spool = store.new_spool()
        await spool.write(os.urandom(100_000))
        with monkeypatch.context() as patch:
            patch.setattr(os, "write", failing(errno.ENOSPC))
            with pytest.raises(StorageFull):
                await spool.write(os.urandom(200_000))
        with pytest.raises(StorageFull):  # the spool stays failed
            await spool.write(b"more")
        with pytest.raises(StorageFull):
            await store.deliver(spool, [DeliveryTarget(alice.id)])
        await spool.abort()
        await assert_nothing_stored(store, data_dir, alice.id)
    finally:
        await store.close()


async def test_directory_fsync_failure_fails_the_batch(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await opened(data_dir)
    try:
        alice = await store.add_account("alice@example.org", "h")
        await deliver_bytes(store, MESSAGE, [DeliveryTarget(alice.id)])  # the day dir exists
        [first] = blob_files(data_dir)
        with monkeypatch.context() as patch:
            patch.setattr(blobs, "sync_dir", failing(errno.ENOSPC))
            results = await asyncio.gather(
                *(deliver_bytes(store, MESSAGE, [DeliveryTarget(alice.id)]) for _ in range(5)),
                return_exceptions=True,
            )
        assert all(isinstance(r, StorageFull) for r in results)
        assert len(await store.list_messages(await inbox(store, alice.id))) == 1
        assert blob_files(data_dir) == [first]
    finally:
        await store.close()


def test_sqlite_full_is_storage_full() -> None:
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = 13
    assert isinstance(storage_error(full), StorageFull)
    locked = sqlite3.OperationalError("database is locked")
    locked.sqlite_errorcode = 5
    error = storage_error(locked)
    assert type(error) is MailError and error.temporary


# --- group commit ---------------------------------------------------------------------------------
@pytest.fixture
def writer_db(tmp_path: Path) -> Iterator[tuple[GroupCommitWriter, list[set[str]]]]:
    conn = sqlite3.connect(tmp_path / "w.db", isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("CREATE TABLE p (id INTEGER PRIMARY KEY)")
    conn.execute("CREATE TABLE t (x INTEGER UNIQUE)")
    conn.execute("CREATE TABLE c (p INTEGER REFERENCES p (id) DEFERRABLE INITIALLY DEFERRED)")
    synced: list[set[str]] = []
    writer = GroupCommitWriter(conn, lambda days: synced.append(set(days)))
    writer.start()
    yield writer, synced
    writer.stop()
    conn.close()


def insert(x: int) -> Callable[[sqlite3.Connection], int]:
    def apply(conn: sqlite3.Connection) -> int:
        conn.execute("INSERT INTO t (x) VALUES (?)", (x,))
        return x

    return apply


async def hold_writer(writer: GroupCommitWriter) -> tuple[asyncio.Task[None], threading.Event]:
    """Occupy the writer thread so that the next jobs queue up into one batch."""
    started, release = threading.Event(), threading.Event()

    def block(conn: sqlite3.Connection) -> None:
        started.set()
        release.wait(10)

    task = asyncio.create_task(writer.run(block))
    await asyncio.to_thread(started.wait, 10)
    return task, release


async def test_jobs_waiting_together_commit_together(writer_db: Any) -> None:
    writer, synced = writer_db
    holder, release = await hold_writer(writer)

    def lookup(conn: sqlite3.Connection) -> None:
        raise KeyError("nobody")

    jobs = [
        asyncio.create_task(writer.run(insert(1), sync_days=frozenset({"d1"}))),
        asyncio.create_task(writer.run(insert(1))),  # UNIQUE violation: fails alone
        asyncio.create_task(writer.run(lookup)),  # a caller's own error passes unchanged
        asyncio.create_task(writer.run(insert(2), sync_days=frozenset({"d1", "d2"}))),
    ]
    await asyncio.sleep(0.05)
    release.set()
    await holder
    results = await asyncio.gather(*jobs, return_exceptions=True)
    assert results[0] == 1 and results[3] == 2
    assert type(results[1]) is MailError
    assert isinstance(results[2], KeyError)
    assert (writer.stats.batches, writer.stats.jobs, writer.stats.largest_batch) == (2, 5, 4)
    assert synced == [{"d1", "d2"}]  # each directory once per batch


async def test_commit_failure_fails_the_whole_batch(writer_db: Any) -> None:
    writer, _ = writer_db
    holder, release = await hold_writer(writer)
    seen: list[tuple[str, bool]] = []

    def dangling(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO c (p) VALUES (42)")  # checked only at COMMIT

    jobs = [
        asyncio.create_task(writer.run(insert(7), on_failure=lambda m: seen.append(("a", m)))),
        asyncio.create_task(writer.run(dangling, on_failure=lambda m: seen.append(("b", m)))),
    ]
    await asyncio.sleep(0.05)
    release.set()
    await holder
    results = await asyncio.gather(*jobs, return_exceptions=True)
    assert all(type(r) is MailError for r in results)
    # The commit's fate is unknown to the callers: blobs must be kept for the reaper to judge.
    assert sorted(seen) == [("a", True), ("b", True)]
    assert await writer.run(lambda conn: conn.execute("SELECT count(*) FROM t").fetchone()[0]) == 0


async def test_closing_commits_what_is_queued(data_dir: Path) -> None:
    store = await opened(data_dir)
    alice = await store.add_account("alice@example.org", "h")
    tasks = [
        asyncio.create_task(deliver_bytes(store, MESSAGE, [DeliveryTarget(alice.id)]))
        for _ in range(20)
    ]
    await asyncio.sleep(0)
    results = await asyncio.gather(*tasks)
    await store.close()
    assert all(r == [Outcome.DELIVERED] for r in results)
    with pytest.raises(RuntimeError):
        store.new_spool()
    assert len(db_rows(data_dir, "SELECT * FROM messages")) == 20
