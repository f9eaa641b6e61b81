"""`message_search` (schema v10) holds exactly each message's search fields, whatever wrote the
message: kept by triggers on `messages` and by delivery/APPEND (which store the blob row
after the message rows)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from mailhouse.store import open_store
from mailhouse.store.base import DeliveryTarget, MailboxInfo
from mailhouse.store.sqlite import SqliteStore
from tests.store.conftest import deliver_bytes

_BY_JOIN = ("SELECT m.mailbox_id, m.uid, b.search FROM messages m JOIN blobs b"
            " ON b.id = m.blob_id ORDER BY 1, 2")
_KEPT = "SELECT mailbox_id, uid, search FROM message_search ORDER BY 1, 2"


def _message(n: int) -> bytes:
    return f"From: n{n}@example.net\r\nSubject: Number {n}\r\n\r\nbody {n}\r\n".encode()


def _same(db: Path) -> list[tuple[int, int, bytes]]:
    with sqlite3.connect(db) as conn:
        kept = conn.execute(_KEPT).fetchall()
        assert kept == conn.execute(_BY_JOIN).fetchall()
    assert all(search is not None for _, _, search in kept)
    return kept


async def _box(store: SqliteStore, account_id: int, name: str) -> MailboxInfo:
    box = await store.get_mailbox(account_id, name)
    assert box is not None
    return box


async def test_every_write_keeps_message_search_exact(tmp_path: Path) -> None:
    store = open_store(tmp_path / "data")
    assert isinstance(store, SqliteStore)
    db = tmp_path / "data" / "mailhouse.db"
    await store.open()
    try:
        alice = await store.add_account("alice@example.org", "h")
        bob = await store.add_account("bob@example.org", "h")
        for n in range(3):  # one delivery to two accounts: two rows, one blob
            await deliver_bytes(store, _message(n), [DeliveryTarget(alice.id),
                                                     DeliveryTarget(bob.id)])
        inbox = await _box(store, alice.id, "INBOX")
        spool = store.new_spool()
        await spool.write(_message(9))
        await store.append(inbox.id, spool)
        assert len(_same(db)) == 7
        archive = await _box(store, alice.id, "Archive")
        trash = await _box(store, alice.id, "Trash")
        await store.copy_messages(inbox.id, [1, 2], archive.id)
        await store.move_messages(inbox.id, [3], trash.id)
        await store.expunge(inbox.id, [1])
        assert len(_same(db)) == 8
        await store.rename_mailbox(alice.id, "INBOX", "Old")  # INBOX's messages move
        await store.delete_mailbox(alice.id, "Archive")  # its messages go by cascade
        assert len(_same(db)) == 6
        await store.remove_account("bob@example.org")
        assert len(_same(db)) == 3
    finally:
        await store.close()


async def test_an_upgrade_fills_message_search(tmp_path: Path) -> None:
    store = open_store(tmp_path / "data")
    await store.open()
    try:
        alice = await store.add_account("alice@example.org", "h")
        for n in range(4):
            await deliver_bytes(store, _message(n), [DeliveryTarget(alice.id)])
    finally:
        await store.close()
    db = tmp_path / "data" / "mailhouse.db"
    with sqlite3.connect(db) as conn:  # as version 9 left it
        for name in ("insert", "delete", "renumber"):
            conn.execute(f"DROP TRIGGER message_search_{name}")
        conn.execute("DROP TABLE message_search")
        for later in ("api_tokens", "message_events", "admins", "audit"):  # 11's and 12's
            conn.execute(f"DROP TABLE {later}")
        conn.execute("ALTER TABLE queue DROP COLUMN trace")  # 12's
        conn.execute("ALTER TABLE queue DROP COLUMN bounce_requested")  # 13's
        conn.execute("PRAGMA user_version = 9")
    store = open_store(tmp_path / "data")
    await store.open()
    try:
        assert len(_same(db)) == 4
        inbox = await store.get_mailbox(alice.id, "INBOX")
        assert inbox is not None
        assert set(await store.search_fields(inbox.id, [1, 2, 3, 4])) == {1, 2, 3, 4}
    finally:
        await store.close()
