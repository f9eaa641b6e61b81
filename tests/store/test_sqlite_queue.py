"""What only the embedded store promises for the outbound queue: it survives a reopen, other
processes (the `mailhouse queue` CLI) see and edit it, blob files follow their references, the
hot queries use the due index, and databases of earlier schema versions upgrade in place."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from mailhouse.store import open_store, schema, sqlite_mailboxes, sqlite_messages, sqlite_queue
from mailhouse.store.base import (
    DEFAULT_MAILBOXES,
    DeliveryTarget,
    QueueRequest,
    RecipientStatus,
    RecipientUpdate,
    Store,
)
from tests.store.conftest import chunks_of, deliver_bytes

MESSAGE = b"Subject: queued\r\n\r\nbody\r\n"
DATA = Path(__file__).parent / "data"
PENDING, DELIVERED, FAILED = (
    RecipientStatus.PENDING,
    RecipientStatus.DELIVERED,
    RecipientStatus.FAILED,
)


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


async def queue_bytes(
    store: Store,
    data: bytes,
    recipients: tuple[str, ...],
    targets: list[DeliveryTarget] | None = None,
) -> int:
    spool = store.new_spool()
    await spool.write(data)
    await store.deliver(spool, targets or [], queue=QueueRequest("a@example.org", recipients))
    return max(m.id for m in await store.queue_list())


async def test_queue_survives_a_reopen(data_dir: Path) -> None:
    store = await opened(data_dir)
    big = b"Subject: big\r\n\r\n" + b"x" * 700_000  # spilled to its file while written
    first = await queue_bytes(store, MESSAGE, ("a@x.example", "b@y.example"))
    second = await queue_bytes(store, big, ("c@z.example",))
    await store.queue_update(
        first,
        [
            RecipientUpdate("a@x.example", PENDING, 12_345.0, "451 4.3.0 later"),
            RecipientUpdate("b@y.example", FAILED, 0, "550 5.1.1 unknown"),
        ],
        delay_warned=True,
    )
    before = await store.queue_list()
    await store.close()

    store = await opened(data_dir)
    try:
        assert await store.queue_list() == before
        [one, two] = before
        assert (one.id, two.id) == (first, second)
        assert one.delay_warned and one.recipients[0].next_attempt == 12_345.0
        assert b"".join(await chunks_of(store.read_blob(two.blob_id))) == big
        assert await store.queue_next_attempt() == 12_345.0
    finally:
        await store.close()


async def test_blob_refcount_counts_the_queue_entry(data_dir: Path) -> None:
    store = await opened(data_dir)
    try:
        alice = await store.add_account("alice@example.org", "h")
        shared = await queue_bytes(store, MESSAGE, ("b@x.example",), [DeliveryTarget(alice.id)])
        alone = await queue_bytes(store, b"remote only\r\n", ("c@x.example",))
        assert sorted(db_rows(data_dir, "SELECT refcount FROM blobs")) == [(1,), (2,)]
        assert len(blob_files(data_dir)) == 2

        await store.queue_update(shared, [RecipientUpdate("b@x.example", DELIVERED, 0, "250")])
        assert sorted(db_rows(data_dir, "SELECT refcount FROM blobs")) == [(1,), (1,)]
        assert len(blob_files(data_dir)) == 2  # alice's copy still needs it

        assert await store.queue_delete(alone) is True
        [remaining] = blob_files(data_dir)
        assert remaining.read_bytes() == MESSAGE
        assert db_rows(data_dir, "SELECT refcount FROM blobs") == [(1,)]
        assert db_rows(data_dir, "SELECT count(*) FROM queue_recipients") == [(0,)]
    finally:
        await store.close()


async def test_failed_queue_entry_stores_nothing(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The queue entry is part of the delivery's job: if it cannot be written, neither are the
    local copies, and the blob file goes."""
    store = await opened(data_dir)
    try:
        alice = await store.add_account("alice@example.org", "h")

        def broken(*args: object) -> int:
            raise sqlite3.OperationalError("disk I/O error")

        monkeypatch.setattr(sqlite_queue, "insert", broken)
        with pytest.raises(Exception):  # noqa: B017 - a MailError of some kind
            await queue_bytes(store, MESSAGE, ("b@x.example",), [DeliveryTarget(alice.id)])
        assert db_rows(data_dir, "SELECT count(*) FROM messages") == [(0,)]
        assert blob_files(data_dir) == []
    finally:
        await store.close()


async def test_two_processes_claiming_at_once_never_take_the_same_message(data_dir: Path) -> None:
    """Two queue processes on one data directory (or two nodes on one store): each due message
    goes to exactly one claimer, whether the claims meet in one writer's batch or queue on the
    write lock between the two."""
    one, two = await opened(data_dir), await opened(data_dir)
    try:
        ids = [await queue_bytes(one, MESSAGE, (f"u{i}@x.example",)) for i in range(60)]
        now = time.time() + 10

        async def claimer(store: Store) -> list[int]:
            taken: list[int] = []
            while batch := await store.queue_claim(now, 3, 3600.0):
                taken.extend(m.id for m in batch)
            return taken

        results = await asyncio.gather(*(claimer(s) for s in (one, two, one, two)))
        assert sorted(i for taken in results for i in taken) == sorted(ids)  # each once
        assert await two.queue_claim(now + 3599, 100, 3600.0) == []
        assert len(await one.queue_claim(now + 3600, 100, 3600.0)) == 60
    finally:
        await two.close()
        await one.close()


async def test_another_process_edits_the_queue_of_a_running_store(data_dir: Path) -> None:
    server = await opened(data_dir)
    try:
        later = 4_000_000_000.0
        spool = server.new_spool()
        await spool.write(MESSAGE)
        await server.deliver(
            spool, [], queue=QueueRequest("a@example.org", ("b@x.example",), not_before=later)
        )
        [message] = await server.queue_list()
        cli = await opened(data_dir)  # what `mailhouse queue flush` does
        try:
            assert [m.id for m in await cli.queue_list()] == [message.id]
            assert await cli.queue_retry(None, 1_000.0) == 1
        finally:
            await cli.close()
        assert await server.queue_next_attempt() == 1_000.0
        cli = await opened(data_dir)
        try:
            assert await cli.queue_delete(message.id) is True
        finally:
            await cli.close()
        assert await server.queue_list() == []
        # The worker's late update for the deleted message is harmless.
        await server.queue_update(message.id, [RecipientUpdate("b@x.example", DELIVERED, 0, "")])
        assert blob_files(data_dir) == []
    finally:
        await server.close()


async def test_hot_queue_queries_use_an_index(data_dir: Path) -> None:
    """The statements the scheduler runs on every wake-up and every attempt never scan a table:
    a queue holding many finished or deferred recipients must not slow each wake-up down. The
    real statements are traced (parameters bound) and each one's query plan is checked."""
    load_dump(data_dir, 2)
    store = await opened(data_dir)  # migrated to the latest version
    await store.close()
    conn = sqlite3.connect(data_dir / "mailhouse.db", isolation_level=None)
    traced: list[str] = []
    try:
        conn.set_trace_callback(traced.append)
        sqlite_queue.due(conn, 1_900_000_000.0, 10)
        sqlite_queue.next_attempt(conn)
        sqlite_queue.get(conn, 1)
        conn.execute("BEGIN")
        sqlite_queue.update(
            conn,
            1,
            [
                RecipientUpdate("bob@remote.example", DELIVERED, 0, "250 ok"),
            ],
            delay_warned=True,
        )  # the last pending one: the message leaves the queue
        sqlite_queue.update(
            conn,
            2,
            [
                RecipientUpdate("alice@remote.example", PENDING, 5.0, "451 later"),
            ],
            delay_warned=None,
        )
        sqlite_queue.retry(conn, None, 1.0)
        sqlite_queue.retry(conn, 2, 1.0)
        sqlite_queue.bounce(conn, 2, 1.0)
        sqlite_queue.remove(conn, 2)
        conn.set_trace_callback(None)
        statements = [s for s in traced if s.split(None, 1)[0] in ("SELECT", "UPDATE", "DELETE")]
        assert len(statements) >= 10
        for statement in statements:
            plan = " / ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + statement))
            assert not re.search(r"\bSCAN (queue|queue_recipients|blobs)\b", plan), (
                f"{statement}: {plan}"
            )
        conn.execute("ROLLBACK")
    finally:
        conn.close()


# --- schema versions ------------------------------------------------------------------------------
def load_dump(data_dir: Path, version: int) -> None:
    data_dir.mkdir(parents=True)
    with sqlite3.connect(data_dir / "mailhouse.db") as conn:
        conn.executescript((DATA / f"schema_v{version}.sql").read_text(encoding="utf-8"))
        conn.execute(f"PRAGMA user_version = {version:d}")


async def test_a_version_1_database_upgrades_in_place(data_dir: Path) -> None:
    """A database written by the release before the queue existed opens, keeps every row, and
    can queue mail at once."""
    load_dump(data_dir, 1)
    store = await opened(data_dir)
    try:
        assert db_rows(data_dir, "PRAGMA user_version") == [(schema.latest_version(),)]
        assert await store.list_domains() == ["example.org"]
        alice = await store.get_account("alice@example.org")
        assert alice is not None and alice.password_hash == "$argon2id$fixture"
        assert await store.list_aliases() == {"postmaster@example.org": ("alice@example.org",)}
        inbox = next(m for m in await store.list_mailboxes(alice.id) if m.name == "INBOX")
        assert (inbox.uidnext, inbox.message_count) == (2, 1)
        assert await store.queue_list() == []
        assert await store.queue_next_attempt() is None
        queued = await queue_bytes(store, MESSAGE, ("b@x.example",), [DeliveryTarget(alice.id)])
        [message] = await store.queue_list()
        assert message.id == queued
        inbox = next(m for m in await store.list_mailboxes(alice.id) if m.name == "INBOX")
        assert inbox.uidnext == 3
    finally:
        await store.close()


async def test_a_live_version_1_store_upgrades_in_place(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same with real blob files: write with only the version 1 migration, reopen with
    all of them. (Version 1 has no subscriptions table: its `subscribed` column says it, and
    version 3 carries that over.)"""
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:1])
    monkeypatch.setattr(sqlite_mailboxes, "subscribe", lambda conn, account_id, name: None)
    # Nor an internal_zone column (version 4): bind the zone into an expression that drops it.
    monkeypatch.setattr(
        sqlite_messages,
        "_INSERT",
        "INSERT INTO messages (mailbox_id, uid, modseq, flags, internal_date, size, blob_id)"
        " VALUES (?, ?, ?, ?, ?, 0 * ? + ?, ?)",
    )
    # Nor a stored structure (version 8) or search fields (version 9).
    monkeypatch.setattr(
        sqlite_messages,
        "_INSERT_BLOB",
        "INSERT INTO blobs (id, size, refcount)"
        " VALUES (?, ?, ? + 0 * coalesce(length(?), 0) + 0 * coalesce(length(?), 0))",
    )
    # Nor the message_search table (version 10).
    monkeypatch.setattr(sqlite_messages, "_SET_SEARCH",
                        "UPDATE blobs SET size = size WHERE 0 AND ? AND ? AND ?")
    # Nor a quota (version 7).
    monkeypatch.setattr(sqlite_messages, "quota_allows", lambda conn, account_id, adding: True)
    # Nor the STATUS counters (version 5): only message_count moves.
    monkeypatch.setattr(
        sqlite_messages,
        "_CLAIM_BY_NAME",
        "UPDATE mailboxes SET uidnext = uidnext + 1, highest_modseq = highest_modseq + 1,"
        " message_count = message_count + ? + 0 * (? + ? + ?) WHERE account_id = ? AND name = ?"
        " RETURNING id, uidnext - 1, highest_modseq",
    )
    store = await opened(data_dir)
    alice = await store.add_account("alice@example.org", "h")
    await deliver_bytes(store, MESSAGE, [DeliveryTarget(alice.id)])
    await store.close()
    assert db_rows(data_dir, "PRAGMA user_version") == [(1,)]
    monkeypatch.undo()

    store = await opened(data_dir)
    try:
        assert db_rows(data_dir, "PRAGMA user_version") == [(schema.latest_version(),)]
        inbox = next(m for m in await store.list_mailboxes(alice.id) if m.name == "INBOX")
        assert inbox.subscribed
        assert (inbox.unseen, inbox.deleted, inbox.size) == (1, 0, len(MESSAGE))  # computed
        assert await store.list_subscriptions(alice.id) == sorted(n for n, _ in DEFAULT_MAILBOXES)
        [old] = await store.list_messages(inbox.id)
        assert b"".join(await chunks_of(store.read_message(old))) == MESSAGE
        queued = await queue_bytes(store, b"new\r\n", ("b@x.example",))
        await store.queue_update(queued, [RecipientUpdate("b@x.example", DELIVERED, 0, "250")])
        assert await store.queue_list() == []
        assert len(blob_files(data_dir)) == 1
    finally:
        await store.close()


async def test_version_2_queue_records_still_load(data_dir: Path) -> None:
    """Checklist item 37: queue records written by the release that introduced the queue load
    after any later upgrade (Stalwart #1853, #1858, #2283)."""
    load_dump(data_dir, 2)
    store = await opened(data_dir)
    try:
        first, bounce = await store.queue_list()
        assert (first.sender, first.size, first.body_8bit, first.smtputf8) == (
            "alice@example.org",
            21,
            True,
            False,
        )
        assert [
            (r.address, r.status, r.attempts, r.next_attempt, r.last_reply)
            for r in first.recipients
        ] == [
            ("bob@remote.example", PENDING, 1, 1_800_000_600.0, "451 4.7.1 greylisted"),
            ("carol@other.example", FAILED, 1, 1_800_000_000.0, "550 5.1.1 no such user"),
        ]
        assert bounce.sender == "" and bounce.recipients[0].status is PENDING
        assert [m.id for m in await store.queue_due(1_800_000_000.0, 10)] == [bounce.id]
        assert await store.queue_next_attempt() == 1_800_000_000.0
    finally:
        await store.close()


async def test_many_messages_leaving_at_once_leave_no_file_or_row(data_dir: Path) -> None:
    """Blob files of finished messages are unlinked in groups off the writer thread; when each
    update returns, its file and row are gone all the same."""
    store = await opened(data_dir)
    try:
        ids = [await queue_bytes(store, b"m%d\r\n" % i, (f"r{i}@x.example",)) for i in range(40)]
        assert len(blob_files(data_dir)) == 40

        async def finish(queue_id: int, index: int) -> None:
            update = RecipientUpdate(f"r{index}@x.example", DELIVERED, 0, "250")
            await store.queue_update(queue_id, [update])
            assert await store.queue_get(queue_id) is None

        await asyncio.gather(*(finish(q, i) for i, q in enumerate(ids)))
        assert blob_files(data_dir) == []
        assert db_rows(data_dir, "SELECT count(*) FROM blobs") == [(0,)]
    finally:
        await store.close()
