"""StoreBounceSender: a DSN for a local sender reaches its INBOX even when the sender's mailbox
is over quota (a bounce cannot bounce, and holding it would hold the failed recipients)."""

from __future__ import annotations

import asyncio

from mailhouse.queue.bounces import StoreBounceSender
from mailhouse.queue.contracts import FailedRecipient
from mailhouse.service.directory import DirectoryCache
from mailhouse.store.base import QueueRequest, Quota
from mailhouse.store.memory import MemoryStore

FAILED = FailedRecipient("carol@remote.test", "failed", "5.1.1",
                         "smtp; 550 5.1.1 User unknown", "mx.remote.test [192.0.2.9]")


async def _queued(store: MemoryStore, sender: str) -> int:
    spool = store.new_spool()
    await spool.write(b"From: alice@example.test\r\nSubject: hi\r\n\r\nHello.\r\n")
    await store.deliver(spool, [], queue=QueueRequest(sender, ("carol@remote.test",)))
    [message] = await store.queue_list()
    return message.id


def test_a_bounce_reaches_an_over_quota_sender() -> None:
    async def main() -> None:
        store = MemoryStore()
        await store.open()
        await store.add_domain("example.test")
        alice = await store.add_account("alice@example.test", "h")
        await store.set_quota("alice@example.test", 0)  # full whatever arrives
        directory = DirectoryCache(store)
        await directory.refresh()
        woken: list[int] = []
        sender = StoreBounceSender(store, directory, hostname="mx.example.test",
                                   plus_separator="+", wake=lambda: woken.append(1))
        message = await store.queue_get(await _queued(store, "alice@example.test"))
        assert message is not None
        await sender.send_dsn(message, [FAILED], delayed=False)
        [inbox] = [m for m in await store.list_mailboxes(alice.id) if m.name == "INBOX"]
        [dsn] = await store.list_messages(inbox.id)
        data = b"".join([c async for c in store.read_message(dsn)])
        assert data.startswith(b"Return-Path: <>\r\n") and b"carol@remote.test" in data
        assert await store.get_quota(alice.id) == Quota(dsn.size, 0)  # over, by one message
        assert woken == []  # nothing queued: no bounce loop

    asyncio.run(main())


def test_a_bounce_for_a_removed_sender_is_dropped_not_raised() -> None:
    async def main() -> None:
        store = MemoryStore()
        await store.open()
        await store.add_domain("example.test")
        await store.add_account("alice@example.test", "h")
        directory = DirectoryCache(store)
        await directory.refresh()  # the snapshot still has alice
        await store.remove_account("alice@example.test")
        sender = StoreBounceSender(store, directory, hostname="mx.example.test",
                                   plus_separator="+", wake=lambda: None)
        message = await store.queue_get(await _queued(store, "alice@example.test"))
        assert message is not None
        await sender.send_dsn(message, [FAILED], delayed=False)
        assert len(await store.queue_list()) == 1  # only the original: no DSN queued

    asyncio.run(main())
