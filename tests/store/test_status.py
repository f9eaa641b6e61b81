"""STATUS counters (Store.status, MailboxInfo.message_count/unseen/deleted/size): kept current on
the mailbox row by every write, so STATUS never scans. The contract, run against every
implementation, checks the counters against the messages after each kind of operation and after
a long random mix of them."""

from __future__ import annotations

import random
from dataclasses import replace

from mailhouse.store.base import DeliveryTarget, FlagOp, MailboxInfo, Store
from tests.store.conftest import deliver_bytes

SEEN, DELETED, FLAGGED = "\\Seen", "\\Deleted", "\\Flagged"


async def expected(store: Store, mailbox: MailboxInfo) -> MailboxInfo:
    """What the counters must say, counted the slow way."""
    messages = await store.list_messages(mailbox.id)
    return replace(
        mailbox,
        message_count=len(messages),
        unseen=sum(SEEN not in m.flags for m in messages),
        deleted=sum(DELETED in m.flags for m in messages),
        size=sum(m.size for m in messages),
    )


async def check(store: Store, account_id: int) -> dict[str, MailboxInfo]:
    boxes: dict[str, MailboxInfo] = {}
    for listed in await store.list_mailboxes(account_id):
        status = await store.status(listed.id)
        assert status == listed
        assert status == await expected(store, listed), listed.name
        boxes[listed.name] = status
    return boxes


async def append(store: Store, mailbox_id: int, data: bytes, flags: tuple[str, ...]) -> int:
    spool = store.new_spool()
    await spool.write(data)
    return (await store.append(mailbox_id, spool, flags))[1]


async def test_every_operation_keeps_the_counters(store: Store) -> None:
    account = await store.add_account("alice@example.org", "h")
    boxes = await check(store, account.id)
    assert (boxes["INBOX"].message_count, boxes["INBOX"].unseen, boxes["INBOX"].size) == (0, 0, 0)
    targets = [
        DeliveryTarget(account.id),
        DeliveryTarget(account.id, "Archive", flags=(SEEN,)),
        DeliveryTarget(account.id, "Trash", flags=(SEEN, DELETED)),
    ]
    await deliver_bytes(store, b"x" * 100, targets)
    boxes = await check(store, account.id)
    assert (boxes["INBOX"].unseen, boxes["INBOX"].deleted, boxes["INBOX"].size) == (1, 0, 100)
    assert (boxes["Archive"].unseen, boxes["Trash"].deleted) == (0, 1)
    inbox = boxes["INBOX"].id
    await append(store, inbox, b"y" * 10, (DELETED,))
    await append(store, inbox, b"z" * 1, (SEEN, FLAGGED))
    boxes = await check(store, account.id)
    assert (boxes["INBOX"].message_count, boxes["INBOX"].unseen, boxes["INBOX"].deleted,
            boxes["INBOX"].size) == (3, 2, 1, 111)
    await store.store_flags(inbox, [1, 2, 3], FlagOp.ADD, [SEEN])
    await check(store, account.id)
    await store.store_flags(inbox, [2, 3], FlagOp.REMOVE, [SEEN, DELETED])
    await check(store, account.id)
    await store.store_flags(inbox, [1, 3], FlagOp.SET, [DELETED])
    boxes = await check(store, account.id)
    assert (boxes["INBOX"].unseen, boxes["INBOX"].deleted) == (3, 2)
    await store.copy_messages(inbox, [1, 2], boxes["Archive"].id)
    await check(store, account.id)
    await store.move_messages(inbox, [3], boxes["Trash"].id)
    await check(store, account.id)
    await store.expunge(boxes["Trash"].id, [1, 2])
    await check(store, account.id)
    await store.rename_mailbox(account.id, "INBOX", "Old")
    boxes = await check(store, account.id)
    assert (boxes["INBOX"].message_count, boxes["INBOX"].size) == (0, 0)
    assert (boxes["Old"].message_count, boxes["Old"].size) == (2, 110)


async def test_status_of_an_unknown_mailbox_is_none(store: Store) -> None:
    assert await store.status(987_654) is None


async def test_a_random_mix_keeps_the_counters(store: Store) -> None:
    rng = random.Random(8)
    account = await store.add_account("alice@example.org", "h")
    boxes = await check(store, account.id)
    ids = [boxes[name].id for name in ("INBOX", "Archive", "Trash")]
    pool = [SEEN, DELETED, FLAGGED, "$Label"]
    for step in range(60):
        box = rng.choice(ids)
        uids = [m.uid for m in await store.list_messages(box)]
        some = rng.sample(uids, min(len(uids), rng.randint(0, 3)))
        flags = rng.sample(pool, rng.randint(0, 2))
        action = rng.randrange(6)
        if action == 0:
            await deliver_bytes(
                store, b"m" * rng.randint(0, 50), [DeliveryTarget(account.id, flags=tuple(flags))]
            )
        elif action == 1:
            await append(store, box, b"a" * rng.randint(0, 50), tuple(flags))
        elif action == 2:
            await store.store_flags(box, some, rng.choice(list(FlagOp)), flags)
        elif action == 3:
            await store.copy_messages(box, some, rng.choice(ids))
        elif action == 4:
            await store.move_messages(box, some, rng.choice(ids))
        else:
            await store.expunge(box, some)
        if step % 10 == 9:
            await check(store, account.id)
    await check(store, account.id)
