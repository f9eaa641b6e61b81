"""Structures stored beside messages (Store.structures) and ranged reads (Store.read_range):
the contract over every implementation, then the embedded store's own promises — parsed at
delivery into the blob row, shared by copies, re-parsed and saved when missing or stale."""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailhouse.message.structure import parse_message
from mailhouse.message.structure_codec import from_bytes
from mailhouse.store import open_store, structures
from mailhouse.store.base import DeliveryTarget, MailboxInfo, Store
from mailhouse.store.blobs import BlobFiles, FileSpool
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


def _never_read_back(*_: object) -> bytes | None:
    raise AssertionError("a stored message was read back to parse it")


BIG = MESSAGE.replace(b"hello\r\n", (b"y" * 78 + b"\r\n") * 8000)  # past the spool's memory


async def test_large_deliveries_and_appends_are_parsed_as_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store(tmp_path / "data")
    await store.open()
    try:
        inbox = await _inbox(store)
        monkeypatch.setattr(structures, "parse_file", _never_read_back)
        await deliver_bytes(store, BIG, [DeliveryTarget(inbox.account_id)], chunk=5000)
        spool = store.new_spool()
        for start in range(0, len(BIG), 70000):
            await spool.write(BIG[start:start + 70000])
        await store.append(inbox.id, spool)
        found = await store.structures(inbox.id, [1, 2])
        assert found == {1: parse_message(BIG), 2: parse_message(BIG)}
    finally:
        await store.close()


async def test_structures_survive_reopening(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    for step in ("write", "reopen"):
        store = open_store(tmp_path / "data")
        await store.open()
        try:
            if step == "write":
                inbox = await _inbox(store)
                await deliver_bytes(store, MESSAGE, [DeliveryTarget(inbox.account_id)])
                continue
            account = await store.get_account("alice@example.org")
            assert account is not None
            reopened = await store.get_mailbox(account.id, "INBOX")
            assert reopened is not None
            monkeypatch.setattr(structures, "parse_file", _never_read_back)
            assert await store.structures(reopened.id, [1]) == {1: parse_message(MESSAGE)}
        finally:
            await store.close()


async def test_each_message_has_its_own_structure(store: Store) -> None:
    inbox = await _inbox(store)
    for n in range(3):
        await deliver_bytes(store, MESSAGE.replace(b"Parts", b"Part %d" % n),
                            [DeliveryTarget(inbox.account_id)])
    found = await store.structures(inbox.id, range(1, 10))
    assert [found[uid].search.base_subject for uid in sorted(found)] == [
        "PART 0", "PART 1", "PART 2"]


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(min_value=1, max_value=3000), min_size=1, max_size=40),
       spill_at=st.integers(min_value=1, max_value=4000))
def test_spilled_spool_parses_like_the_whole_message(
        tmp_path_factory: pytest.TempPathFactory, cuts: list[int], spill_at: int) -> None:
    """However the bytes arrive and wherever the spool spills, the structure parsed in the
    write thread is the one of the whole message."""
    data = MESSAGE * 20
    files = BlobFiles(tmp_path_factory.mktemp("blobs"))
    files.prepare()

    async def write() -> bytes | None:
        with ThreadPoolExecutor(1) as executor:
            spool = FileSpool(files, executor, spill_at=spill_at)
            start = 0
            for cut in cuts * (len(data) // sum(cuts) + 1):
                if start >= len(data):
                    break
                await spool.write(data[start:start + cut])
                start += cut
            await spool.seal()
            return spool.parsed() if spool.spilled else None

    parsed = asyncio.run(write())
    if parsed is not None:
        assert from_bytes(parsed) == parse_message(data)


async def test_search_fields_are_the_structures_own(store: Store) -> None:
    inbox = await _inbox(store)
    await deliver_bytes(store, MESSAGE, [DeliveryTarget(inbox.account_id)])
    spool = store.new_spool()
    await spool.write(MESSAGE.replace(b"Parts", b"Appended"))
    await store.append(inbox.id, spool)
    fields = await store.search_fields(inbox.id, [1, 2, 99])
    structures = await store.structures(inbox.id, [1, 2])
    assert set(fields) == {1, 2}
    assert fields == {uid: s.search for uid, s in structures.items()}


async def test_search_fields_stored_at_delivery_and_derived_for_old_rows(tmp_path: Path) -> None:
    store = open_store(tmp_path / "data")
    await store.open()
    try:
        inbox = await _inbox(store)
        await deliver_bytes(store, MESSAGE, [DeliveryTarget(inbox.account_id)])
        db = tmp_path / "data" / "mailhouse.db"
        with sqlite3.connect(db) as conn:
            (search,) = conn.execute("SELECT search FROM blobs").fetchone()
            assert search is not None and len(search) < 600
            conn.execute("UPDATE blobs SET search = NULL")  # as a row stored before version 9
            conn.execute("UPDATE message_search SET search = NULL")
        expected = parse_message(MESSAGE).search
        assert (await store.search_fields(inbox.id, [1]))[1] == expected
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT search FROM blobs").fetchone()[0] is not None
            conn.execute("UPDATE blobs SET search = ?", (b"[0, []]",))  # another version
            conn.execute("UPDATE message_search SET search = ?", (b"[0, []]",))
        assert (await store.search_fields(inbox.id, [1]))[1] == expected
    finally:
        await store.close()
