"""Ranged, field-limited reads (Store.list_messages_in, list_flags, list_uids, uid_bounds,
changes_since): the contract against every implementation, then the embedded store's query
plans, so a FETCH of a few messages or a resync after a week never reads the whole mailbox."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from mailhouse.store import open_store, sqlite_mailboxes, sqlite_messages
from mailhouse.store.base import (
    MAX_UID,
    DeliveryTarget,
    FlagOp,
    MailboxChanges,
    MailboxInfo,
    MessageFlags,
    Store,
)
from tests.store.conftest import deliver_bytes

SEEN = "\\Seen"


async def filled(store: Store, count: int) -> MailboxInfo:
    """alice's INBOX with messages 1..count; UID n has MODSEQ n + 1 and size n."""
    account = await store.add_account("alice@example.org", "h")
    for n in range(1, count + 1):
        await deliver_bytes(store, b"x" * n, [DeliveryTarget(account.id)])
    found = await store.get_mailbox(account.id, "INBOX")
    assert found is not None
    return found


async def test_messages_by_uid_range(store: Store) -> None:
    inbox = await filled(store, 6)
    await store.expunge(inbox.id, [3])
    assert [m.uid for m in await store.list_messages_in(inbox.id, 2, 5)] == [2, 4, 5]
    assert [m.uid for m in await store.list_messages_in(inbox.id, 2, MAX_UID, limit=2)] == [2, 4]
    assert [m.uid for m in await store.list_messages_in(inbox.id, 6, 6)] == [6]
    assert await store.list_messages_in(inbox.id, 7, MAX_UID) == []
    assert await store.list_messages_in(inbox.id, 5, 2) == []
    assert await store.list_messages_in(inbox.id, 1, MAX_UID, limit=0) == []
    assert await store.list_messages_in(inbox.id + 10_000, 1, MAX_UID) == []
    assert await store.list_messages_in(inbox.id, 1, MAX_UID) == await store.list_messages(
        inbox.id
    )
    [four] = await store.list_messages_in(inbox.id, 4, 4)
    assert (four.size, four.modseq, four.mailbox_id) == (4, 5, inbox.id)


async def test_flags_and_uids_only(store: Store) -> None:
    inbox = await filled(store, 4)
    update = await store.store_flags(inbox.id, [2, 4], FlagOp.ADD, [SEEN])
    assert await store.list_flags(inbox.id) == [
        MessageFlags(1, frozenset(), 2),
        MessageFlags(2, frozenset({SEEN}), update.modseq),
        MessageFlags(3, frozenset(), 4),
        MessageFlags(4, frozenset({SEEN}), update.modseq),
    ]
    assert [f.uid for f in await store.list_flags(inbox.id, 2, 3)] == [2, 3]
    assert await store.list_uids(inbox.id) == [1, 2, 3, 4]
    await store.expunge(inbox.id, [1, 4])
    assert await store.list_uids(inbox.id) == [2, 3]
    assert await store.uid_bounds(inbox.id) == (2, 3)
    assert await store.list_flags(inbox.id + 10_000) == []
    assert await store.list_uids(inbox.id + 10_000) == []


async def test_uid_bounds(store: Store) -> None:
    inbox = await filled(store, 0)
    assert await store.uid_bounds(inbox.id) is None
    assert await store.uid_bounds(inbox.id + 10_000) is None
    await deliver_bytes(store, b"one", [DeliveryTarget(inbox.account_id)])
    assert await store.uid_bounds(inbox.id) == (1, 1)
    await store.expunge(inbox.id, [1])
    assert await store.uid_bounds(inbox.id) is None


async def test_changes_since(store: Store) -> None:
    """RFC 7162 §3.1.4.1 (CHANGEDSINCE) and §3.2.5.2 (VANISHED (EARLIER))."""
    inbox = await filled(store, 5)  # MODSEQs 2..6
    first = await store.store_flags(inbox.id, [2], FlagOp.ADD, [SEEN])  # 7
    await store.expunge(inbox.id, [4])  # 8
    second = await store.store_flags(inbox.id, [1, 5], FlagOp.ADD, [SEEN])  # 9
    assert await store.changes_since(inbox.id, 6) == MailboxChanges(
        (
            MessageFlags(1, frozenset({SEEN}), second.modseq),
            MessageFlags(2, frozenset({SEEN}), first.modseq),
            MessageFlags(5, frozenset({SEEN}), second.modseq),
        ),
        (4,),
    )
    assert await store.changes_since(inbox.id, 8) == MailboxChanges(
        (
            MessageFlags(1, frozenset({SEEN}), 9),
            MessageFlags(5, frozenset({SEEN}), 9),
        ),
        (),
    )
    assert await store.changes_since(inbox.id, 9) == MailboxChanges((), ())
    everything = await store.changes_since(inbox.id, 0)
    assert [f.uid for f in everything.changed] == [1, 2, 3, 5]
    assert everything.expunged == (4,)
    assert await store.changes_since(inbox.id + 10_000, 0) == MailboxChanges((), ())


# --- the embedded store: every read is an index search ----------------------------------------
async def test_reads_never_scan_a_mailbox(tmp_path: Path) -> None:
    """The real statements are traced (parameters bound) and each one's query plan is checked:
    only index searches on messages and expunged, never a SCAN."""
    data_dir = tmp_path / "data"
    store = open_store(data_dir, "sqlite")
    await store.open()
    inbox = await filled(store, 3)
    await store.close()
    conn = sqlite3.connect(data_dir / "mailhouse.db", isolation_level=None)
    traced: list[str] = []
    try:
        conn.set_trace_callback(traced.append)
        sqlite_messages.list_range(conn, inbox.id, 2, 3, 10)
        sqlite_messages.list_flags(conn, inbox.id, 1, MAX_UID)
        sqlite_messages.list_uids(conn, inbox.id)
        sqlite_messages.uid_bounds(conn, inbox.id)
        sqlite_messages.changes_since(conn, inbox.id, 2)
        sqlite_mailboxes.by_id(conn, inbox.id)
        conn.set_trace_callback(None)
        statements = [s for s in traced if s.split(None, 1)[0] == "SELECT"]
        assert len(statements) >= 8
        for statement in statements:
            plan = " / ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + statement))
            assert not re.search(r"\bSCAN (messages|expunged|mailboxes)\b", plan), (
                f"{statement}: {plan}"
            )
            if "modseq >" in statement:
                assert "modseq" in plan and "USING" in plan, plan
    finally:
        conn.close()
