"""Structures stored beside messages (Store.structures) and ranged reads (Store.read_range):
the contract over every implementation, then the embedded store's own promises — parsed at
delivery into the blob row, shared by copies, re-parsed and saved when missing or stale."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from mailhouse.message.structure import parse_message
from mailhouse.store import open_store
from mailhouse.store.base import DeliveryTarget, MailboxInfo, Store
from tests.store.conftest import deliver_bytes

MESSAGE = (b"From: Bob <bob@example.net>\r\nSubject: Parts\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=z\r\n\r\n--z\r\n"
           b"Content-Type: text/plain\r\n\r\nhello\r\n--z\r\n"
           b"Content-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           b"iVBORw0KGgo=\r\n--z--\r\n")


async def _inbox(store: Store) -> MailboxInfo:
    account = await store.add_account("alice@example.org", "h")
    inbox = await store.get_mailbox(account.id, "INBOX")
    assert inbox is not None
    return inbox


async def test_structure_after_deliver_append_copy_and_move(store: Store) -> None:
    inbox = await _inbox(store)
    await deliver_bytes(store, MESSAGE, [DeliveryTarget(inbox.account_id)])
    spool = store.new_spool()
    await spool.write(MESSAGE.replace(b"Parts", b"Appended"))
    await store.append(inbox.id, spool)
    expected = parse_message(MESSAGE)
    found = await store.structures(inbox.id, [1, 2, 99])
    assert set(found) == {1, 2}
    assert found[1] == expected
    assert found[2].search.base_subject == "APPENDED"
    archive = await store.get_mailbox(inbox.account_id, "Archive")
    trash = await store.get_mailbox(inbox.account_id, "Trash")
    assert archive is not None and trash is not None
    await store.copy_messages(inbox.id, [1], archive.id)
    await store.move_messages(inbox.id, [2], trash.id)
    assert (await store.structures(archive.id, [1]))[1] == expected
    assert (await store.structures(trash.id, [1]))[1].search.base_subject == "APPENDED"
    assert await store.structures(inbox.id, [2]) == {}
    assert await store.structures(123456, [1]) == {}


async def test_large_message_structure(store: Store) -> None:
    # Past the spool's memory buffer the structure comes from the written file.
    inbox = await _inbox(store)
    body = b"x" * 998 + b"\r\n"
    data = MESSAGE.replace(b"hello\r\n", body * 600)
    await deliver_bytes(store, data, [DeliveryTarget(inbox.account_id)], chunk=65536)
    found = (await store.structures(inbox.id, [1]))[1]
    assert found == parse_message(data)
    assert found.root.children[0].body_size == len(body) * 600 - 2  # CRLF before "--z"


async def test_read_range_edges(store: Store) -> None:
    inbox = await _inbox(store)
    await deliver_bytes(store, MESSAGE, [DeliveryTarget(inbox.account_id)])
    message = (await store.list_messages(inbox.id))[0]
    size = len(MESSAGE)
    assert await store.read_range(message, 0, size) == MESSAGE
    assert await store.read_range(message, 6, 9) == MESSAGE[6:9]
    assert await store.read_range(message, size - 2, size + 100) == b"\r\n"
    assert await store.read_range(message, size, size + 5) == b""
    assert await store.read_range(message, 4, 4) == b""


async def test_old_rows_are_parsed_on_first_use_and_saved(tmp_path: Path) -> None:
    store = open_store(tmp_path / "data")
    await store.open()
    try:
        inbox = await _inbox(store)
        await deliver_bytes(store, MESSAGE, [DeliveryTarget(inbox.account_id)])
        db = tmp_path / "data" / "mailhouse.db"
        with sqlite3.connect(db) as conn:  # as a row stored before schema version 8
            conn.execute("UPDATE blobs SET structure = NULL")
        assert (await store.structures(inbox.id, [1]))[1] == parse_message(MESSAGE)
        with sqlite3.connect(db) as conn:
            saved = conn.execute("SELECT structure FROM blobs").fetchall()
            assert saved[0][0] is not None
            conn.execute("UPDATE blobs SET structure = ?", (b'{"v": 0}',))  # an older codec
        assert (await store.structures(inbox.id, [1]))[1] == parse_message(MESSAGE)
    finally:
        await store.close()


async def test_structure_is_stored_in_the_delivery(tmp_path: Path) -> None:
    store = open_store(tmp_path / "data")
    await store.open()
    try:
        inbox = await _inbox(store)
        await deliver_bytes(store, MESSAGE, [DeliveryTarget(inbox.account_id)])
        with sqlite3.connect(tmp_path / "data" / "mailhouse.db") as conn:
            (data,) = conn.execute("SELECT structure FROM blobs").fetchone()
        assert data is not None and b"Parts" in data
    finally:
        await store.close()
