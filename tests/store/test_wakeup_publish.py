"""Every committed change to a mailbox is announced on the store's wake-ups (store/wakeup.py),
in both stores, and across two stores on one data directory (two processes)."""

from __future__ import annotations

import asyncio
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
        seen = await _changed(watch)
        assert list(seen) == [inbox.id] and seen[inbox.id] >= 2
        spool = store.new_spool()
        await spool.write(MESSAGE)
        await store.append(inbox.id, spool)
        assert list(await _changed(watch)) == [inbox.id]
        update = await store.store_flags(inbox.id, [1], FlagOp.ADD, ["\\Seen"])
        assert (await _changed(watch)) == {inbox.id: update.modseq}
        await store.store_flags(inbox.id, [1], FlagOp.ADD, ["\\Seen"])  # nothing changes
        assert await _changed(watch) == {}
        await store.copy_messages(inbox.id, [1], trash.id)
        assert list(await _changed(watch)) == [trash.id]
        await store.move_messages(inbox.id, [2], trash.id)
        assert set(await _changed(watch)) == {inbox.id, trash.id}
        await store.expunge(inbox.id, [1])
        assert list(await _changed(watch)) == [inbox.id]
        await store.expunge(inbox.id, [1])  # already gone: no change
        assert await _changed(watch) == {}
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
        assert inbox is not None and inbox.id in changed
    finally:
        await first_wakeups.close()
        await second_wakeups.close()
        await first.close()
        await second.close()
