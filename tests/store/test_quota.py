"""Storage quota (Store.set_quota, get_quota; deliver, append and copy check it): the contract
against every implementation. Usage is the sum of the account's mailbox sizes (RFC 9208 §5.1
STORAGE, in octets here; the IMAP layer reports KiB)."""

from __future__ import annotations

import pytest

from mailhouse.store.base import (
    DeliveryTarget,
    MailboxInfo,
    Outcome,
    Quota,
    QuotaExceeded,
    Store,
)
from tests.store.conftest import deliver_bytes


async def boxes(store: Store, account_id: int) -> dict[str, MailboxInfo]:
    return {m.name: m for m in await store.list_mailboxes(account_id)}


async def append(store: Store, mailbox_id: int, data: bytes) -> tuple[int, int]:
    spool = store.new_spool()
    await spool.write(data)
    return await store.append(mailbox_id, spool)


async def test_usage_follows_every_write(store: Store) -> None:
    account = await store.add_account("alice@example.org", "h")
    assert await store.get_quota(account.id) == Quota(0, None)  # unlimited by default
    box = await boxes(store, account.id)
    await deliver_bytes(store, b"x" * 100, [DeliveryTarget(account.id)])
    await append(store, box["Sent"].id, b"y" * 10)
    assert await store.get_quota(account.id) == Quota(110, None)
    await store.copy_messages(box["INBOX"].id, [1], box["Archive"].id)
    assert (await store.get_quota(account.id)).used == 210  # type: ignore[union-attr]
    await store.move_messages(box["Archive"].id, [1], box["Trash"].id)
    assert (await store.get_quota(account.id)).used == 210  # type: ignore[union-attr]
    await store.expunge(box["INBOX"].id, [1])
    await store.delete_mailbox(account.id, "Sent")
    assert await store.get_quota(account.id) == Quota(100, None)
    assert await store.get_quota(account.id + 10_000) is None


async def test_set_quota(store: Store) -> None:
    account = await store.add_account("alice@example.org", "h")
    assert await store.set_quota("alice@example.org", 1_000) is True
    assert await store.get_quota(account.id) == Quota(0, 1_000)
    assert await store.set_quota("alice@example.org", None) is True
    assert await store.get_quota(account.id) == Quota(0, None)
    assert await store.set_quota("nobody@example.org", 5) is False
    with pytest.raises(ValueError):
        await store.set_quota("alice@example.org", -1)


async def test_a_full_account_refuses_new_mail(store: Store) -> None:
    alice = await store.add_account("alice@example.org", "h")
    bob = await store.add_account("bob@example.org", "h")
    await store.set_quota("alice@example.org", 150)
    box = await boxes(store, alice.id)
    await deliver_bytes(store, b"x" * 100, [DeliveryTarget(alice.id)])
    # Exactly at the limit is allowed; one octet more is not.
    assert await append(store, box["INBOX"].id, b"y" * 50) == (box["INBOX"].uidvalidity, 2)
    targets = [DeliveryTarget(alice.id), DeliveryTarget(bob.id), DeliveryTarget(alice.id, "No")]
    assert await deliver_bytes(store, b"z", targets) == [
        Outcome.TEMPORARY,  # mailbox full (RFC 3463 4.2.2): the sender retries
        Outcome.DELIVERED,
        Outcome.PERMANENT,
    ]
    with pytest.raises(QuotaExceeded) as raised:
        await append(store, box["INBOX"].id, b"z")
    assert (raised.value.used, raised.value.limit, raised.value.adding) == (150, 150, 1)
    with pytest.raises(QuotaExceeded):
        await store.copy_messages(box["INBOX"].id, [2], box["Archive"].id)
    # MOVE changes no usage, so it works at the limit.
    assert (await store.move_messages(box["INBOX"].id, [2], box["Archive"].id)).uids == ((2, 1),)
    after = await boxes(store, alice.id)
    assert after["INBOX"].message_count + after["Archive"].message_count == 2
    assert await store.get_quota(alice.id) == Quota(150, 150)
    # Space freed: mail flows again. A lowered quota removes nothing.
    await store.expunge(after["Archive"].id, [1])
    assert await deliver_bytes(store, b"z", [DeliveryTarget(alice.id)]) == [Outcome.DELIVERED]
    await store.set_quota("alice@example.org", 10)
    assert await store.get_quota(alice.id) == Quota(101, 10)


async def test_ignore_quota_delivers_over_the_limit(store: Store) -> None:
    """SMTP's grace of one message for a transaction others receive (docs/decisions.md)."""
    alice = await store.add_account("alice@example.org", "h")
    bob = await store.add_account("bob@example.org", "h")
    await store.set_quota("alice@example.org", 10)
    targets = [DeliveryTarget(alice.id), DeliveryTarget(alice.id, "Archive", ignore_quota=True),
               DeliveryTarget(bob.id, ignore_quota=True),
               DeliveryTarget(alice.id, "No", ignore_quota=True)]
    assert await deliver_bytes(store, b"x" * 11, targets) == [
        Outcome.TEMPORARY, Outcome.DELIVERED, Outcome.DELIVERED, Outcome.PERMANENT]
    assert await store.get_quota(alice.id) == Quota(11, 10)
    assert (await boxes(store, alice.id))["Archive"].message_count == 1


async def test_limits_are_in_the_directory(store: Store) -> None:
    """RCPT reads limits from the in-memory snapshot, so setting one changes the serial."""
    alice = await store.add_account("alice@example.org", "h")
    await store.add_account("bob@example.org", "h")
    serial = await store.directory_serial()
    assert await store.set_quota("alice@example.org", 1_000) is True
    assert await store.directory_serial() != serial
    assert (await store.directory()).quotas == {alice.id: 1_000}
    serial = await store.directory_serial()
    assert await store.set_quota("nobody@example.org", 5) is False
    assert await store.directory_serial() == serial
    await store.set_quota("alice@example.org", None)
    assert (await store.directory()).quotas == {}
    assert await store.directory_serial() != serial
