"""Expunge and its history (Store.expunge, Store.list_expunged, Store.get_mailbox): the contract
run against every implementation, then what only the embedded store adds (blob files, durability
across a reopen, a cancelled caller).

POP3 deletions (RFC 1939 §6) and IMAP EXPUNGE both end here, so what IMAP's QRESYNC will need
(RFC 7162 §3.1 MODSEQ, §3.2.10 VANISHED) is asserted now.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from mailhouse.store import open_store
from mailhouse.store.base import (
    DeliveryTarget,
    ExpungedMessage,
    MailboxInfo,
    MessageInfo,
    Outcome,
    QueueRequest,
    Store,
)
from tests.store.conftest import chunks_of, deliver_bytes, read_all

MESSAGE = b"From: a@example.org\r\nSubject: gone soon\r\n\r\nhello\r\n"


async def inbox(store: Store, account_id: int) -> MailboxInfo:
    found = await store.get_mailbox(account_id, "INBOX")
    assert found is not None
    return found


async def filled(store: Store, count: int, address: str = "alice@example.org") -> MailboxInfo:
    """An account whose INBOX holds `count` messages, UIDs 1..count, MODSEQs 2..count + 1 (an
    empty mailbox is at HIGHESTMODSEQ 1, RFC 7162 §3.1.2.1)."""
    account = await store.add_account(address, "h")
    for i in range(count):
        body = b"Subject: %d\r\n\r\nbody %d\r\n" % (i, i)
        assert await deliver_bytes(store, body, [DeliveryTarget(account.id)]) == [
            Outcome.DELIVERED
        ]
    return await inbox(store, account.id)


async def uids(store: Store, mailbox_id: int) -> list[int]:
    return [m.uid for m in await store.list_messages(mailbox_id)]


# --- get_mailbox --------------------------------------------------------------------------------
async def test_get_mailbox_by_name(store: Store) -> None:
    alice = await store.add_account("alice@example.org", "h")
    listed = {m.name: m for m in await store.list_mailboxes(alice.id)}
    assert await store.get_mailbox(alice.id, "INBOX") == listed["INBOX"]
    assert await store.get_mailbox(alice.id, "inBox") == listed["INBOX"]  # RFC 9051 §5.1
    assert await store.get_mailbox(alice.id, "Archive") == listed["Archive"]
    assert await store.get_mailbox(alice.id, "archive") is None  # other names keep their case
    assert await store.get_mailbox(alice.id + 10_000, "INBOX") is None


async def test_get_mailbox_sees_current_counters(store: Store) -> None:
    box = await filled(store, 2)
    fresh = await inbox(store, box.account_id)
    assert (fresh.uidnext, fresh.highest_modseq, fresh.message_count) == (3, 3, 2)


# --- expunge: what changes ------------------------------------------------------------------------
async def test_messages_listed_in_uid_order(store: Store) -> None:
    """POP3 numbers messages 1..n in this order at login (RFC 1939 §5), so it is contract."""
    box = await filled(store, 5)
    await store.expunge(box.id, [2, 4])
    listed: list[MessageInfo] = await store.list_messages(box.id)
    assert [m.uid for m in listed] == [1, 3, 5]


async def test_expunge_removes_and_spends_one_modseq(store: Store) -> None:
    box = await filled(store, 3)
    assert await store.expunge(box.id, [1, 3]) == 2
    assert await uids(store, box.id) == [2]
    after = await inbox(store, box.account_id)
    # One change, one MODSEQ above every earlier one; UIDNEXT never goes back (RFC 9051 §2.3.1.1).
    assert (after.highest_modseq, after.message_count, after.uidnext) == (5, 1, 4)
    assert after.uidvalidity == box.uidvalidity
    assert await store.list_expunged(box.id) == [ExpungedMessage(1, 5), ExpungedMessage(3, 5)]


async def test_each_expunge_gets_its_own_modseq_and_history_filters_by_it(store: Store) -> None:
    box = await filled(store, 4)
    assert await store.expunge(box.id, [2]) == 1
    assert await store.expunge(box.id, (4, 1)) == 2
    assert await store.list_expunged(box.id) == [
        ExpungedMessage(1, 7),
        ExpungedMessage(2, 6),
        ExpungedMessage(4, 7),
    ]
    # VANISHED (EARLIER) for a client that last saw MODSEQ 6 (RFC 7162 §3.2.5.2).
    assert await store.list_expunged(box.id, 6) == [ExpungedMessage(1, 7), ExpungedMessage(4, 7)]
    assert await store.list_expunged(box.id, 7) == []
    assert (await inbox(store, box.account_id)).highest_modseq == 7


async def test_later_deliveries_keep_ascending(store: Store) -> None:
    box = await filled(store, 2)
    await store.expunge(box.id, [1, 2])
    await deliver_bytes(store, MESSAGE, [DeliveryTarget(box.account_id)])
    [message] = await store.list_messages(box.id)
    assert (message.uid, message.modseq) == (3, 5)
    assert await read_all(store, message) == MESSAGE


async def test_only_the_named_mailbox_changes(store: Store) -> None:
    alice = await filled(store, 2)
    bob = await filled(store, 2, "bob@example.org")
    await store.expunge(alice.id, [1, 2])
    assert await uids(store, bob.id) == [1, 2]
    assert (await inbox(store, bob.account_id)).highest_modseq == 3
    assert await store.list_expunged(bob.id) == []


# --- expunge: what does not change ----------------------------------------------------------------
async def test_unknown_uids_and_mailboxes_are_ignored(store: Store) -> None:
    box = await filled(store, 2)
    assert await store.expunge(box.id, []) == 0
    assert await store.expunge(box.id, [0, 3, 99, 2**32]) == 0
    assert await store.expunge(box.id + 10_000, [1]) == 0
    after = await inbox(store, box.account_id)
    assert (after.highest_modseq, after.message_count) == (3, 2)  # no change, no MODSEQ spent
    assert await uids(store, box.id) == [1, 2]
    assert await store.list_expunged(box.id) == []


async def test_expunge_is_idempotent(store: Store) -> None:
    box = await filled(store, 3)
    assert await store.expunge(box.id, [2, 2, 2]) == 1  # a UID named twice counts once
    assert await store.expunge(box.id, [2]) == 0
    assert await store.expunge(box.id, [2, 3]) == 1  # the known part of a mixed list
    assert await uids(store, box.id) == [1]
    assert await store.list_expunged(box.id) == [ExpungedMessage(2, 5), ExpungedMessage(3, 6)]
    assert (await inbox(store, box.account_id)).highest_modseq == 6


async def test_racing_expunges_of_one_message_remove_it_once(store: Store) -> None:
    """A POP3 QUIT and an IMAP EXPUNGE of the same message at the same moment."""
    box = await filled(store, 2)
    results = await asyncio.gather(*(store.expunge(box.id, [1]) for _ in range(5)))
    assert sorted(results) == [0, 0, 0, 0, 1]
    after = await inbox(store, box.account_id)
    assert (after.highest_modseq, after.message_count) == (4, 1)


# --- expunge: the bytes ---------------------------------------------------------------------------
async def test_a_shared_blob_stays_until_its_last_copy_goes(store: Store) -> None:
    alice = await store.add_account("alice@example.org", "h")
    bob = await store.add_account("bob@example.org", "h")
    targets = [DeliveryTarget(alice.id), DeliveryTarget(bob.id), DeliveryTarget(bob.id, "Archive")]
    assert await deliver_bytes(store, MESSAGE, targets) == [Outcome.DELIVERED] * 3
    alice_inbox, bob_inbox = await inbox(store, alice.id), await inbox(store, bob.id)
    archive = await store.get_mailbox(bob.id, "Archive")
    assert archive is not None
    [copy] = await store.list_messages(bob_inbox.id)

    assert await store.expunge(alice_inbox.id, [1]) == 1
    assert await read_all(store, copy) == MESSAGE
    assert await store.expunge(bob_inbox.id, [1]) == 1
    [last] = await store.list_messages(archive.id)
    assert await read_all(store, last) == MESSAGE
    assert await store.expunge(archive.id, [1]) == 1
    with pytest.raises(KeyError):
        await read_all(store, last)


async def test_a_queue_entry_keeps_the_blob(store: Store) -> None:
    alice = await store.add_account("alice@example.org", "h")
    spool = store.new_spool()
    await spool.write(MESSAGE)
    request = QueueRequest("alice@example.org", ("bob@remote.example",))
    assert await store.deliver(spool, [DeliveryTarget(alice.id)], queue=request) == [
        Outcome.DELIVERED
    ]
    box = await inbox(store, alice.id)
    [queued] = await store.queue_list()
    assert await store.expunge(box.id, [1]) == 1
    assert b"".join(await chunks_of(store.read_blob(queued.blob_id))) == MESSAGE
    assert await store.queue_delete(queued.id)
    with pytest.raises(KeyError):
        await chunks_of(store.read_blob(queued.blob_id))


async def test_removing_the_account_after_expunges(store: Store) -> None:
    """Reference counts stay right when an account with expunged and live copies goes."""
    alice = await filled(store, 3)
    bob = await store.add_account("bob@example.org", "h")
    await deliver_bytes(store, MESSAGE, [DeliveryTarget(alice.account_id), DeliveryTarget(bob.id)])
    await store.expunge(alice.id, [1, 4])
    assert await store.remove_account("alice@example.org")
    [copy] = await store.list_messages((await inbox(store, bob.id)).id)
    assert await read_all(store, copy) == MESSAGE


# --- the embedded store -------------------------------------------------------------------------
@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


async def sqlite_store(data_dir: Path) -> Store:
    store = open_store(data_dir, "sqlite")
    await store.open()
    return store


def blob_files(data_dir: Path) -> list[Path]:
    return sorted(p for p in (data_dir / "blobs").glob("*/*") if p.is_file())


def db_rows(data_dir: Path, query: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(data_dir / "mailhouse.db") as conn:
        return conn.execute(query).fetchall()


async def test_the_file_goes_with_the_last_reference(data_dir: Path) -> None:
    store = await sqlite_store(data_dir)
    try:
        alice = await store.add_account("alice@example.org", "h")
        bob = await store.add_account("bob@example.org", "h")
        await deliver_bytes(store, MESSAGE, [DeliveryTarget(alice.id), DeliveryTarget(bob.id)])
        await deliver_bytes(store, b"Subject: other\r\n\r\n", [DeliveryTarget(alice.id)])
        shared, _ = await store.list_messages((await inbox(store, alice.id)).id)
        assert len(blob_files(data_dir)) == 2

        assert await store.expunge((await inbox(store, alice.id)).id, [1, 2]) == 2
        assert blob_files(data_dir) == [data_dir / "blobs" / shared.blob_id]
        assert db_rows(data_dir, "SELECT id, refcount FROM blobs") == [(shared.blob_id, 1)]
        assert await store.expunge((await inbox(store, bob.id)).id, [1]) == 1
        assert blob_files(data_dir) == []
        assert db_rows(data_dir, "SELECT * FROM blobs") == []
    finally:
        await store.close()


async def test_a_queued_file_survives_the_expunge(data_dir: Path) -> None:
    store = await sqlite_store(data_dir)
    try:
        alice = await store.add_account("alice@example.org", "h")
        spool = store.new_spool()
        await spool.write(MESSAGE)
        request = QueueRequest("alice@example.org", ("bob@remote.example",))
        await store.deliver(spool, [DeliveryTarget(alice.id)], queue=request)
        await store.expunge((await inbox(store, alice.id)).id, [1])
        [path] = blob_files(data_dir)
        assert path.read_bytes() == MESSAGE
        assert db_rows(data_dir, "SELECT refcount FROM blobs") == [(1,)]
    finally:
        await store.close()


async def test_expunges_survive_a_reopen(data_dir: Path) -> None:
    store = await sqlite_store(data_dir)
    box = await filled(store, 3)
    assert await store.expunge(box.id, [1, 2]) == 2
    await store.close()  # group commit: durable when expunge returned; close only stops threads

    store = await sqlite_store(data_dir)
    try:
        assert await uids(store, box.id) == [3]
        after = await inbox(store, box.account_id)
        assert (after.highest_modseq, after.message_count, after.uidnext) == (5, 1, 4)
        assert await store.list_expunged(box.id) == [ExpungedMessage(1, 5), ExpungedMessage(2, 5)]
        assert len(blob_files(data_dir)) == 1
        assert await store.expunge(box.id, [1, 2]) == 0
    finally:
        await store.close()
    assert db_rows(data_dir, "SELECT mailbox_id, uid, modseq FROM expunged ORDER BY uid") == [
        (box.id, 1, 5),
        (box.id, 2, 5),
    ]


async def test_a_long_uid_list_is_one_parameter(data_dir: Path) -> None:
    """More UIDs than SQLite allows host parameters (32766): bound as one JSON array."""
    store = await sqlite_store(data_dir)
    try:
        box = await filled(store, 3)
        assert await store.expunge(box.id, range(2, 40_000)) == 2
        assert await uids(store, box.id) == [1]
    finally:
        await store.close()


async def test_a_cancelled_caller_still_gets_its_files_unlinked(data_dir: Path) -> None:
    """The client hangs up during QUIT: the writer commits the removal anyway, so the unlink
    of the files it freed must still happen (not wait for the next exclusive open)."""
    store = await sqlite_store(data_dir)
    try:
        box = await filled(store, 2)
        assert len(blob_files(data_dir)) == 2
        task = asyncio.create_task(store.expunge(box.id, [1, 2]))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(500):
            if not blob_files(data_dir):
                break
            await asyncio.sleep(0.01)
        assert blob_files(data_dir) == []
        assert await uids(store, box.id) == []
    finally:
        await store.close()
