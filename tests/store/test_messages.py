"""APPEND, STORE, COPY and MOVE (Store.append, store_flags, copy_messages, move_messages): the
contract run against every implementation, including two embedded stores on one data directory;
then what only the embedded store adds (blob files and reference counts).

RFC 9051 §6.3.12, §6.4.6, §6.4.7; RFC 7162 §3.1 (MODSEQ, UNCHANGEDSINCE); RFC 4315 (APPENDUID,
COPYUID); RFC 6851 (MOVE).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from mailhouse.model import Account
from mailhouse.store import open_store
from mailhouse.store.base import (
    CopyResult,
    DeliveryTarget,
    ExpungedMessage,
    FlagOp,
    FlagUpdate,
    MailboxInfo,
    MailboxNotAllowed,
    MessageFlags,
    NoSuchMailbox,
    Store,
)
from mailhouse.store.rules import MAX_ZONE_MINUTES
from tests.store.conftest import deliver_bytes, read_all

MESSAGE = b"From: a@example.org\r\nSubject: appended\r\n\r\nhello\r\n"
SEEN, FLAGGED, DELETED = "\\Seen", "\\Flagged", "\\Deleted"


async def alice(store: Store) -> Account:
    return await store.add_account("alice@example.org", "h")


async def box(store: Store, account_id: int, name: str = "INBOX") -> MailboxInfo:
    found = await store.get_mailbox(account_id, name)
    assert found is not None, name
    return found


async def append(
    store: Store, mailbox_id: int, data: bytes = MESSAGE, flags: tuple[str, ...] = (), **kw: int
) -> tuple[int, int]:
    spool = store.new_spool()
    await spool.write(data)
    return await store.append(mailbox_id, spool, flags, **kw)


async def flags_of(store: Store, mailbox_id: int) -> dict[int, frozenset[str]]:
    return {m.uid: m.flags for m in await store.list_messages(mailbox_id)}


async def filled(store: Store, count: int) -> MailboxInfo:
    """alice's INBOX with `count` appended messages, UIDs 1..count, MODSEQs 2..count + 1."""
    account = await alice(store)
    inbox = await box(store, account.id)
    for i in range(count):
        await append(store, inbox.id, b"Subject: %d\r\n\r\n%d\r\n" % (i, i))
    return await box(store, account.id)


# --- append ---------------------------------------------------------------------------------------
async def test_append_returns_uidvalidity_and_uid(store: Store) -> None:
    account = await alice(store)
    inbox = await box(store, account.id)
    await deliver_bytes(store, MESSAGE, [DeliveryTarget(account.id)])
    result = await append(store, inbox.id, flags=(SEEN, "$Work"), internal_date=1_700_000_000,
                          internal_zone=-(4 * 60 + 30))
    assert result == (inbox.uidvalidity, 2)
    [_, message] = await store.list_messages(inbox.id)
    assert (message.uid, message.modseq, message.size) == (2, 3, len(MESSAGE))
    assert message.flags == frozenset({SEEN, "$Work"})
    assert (message.internal_date, message.internal_zone) == (1_700_000_000, -270)
    assert await read_all(store, message) == MESSAGE
    after = await box(store, account.id)
    assert (after.uidnext, after.highest_modseq, after.message_count) == (3, 3, 2)
    assert await deliver_bytes(store, MESSAGE, [DeliveryTarget(account.id)])
    assert [m.uid for m in await store.list_messages(inbox.id)] == [1, 2, 3]


async def test_append_of_a_large_message(store: Store) -> None:
    account = await alice(store)
    inbox = await box(store, account.id)
    data = os.urandom(700_001)
    spool = store.new_spool()
    for start in range(0, len(data), 65_536):
        await spool.write(data[start : start + 65_536])
    assert await store.append(inbox.id, spool) == (inbox.uidvalidity, 1)
    [message] = await store.list_messages(inbox.id)
    assert (message.size, message.flags, message.internal_zone) == (len(data), frozenset(), 0)
    assert await read_all(store, message) == data


async def test_append_refusals_store_nothing(store: Store) -> None:
    account = await alice(store)
    inbox = await box(store, account.id)
    with pytest.raises(NoSuchMailbox):
        await append(store, inbox.id + 10_000)
    with pytest.raises(ValueError):
        await append(store, inbox.id, flags=("two words",))
    for zone in (MAX_ZONE_MINUTES + 1, -MAX_ZONE_MINUTES - 1):
        with pytest.raises(ValueError):
            await append(store, inbox.id, internal_zone=zone)
    assert await store.list_messages(inbox.id) == []
    assert (await box(store, account.id)).uidnext == 1
    for zone in (MAX_ZONE_MINUTES, -MAX_ZONE_MINUTES):  # the widest the syntax allows
        await append(store, inbox.id, internal_zone=zone)
    assert [m.internal_zone for m in await store.list_messages(inbox.id)] == [
        MAX_ZONE_MINUTES, -MAX_ZONE_MINUTES
    ]


async def test_append_refuses_a_foreign_spool(store: Store) -> None:
    class Foreign:
        size = 0

    with pytest.raises(TypeError):
        await store.append(1, Foreign())  # type: ignore[arg-type]


# --- store flags ----------------------------------------------------------------------------------
async def test_add_remove_and_set(store: Store) -> None:
    inbox = await filled(store, 3)
    added = await store.store_flags(inbox.id, [1, 2], FlagOp.ADD, [SEEN, FLAGGED])
    assert added == FlagUpdate(
        5, (MessageFlags(1, frozenset({SEEN, FLAGGED}), 5),
            MessageFlags(2, frozenset({SEEN, FLAGGED}), 5)), (),
    )
    removed = await store.store_flags(inbox.id, [2, 3], FlagOp.REMOVE, [FLAGGED])
    assert removed == FlagUpdate(6, (MessageFlags(2, frozenset({SEEN}), 6),), ())
    replaced = await store.store_flags(inbox.id, [1, 2, 3], FlagOp.SET, ["$Label1"])
    assert replaced.modseq == 7
    assert {c.uid for c in replaced.changed} == {1, 2, 3}
    assert await flags_of(store, inbox.id) == {u: frozenset({"$Label1"}) for u in (1, 2, 3)}
    assert [m.modseq for m in await store.list_messages(inbox.id)] == [7, 7, 7]
    assert (await box(store, inbox.account_id)).highest_modseq == 7


async def test_a_store_that_changes_nothing_spends_no_modseq(store: Store) -> None:
    inbox = await filled(store, 2)
    await store.store_flags(inbox.id, [1], FlagOp.ADD, [SEEN])
    before = await store.list_messages(inbox.id)
    assert await store.store_flags(inbox.id, [1], FlagOp.ADD, [SEEN]) == FlagUpdate(0, (), ())
    assert await store.store_flags(inbox.id, [2], FlagOp.REMOVE, [SEEN]) == FlagUpdate(0, (), ())
    assert await store.store_flags(inbox.id, [7, 99, 0], FlagOp.SET, []) == FlagUpdate(0, (), ())
    assert await store.store_flags(inbox.id, [], FlagOp.SET, []) == FlagUpdate(0, (), ())
    assert await store.list_messages(inbox.id) == before
    assert (await box(store, inbox.account_id)).highest_modseq == 4


async def test_only_changed_messages_take_the_new_modseq(store: Store) -> None:
    inbox = await filled(store, 3)
    await store.store_flags(inbox.id, [2], FlagOp.ADD, [SEEN])  # 2 -> MODSEQ 5
    update = await store.store_flags(inbox.id, [1, 2, 3], FlagOp.ADD, [SEEN])
    assert [c.uid for c in update.changed] == [1, 3]
    assert {m.uid: m.modseq for m in await store.list_messages(inbox.id)} == {1: 6, 2: 5, 3: 6}


async def test_unchangedsince(store: Store) -> None:
    """RFC 7162 §3.1.3: a message changed after UNCHANGEDSINCE is left alone and reported."""
    inbox = await filled(store, 3)  # MODSEQs 2, 3, 4
    update = await store.store_flags(inbox.id, [1, 2, 3, 50], FlagOp.ADD, [DELETED], 3)
    assert update.failed == (3,)
    assert [c.uid for c in update.changed] == [1, 2]
    assert DELETED not in (await flags_of(store, inbox.id))[3]
    everything_failed = await store.store_flags(inbox.id, [1, 2], FlagOp.SET, [], 0)
    assert everything_failed == FlagUpdate(0, (), (1, 2))
    # Equal to the message's MODSEQ passes; a no-op passes without a new MODSEQ.
    same = await store.store_flags(inbox.id, [3], FlagOp.ADD, [SEEN], 4)
    assert same.changed == (MessageFlags(3, frozenset({SEEN}), same.modseq),)


async def test_store_refusals(store: Store) -> None:
    inbox = await filled(store, 1)
    with pytest.raises(NoSuchMailbox):
        await store.store_flags(inbox.id + 10_000, [1], FlagOp.ADD, [SEEN])
    with pytest.raises(ValueError):
        await store.store_flags(inbox.id, [1], FlagOp.ADD, ["a(b"])
    assert (await flags_of(store, inbox.id)) == {1: frozenset()}


# --- copy and move --------------------------------------------------------------------------------
async def test_copy_returns_the_uid_map_and_shares_the_blob(store: Store) -> None:
    inbox = await filled(store, 4)
    await store.store_flags(inbox.id, [2], FlagOp.ADD, [SEEN])
    archive = await box(store, inbox.account_id, "Archive")
    await append(store, archive.id)  # the copies go after what is there
    result = await store.copy_messages(inbox.id, [4, 2, 99], archive.id)
    assert result == CopyResult(archive.uidvalidity, ((2, 2), (4, 3)))
    source = {m.uid: m for m in await store.list_messages(inbox.id)}
    copies = {m.uid: m for m in await store.list_messages(archive.id)}
    for old, new in result.uids:
        assert copies[new].blob_id == source[old].blob_id
        assert copies[new].flags == source[old].flags
        assert copies[new].internal_date == source[old].internal_date
        assert copies[new].modseq == 3  # one MODSEQ for the whole copy
        assert await read_all(store, copies[new]) == await read_all(store, source[old])
    after = await box(store, inbox.account_id, "Archive")
    assert (after.uidnext, after.highest_modseq, after.message_count) == (4, 3, 3)
    assert len(await store.list_messages(inbox.id)) == 4  # the source is untouched
    await store.expunge(inbox.id, [2, 4])
    assert [await read_all(store, copies[new]) for _, new in result.uids] == [
        b"Subject: 1\r\n\r\n1\r\n", b"Subject: 3\r\n\r\n3\r\n"
    ]


async def test_copy_into_the_same_mailbox(store: Store) -> None:
    inbox = await filled(store, 2)
    result = await store.copy_messages(inbox.id, [1, 2], inbox.id)
    assert result.uids == ((1, 3), (2, 4))
    assert [m.uid for m in await store.list_messages(inbox.id)] == [1, 2, 3, 4]


async def test_copy_of_nothing_changes_nothing(store: Store) -> None:
    inbox = await filled(store, 1)
    archive = await box(store, inbox.account_id, "Archive")
    assert await store.copy_messages(inbox.id, [5], archive.id) == CopyResult(
        archive.uidvalidity, ()
    )
    assert await store.move_messages(inbox.id, [], archive.id) == CopyResult(
        archive.uidvalidity, ()
    )
    assert await box(store, inbox.account_id, "Archive") == archive
    assert await box(store, inbox.account_id) == inbox


async def test_copy_and_move_refusals(store: Store) -> None:
    inbox = await filled(store, 1)
    bob = await store.add_account("bob@example.org", "h")
    bobs = await box(store, bob.id)
    for call in (store.copy_messages, store.move_messages):
        with pytest.raises(MailboxNotAllowed):
            await call(inbox.id, [1], bobs.id)
        with pytest.raises(NoSuchMailbox):
            await call(inbox.id, [1], inbox.id + 10_000)
        with pytest.raises(NoSuchMailbox):
            await call(inbox.id + 10_000, [1], inbox.id)
    assert await store.list_messages(bobs.id) == []
    assert len(await store.list_messages(inbox.id)) == 1


async def test_move_is_copy_and_expunge_in_one(store: Store) -> None:
    inbox = await filled(store, 3)
    await store.store_flags(inbox.id, [3], FlagOp.ADD, [FLAGGED])  # INBOX at MODSEQ 5
    before = {m.uid: m for m in await store.list_messages(inbox.id)}
    trash = await box(store, inbox.account_id, "Trash")
    result = await store.move_messages(inbox.id, [3, 1], trash.id)
    assert result == CopyResult(trash.uidvalidity, ((1, 1), (3, 2)))
    assert [m.uid for m in await store.list_messages(inbox.id)] == [2]
    source = await box(store, inbox.account_id)
    assert (source.highest_modseq, source.message_count, source.uidnext) == (6, 1, 4)
    assert await store.list_expunged(inbox.id) == [ExpungedMessage(1, 6), ExpungedMessage(3, 6)]
    moved = {m.uid: m for m in await store.list_messages(trash.id)}
    assert moved[2].flags == frozenset({FLAGGED})
    assert moved[1].blob_id == before[1].blob_id
    assert await read_all(store, moved[2]) == await read_all(store, before[3])
    await store.expunge(trash.id, [1])  # the only reference: the bytes go
    with pytest.raises(KeyError):
        await read_all(store, moved[1])


# --- the embedded store: blob files ---------------------------------------------------------------
def refcounts(data_dir: Path) -> list[int]:
    with sqlite3.connect(data_dir / "mailhouse.db") as conn:
        return [row[0] for row in conn.execute("SELECT refcount FROM blobs ORDER BY id")]


def blob_files(data_dir: Path) -> list[Path]:
    return sorted(p for p in (data_dir / "blobs").glob("*/*") if p.is_file())


async def test_blob_files_and_references(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    store = open_store(data_dir, "sqlite")
    await store.open()
    try:
        account = await alice(store)
        inbox = await box(store, account.id)
        archive = await box(store, account.id, "Archive")
        with pytest.raises(NoSuchMailbox):
            await append(store, inbox.id + 10_000)
        assert blob_files(data_dir) == []  # the refused APPEND left no file
        await append(store, inbox.id)
        await store.copy_messages(inbox.id, [1], archive.id)
        assert refcounts(data_dir) == [2]
        await store.move_messages(archive.id, [1], inbox.id)
        assert refcounts(data_dir) == [2]
        await store.expunge(inbox.id, [1, 2])
        assert blob_files(data_dir) == []
    finally:
        await store.close()
