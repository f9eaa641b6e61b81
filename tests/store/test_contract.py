"""The Store contract (store/base.py), run against every implementation.

Anything a layer above may rely on is asserted here, so the memory store used by fast tests and
the embedded store cannot drift apart.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from mailhouse.model import Directory
from mailhouse.store.base import DEFAULT_MAILBOXES, DeliveryTarget, MessageInfo, Outcome, Store
from tests.store.conftest import chunks_of, deliver_bytes, read_all

MESSAGE = b"From: a@example.org\r\nSubject: hi\r\n\r\nhello\r\n"


async def inbox_of(store: Store, account_id: int) -> int:
    return next(m.id for m in await store.list_mailboxes(account_id) if m.name == "INBOX")


# --- directory ------------------------------------------------------------------------------------
async def test_fresh_store_is_empty(store: Store) -> None:
    assert await store.directory() == Directory(
        serial=await store.directory_serial(), domains=frozenset()
    )
    assert await store.list_domains() == []
    assert await store.list_accounts() == []
    assert await store.list_aliases() == {}


async def test_domains_are_idempotent_and_sorted(store: Store) -> None:
    await store.add_domain("b.example")
    await store.add_domain("a.example")
    await store.add_domain("a.example")
    assert await store.list_domains() == ["a.example", "b.example"]
    assert await store.remove_domain("a.example") is True
    assert await store.remove_domain("a.example") is False
    assert await store.list_domains() == ["b.example"]


async def test_serial_increments_on_every_directory_change(store: Store) -> None:
    seen = [await store.directory_serial()]

    async def changed() -> None:
        serial = await store.directory_serial()
        assert serial > seen[-1]
        seen.append(serial)

    await store.add_domain("example.org")
    await changed()
    await store.add_account("alice@example.org", "h1")
    await changed()
    await store.set_password("alice@example.org", "h2")
    await changed()
    await store.set_alias("postmaster@example.org", ["alice@example.org"])
    await changed()
    await store.remove_alias("postmaster@example.org")
    await changed()
    await store.remove_account("alice@example.org")
    await changed()
    await store.remove_domain("example.org")
    await changed()


async def test_serial_unchanged_by_no_ops(store: Store) -> None:
    await store.add_domain("example.org")
    serial = await store.directory_serial()
    await store.add_domain("example.org")
    assert not await store.remove_domain("other.example")
    assert not await store.remove_alias("nobody@example.org")
    assert not await store.remove_account("nobody@example.org")
    assert not await store.set_password("nobody@example.org", "h")
    assert await store.directory_serial() == serial


async def test_directory_snapshot(store: Store) -> None:
    await store.add_domain("example.org")
    alice = await store.add_account("alice@example.org", "h")
    bob = await store.add_account("bob@example.org", "h")
    await store.set_alias("team@example.org", ["alice@example.org", "bob@example.org"])
    await store.set_alias("@example.org", ["alice@example.org"])
    directory = await store.directory()
    assert directory.serial == await store.directory_serial()
    assert directory.domains == frozenset({"example.org"})
    assert directory.users == {"alice@example.org": alice.id, "bob@example.org": bob.id}
    assert directory.aliases == {
        "team@example.org": ("alice@example.org", "bob@example.org"),
        "@example.org": ("alice@example.org",),
    }


# --- accounts -------------------------------------------------------------------------------------
async def test_add_account_creates_default_mailboxes(store: Store) -> None:
    account = await store.add_account("alice@example.org", "hash")
    assert account.address == "alice@example.org"
    assert account.password_hash == "hash"
    mailboxes = await store.list_mailboxes(account.id)
    assert [(m.name, m.special_use) for m in mailboxes] == list(DEFAULT_MAILBOXES)
    for mailbox in mailboxes:
        assert mailbox.account_id == account.id
        assert 0 < mailbox.uidvalidity < 2**32
        assert mailbox.uidnext == 1
        assert mailbox.highest_modseq == 1  # RFC 7162 §3.1.2.1: >= 1 from the start
        assert mailbox.message_count == 0
        assert mailbox.subscribed
    assert len({m.uidvalidity for m in mailboxes}) == len(mailboxes)
    assert len({m.id for m in mailboxes}) == len(mailboxes)


async def test_add_account_twice_raises_key_error(store: Store) -> None:
    await store.add_account("alice@example.org", "h")
    serial = await store.directory_serial()
    with pytest.raises(KeyError):
        await store.add_account("alice@example.org", "other")
    assert (await store.get_account("alice@example.org")).password_hash == "h"  # type: ignore[union-attr]
    assert await store.directory_serial() == serial


async def test_add_account_refuses_what_is_not_a_key(store: Store) -> None:
    with pytest.raises(ValueError):
        await store.add_account("alice", "h")


async def test_get_list_and_set_password(store: Store) -> None:
    bob = await store.add_account("bob@example.org", "h")
    alice = await store.add_account("alice@example.org", "h")
    assert await store.get_account("carol@example.org") is None
    assert await store.list_accounts() == [alice, bob]
    assert await store.set_password("bob@example.org", "new") is True
    assert (await store.get_account("bob@example.org")).password_hash == "new"  # type: ignore[union-attr]


async def test_uidvalidity_never_repeats_for_a_recreated_account(store: Store) -> None:
    first = await store.add_account("alice@example.org", "h")
    before = {m.uidvalidity for m in await store.list_mailboxes(first.id)}
    await store.remove_account("alice@example.org")
    second = await store.add_account("alice@example.org", "h")
    assert second.id != first.id
    after = {m.uidvalidity for m in await store.list_mailboxes(second.id)}
    assert not before & after


async def test_remove_account_removes_mailboxes_and_messages(store: Store) -> None:
    alice = await store.add_account("alice@example.org", "h")
    inbox = await inbox_of(store, alice.id)
    await deliver_bytes(store, MESSAGE, [DeliveryTarget(alice.id)])
    assert await store.remove_account("alice@example.org") is True
    assert await store.get_account("alice@example.org") is None
    assert await store.list_mailboxes(alice.id) == []
    assert await store.list_messages(inbox) == []
    assert await store.remove_account("alice@example.org") is False


# --- aliases --------------------------------------------------------------------------------------
async def test_aliases_replace_and_remove(store: Store) -> None:
    await store.set_alias("info@example.org", ["a@example.org"])
    await store.set_alias("info@example.org", ["b@example.org", "c@example.org"])
    await store.set_alias("@example.net", ["a@example.org"])
    assert await store.list_aliases() == {
        "@example.net": ("a@example.org",),
        "info@example.org": ("b@example.org", "c@example.org"),
    }
    assert await store.remove_alias("info@example.org") is True
    assert await store.remove_alias("info@example.org") is False
    assert list(await store.list_aliases()) == ["@example.net"]


async def test_alias_validation(store: Store) -> None:
    with pytest.raises(ValueError):
        await store.set_alias("info@example.org", [])
    with pytest.raises(ValueError):
        await store.set_alias("@", ["a@example.org"])
    with pytest.raises(ValueError):
        await store.set_alias("info@example.org", ["not-a-key"])


# --- delivery -------------------------------------------------------------------------------------
async def test_deliver_and_read_back(store: Store) -> None:
    alice = await store.add_account("alice@example.org", "h")
    outcomes = await deliver_bytes(
        store,
        MESSAGE,
        [DeliveryTarget(alice.id, flags=("\\Seen", "$Important"), internal_date=1_700_000_000.5)],
    )
    assert outcomes == [Outcome.DELIVERED]
    inbox = await inbox_of(store, alice.id)
    [message] = await store.list_messages(inbox)
    assert message.mailbox_id == inbox
    assert (message.uid, message.modseq) == (1, 2)
    assert message.flags == frozenset({"\\Seen", "$Important"})
    assert message.internal_date == 1_700_000_000.5
    assert message.size == len(MESSAGE)
    assert await read_all(store, message) == MESSAGE
    [info] = [m for m in await store.list_mailboxes(alice.id) if m.id == inbox]
    assert (info.uidnext, info.highest_modseq, info.message_count) == (2, 2, 1)


async def test_internal_date_defaults_to_now(store: Store) -> None:
    alice = await store.add_account("alice@example.org", "h")
    start = time.time()
    await deliver_bytes(store, MESSAGE, [DeliveryTarget(alice.id)])
    [message] = await store.list_messages(await inbox_of(store, alice.id))
    assert start - 1 <= message.internal_date <= time.time() + 1


async def test_one_blob_shared_by_every_copy(store: Store) -> None:
    alice = await store.add_account("alice@example.org", "h")
    bob = await store.add_account("bob@example.org", "h")
    targets = [DeliveryTarget(alice.id), DeliveryTarget(bob.id), DeliveryTarget(bob.id, "Archive")]
    assert await deliver_bytes(store, MESSAGE, targets) == [Outcome.DELIVERED] * 3
    messages: list[MessageInfo] = []
    for account in (alice, bob):
        for mailbox in await store.list_mailboxes(account.id):
            messages += await store.list_messages(mailbox.id)
    assert len(messages) == 3
    assert len({m.blob_id for m in messages}) == 1
    assert len({m.id for m in messages}) == 3
    assert all(m.uid == 1 for m in messages)


async def test_removing_one_owner_keeps_a_shared_blob(store: Store) -> None:
    alice = await store.add_account("alice@example.org", "h")
    bob = await store.add_account("bob@example.org", "h")
    await deliver_bytes(store, MESSAGE, [DeliveryTarget(alice.id), DeliveryTarget(bob.id)])
    await store.remove_account("alice@example.org")
    [message] = await store.list_messages(await inbox_of(store, bob.id))
    assert await read_all(store, message) == MESSAGE
    await store.remove_account("bob@example.org")
    with pytest.raises(KeyError):
        await read_all(store, message)


async def test_unknown_account_or_mailbox_is_permanent(store: Store) -> None:
    alice = await store.add_account("alice@example.org", "h")
    targets = [
        DeliveryTarget(alice.id + 10_000),
        DeliveryTarget(alice.id, "No such folder"),
        DeliveryTarget(alice.id, "inbox"),  # INBOX is case-insensitive (RFC 9051 §5.1)
    ]
    outcomes = await deliver_bytes(store, MESSAGE, targets)
    assert outcomes == [Outcome.PERMANENT, Outcome.PERMANENT, Outcome.DELIVERED]
    [message] = await store.list_messages(await inbox_of(store, alice.id))
    assert await read_all(store, message) == MESSAGE


async def test_nothing_deliverable_stores_nothing(store: Store) -> None:
    assert await deliver_bytes(store, MESSAGE, [DeliveryTarget(12345)]) == [Outcome.PERMANENT]
    assert await deliver_bytes(store, MESSAGE, []) == []


async def test_invalid_flag_is_refused(store: Store) -> None:
    alice = await store.add_account("alice@example.org", "h")
    with pytest.raises(ValueError):
        await deliver_bytes(store, MESSAGE, [DeliveryTarget(alice.id, flags=("two words",))])
    assert await store.list_messages(await inbox_of(store, alice.id)) == []


async def test_uids_and_modseqs_ascend_in_order(store: Store) -> None:
    alice = await store.add_account("alice@example.org", "h")
    for i in range(5):
        await deliver_bytes(store, b"message %d\r\n" % i, [DeliveryTarget(alice.id)])
    messages = await store.list_messages(await inbox_of(store, alice.id))
    assert [m.uid for m in messages] == [1, 2, 3, 4, 5]
    assert [m.modseq for m in messages] == [2, 3, 4, 5, 6]
    assert [await read_all(store, m) for m in messages] == [b"message %d\r\n" % i for i in range(5)]


async def test_concurrent_deliveries_get_distinct_uids(store: Store) -> None:
    alice = await store.add_account("alice@example.org", "h")
    bob = await store.add_account("bob@example.org", "h")
    bodies = [b"message %d\r\n" % i for i in range(60)]
    results = await asyncio.gather(
        *(
            deliver_bytes(store, body, [DeliveryTarget(alice.id), DeliveryTarget(bob.id)])
            for body in bodies
        )
    )
    assert all(r == [Outcome.DELIVERED, Outcome.DELIVERED] for r in results)
    for account in (alice, bob):
        inbox = await inbox_of(store, account.id)
        messages = await store.list_messages(inbox)
        assert [m.uid for m in messages] == list(range(1, 61))
        assert sorted(m.modseq for m in messages) == list(range(2, 62))
        assert sorted([await read_all(store, m) for m in messages]) == sorted(bodies)
        [info] = [m for m in await store.list_mailboxes(account.id) if m.id == inbox]
        assert (info.uidnext, info.highest_modseq, info.message_count) == (61, 61, 60)


async def test_large_message_round_trips_in_chunks(store: Store) -> None:
    alice = await store.add_account("alice@example.org", "h")
    data = os.urandom(1_000_003)  # crosses the spill threshold, odd size
    assert await deliver_bytes(store, data, [DeliveryTarget(alice.id)], chunk=65_000) == [
        Outcome.DELIVERED
    ]
    [message] = await store.list_messages(await inbox_of(store, alice.id))
    assert message.size == len(data)
    chunks = await chunks_of(store.read_message(message))
    assert len(chunks) > 1
    assert b"".join(chunks) == data


async def test_empty_message(store: Store) -> None:
    alice = await store.add_account("alice@example.org", "h")
    spool = store.new_spool()
    assert spool.size == 0
    assert await store.deliver(spool, [DeliveryTarget(alice.id)]) == [Outcome.DELIVERED]
    [message] = await store.list_messages(await inbox_of(store, alice.id))
    assert message.size == 0
    assert await read_all(store, message) == b""


async def test_spool_size_abort_and_single_use(store: Store) -> None:
    alice = await store.add_account("alice@example.org", "h")
    spool = store.new_spool()
    await spool.write(b"abc")
    await spool.write(b"")
    await spool.write(b"de")
    assert spool.size == 5
    await spool.abort()
    await spool.abort()  # idempotent
    with pytest.raises(RuntimeError):
        await spool.write(b"more")
    delivered = store.new_spool()
    await delivered.write(b"x")
    await store.deliver(delivered, [DeliveryTarget(alice.id)])
    with pytest.raises(RuntimeError):
        await delivered.write(b"y")
    with pytest.raises(RuntimeError):
        await store.deliver(delivered, [DeliveryTarget(alice.id)])
    assert len(await store.list_messages(await inbox_of(store, alice.id))) == 1


async def test_aborting_a_large_spool(store: Store) -> None:
    spool = store.new_spool()
    await spool.write(os.urandom(600_000))
    await spool.abort()
    assert spool.size == 600_000


async def test_foreign_spool_is_refused(store: Store) -> None:
    class Foreign:
        size = 0

        async def write(self, data: bytes) -> None: ...

        async def abort(self) -> None: ...

    with pytest.raises(TypeError):
        await store.deliver(Foreign(), [DeliveryTarget(1)])


async def test_list_messages_of_unknown_mailbox_is_empty(store: Store) -> None:
    assert await store.list_messages(987654) == []
    assert await store.list_mailboxes(987654) == []


async def test_read_of_a_made_up_blob_id_is_key_error(store: Store) -> None:
    for blob_id in ("../../etc/passwd", "20240101/" + "0" * 32, ""):
        message = MessageInfo(1, 1, 1, frozenset(), 0.0, 0, 1, blob_id)
        with pytest.raises(KeyError):
            await read_all(store, message)


async def test_write_nowait_takes_small_pieces_and_refuses_without_appending(store: Store) -> None:
    account = await store.add_account("nowait@example.test", "h")
    spool = store.new_spool()
    assert spool.write_nowait(b"Subject: small\r\n\r\n")
    big = b"x" * (1 << 20)
    taken = spool.write_nowait(big)
    if not taken:  # the file-backed spool wants I/O for this: nothing was appended
        assert spool.size == len(b"Subject: small\r\n\r\n")
        await spool.write(big)
    assert spool.size == len(b"Subject: small\r\n\r\n") + len(big)
    [outcome] = await store.deliver(spool, [DeliveryTarget(account.id)])
    assert outcome is Outcome.DELIVERED
    [info] = await store.list_messages(await inbox_of(store, account.id))
    assert await read_all(store, info) == b"Subject: small\r\n\r\n" + big
