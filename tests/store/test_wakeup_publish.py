"""Every committed change to a mailbox is announced on the store's wake-ups (store/wakeup.py),
in both stores, and across two stores on one data directory (two processes)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import pytest

from mailhouse.store import STORE_KINDS, open_store
from mailhouse.store.base import DeliveryTarget, FlagOp, Store
from mailhouse.store.wakeup import LocalWakeups, SocketWakeups, Watch
from tests.store.conftest import deliver_bytes

MESSAGE = b"Subject: hi\r\n\r\nhello\r\n"


async def _changed(watch: Watch) -> dict[int, int]:
    await asyncio.sleep(0)
    return watch.take()


async def _now(store: Store, account_id: int, *names: str) -> dict[int, int]:
    """What a wake-up for these mailboxes should say: id -> HIGHESTMODSEQ after the commit."""
    out = {}
    for name in names:
        info = await store.get_mailbox(account_id, name)
        assert info is not None
        out[info.id] = info.highest_modseq
    return out


@pytest.mark.parametrize("kind", STORE_KINDS)
async def test_each_change_is_announced(kind: str, tmp_path: Path) -> None:
    wakeups = LocalWakeups()
    store: Store = open_store(tmp_path / "data", kind, wakeups=wakeups)
    await store.open()
    try:
        assert store.wakeups is wakeups
        account = await store.add_account("alice@example.org", "h")
        other = await store.add_account("bob@example.org", "h")
        inbox = await store.get_mailbox(account.id, "INBOX")
        trash = await store.get_mailbox(account.id, "Trash")
        assert inbox is not None and trash is not None
        watch = wakeups.watch(account.id)
        elsewhere = wakeups.watch(other.id)

        await deliver_bytes(store, MESSAGE, [DeliveryTarget(account.id)])
        assert await _changed(watch) == await _now(store, account.id, "INBOX")
        spool = store.new_spool()
        await spool.write(MESSAGE)
        await store.append(inbox.id, spool)
        assert await _changed(watch) == await _now(store, account.id, "INBOX")
        update = await store.store_flags(inbox.id, [1], FlagOp.ADD, ["\\Seen"])
        assert (await _changed(watch)) == {inbox.id: update.modseq}
        await store.store_flags(inbox.id, [1], FlagOp.ADD, ["\\Seen"])  # nothing changes
        assert await _changed(watch) == {}
        await store.copy_messages(inbox.id, [1], trash.id)
        assert await _changed(watch) == await _now(store, account.id, "Trash")
        await store.copy_messages(inbox.id, [99], trash.id)  # no such message: nothing
        assert await _changed(watch) == {}
        await store.move_messages(inbox.id, [2], trash.id)
        assert await _changed(watch) == await _now(store, account.id, "INBOX", "Trash")
        await store.expunge(inbox.id, [1])
        assert await _changed(watch) == await _now(store, account.id, "INBOX")
        await store.expunge(inbox.id, [1])  # already gone: no change
        assert await _changed(watch) == {}
        created = await store.create_mailbox(account.id, "Projects")
        assert await _changed(watch) == {created.id: created.highest_modseq}
        await store.rename_mailbox(account.id, "Projects", "Work")
        assert await _changed(watch) == await _now(store, account.id, "Work")
        await deliver_bytes(store, MESSAGE, [DeliveryTarget(account.id)])
        await _changed(watch)
        await store.rename_mailbox(account.id, "INBOX", "Old")  # moves its messages
        assert await _changed(watch) == await _now(store, account.id, "INBOX", "Old")
        await store.delete_mailbox(account.id, "Trash")
        assert list(await _changed(watch)) == [trash.id]
        assert elsewhere.take() == {}
    finally:
        await store.close()


async def test_two_stores_on_one_directory_see_each_others_deliveries(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first_wakeups, second_wakeups = SocketWakeups(data), SocketWakeups(data)
    first = open_store(data, wakeups=first_wakeups)
    second = open_store(data, wakeups=second_wakeups)
    await first.open()
    await second.open()
    await first_wakeups.start()
    await second_wakeups.start()
    try:
        account = await first.add_account("alice@example.org", "h")
        watch = second_wakeups.watch(account.id)
        await deliver_bytes(first, MESSAGE, [DeliveryTarget(account.id)])
        changed = await asyncio.wait_for(watch.wait(5), 6)
        inbox = await second.get_mailbox(account.id, "INBOX")
        assert inbox is not None and changed == {inbox.id: inbox.highest_modseq}
        back = first_wakeups.watch(account.id)  # and the other way round
        await deliver_bytes(second, MESSAGE, [DeliveryTarget(account.id)])
        changed = await asyncio.wait_for(back.wait(5), 6)
        inbox = await first.get_mailbox(account.id, "INBOX")
        assert inbox is not None and changed == {inbox.id: inbox.highest_modseq}
    finally:
        await first_wakeups.close()
        await second_wakeups.close()
        await first.close()
        await second.close()


class _CheckingWakeups(LocalWakeups):
    """Reads the database from another connection at each publish: the change it announces
    must already be committed there (published after the writer's batch, never before)."""

    def __init__(self, db: Path) -> None:
        super().__init__()
        self.db = db
        self.published: list[tuple[int, int]] = []

    def publish(self, account_id: int, mailbox_id: int, modseq: int) -> None:
        with contextlib.closing(sqlite3.connect(self.db)) as conn:
            row = conn.execute("SELECT highest_modseq FROM mailboxes WHERE id = ?",
                               (mailbox_id,)).fetchone()
        assert row is not None and row[0] >= modseq
        self.published.append((mailbox_id, modseq))
        super().publish(account_id, mailbox_id, modseq)


async def test_published_only_once_committed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    wakeups = _CheckingWakeups(data / "mailhouse.db")
    store = open_store(data, wakeups=wakeups)
    await store.open()
    try:
        account = await store.add_account("alice@example.org", "h")
        inbox = await store.get_mailbox(account.id, "INBOX")
        assert inbox is not None
        await asyncio.gather(*(deliver_bytes(store, MESSAGE, [DeliveryTarget(account.id)])
                               for _ in range(5)))  # one group commit, likely
        await store.store_flags(inbox.id, [1, 2], FlagOp.ADD, ["\\Seen"])
        await store.expunge(inbox.id, [3])
        assert len(wakeups.published) == 7
        assert all(modseq > 0 for _, modseq in wakeups.published)
    finally:
        await store.close()
