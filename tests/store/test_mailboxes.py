"""Mailboxes and subscriptions (Store.create_mailbox, delete_mailbox, rename_mailbox, subscribe,
unsubscribe, list_subscriptions): the contract run against every implementation, including two
embedded stores on one data directory; then the schema upgrade only the embedded store has.

RFC 9051 §6.3.4-§6.3.9 and RFC 6154; the choices the RFCs leave open are in docs/decisions.md.
"""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from mailhouse.model import Account
from mailhouse.store import open_store, schema
from mailhouse.store.base import (
    DEFAULT_MAILBOXES,
    DeliveryTarget,
    MailboxExists,
    MailboxInfo,
    MailboxNotAllowed,
    NoSuchMailbox,
    Outcome,
    Store,
)
from mailhouse.store.rules import MAX_MAILBOX_NAME
from tests.store.conftest import deliver_bytes, read_all

MESSAGE = b"From: a@example.org\r\nSubject: filed\r\n\r\nhello\r\n"


async def alice(store: Store) -> Account:
    return await store.add_account("alice@example.org", "h")


async def names(store: Store, account_id: int) -> list[str]:
    return sorted(m.name for m in await store.list_mailboxes(account_id))


async def mailbox(store: Store, account_id: int, name: str) -> MailboxInfo:
    found = await store.get_mailbox(account_id, name)
    assert found is not None, name
    return found


async def fill(store: Store, account_id: int, name: str, count: int) -> None:
    for i in range(count):
        body = b"Subject: %d\r\n\r\n%s\r\n" % (i, name.encode())
        target = DeliveryTarget(account_id, name, flags=("\\Seen",) if i % 2 else ())
        assert await deliver_bytes(store, body, [target]) == [Outcome.DELIVERED]


# --- create ---------------------------------------------------------------------------------------
async def test_create_gives_an_empty_mailbox_with_a_new_uidvalidity(store: Store) -> None:
    account = await alice(store)
    before = {m.uidvalidity for m in await store.list_mailboxes(account.id)}
    created = await store.create_mailbox(account.id, "Lists/python")
    assert created == await mailbox(store, account.id, "Lists/python")
    assert (created.account_id, created.name, created.special_use) == (
        account.id, "Lists/python", None,
    )
    assert (created.uidnext, created.message_count, created.subscribed) == (1, 0, False)
    assert created.uidvalidity not in before
    # Levels above are not created: "Lists" is a \Noselect level while "Lists/python" exists.
    assert await store.get_mailbox(account.id, "Lists") is None
    await fill(store, account.id, "Lists/python", 1)


async def test_create_with_special_use(store: Store) -> None:
    account = await alice(store)
    created = await store.create_mailbox(account.id, "Old mail", "\\Archive")
    assert created.special_use == "\\Archive"
    assert (await mailbox(store, account.id, "Old mail")).special_use == "\\Archive"
    with pytest.raises(ValueError):
        await store.create_mailbox(account.id, "Everything", "\\All")  # virtual: not creatable
    with pytest.raises(ValueError):
        await store.create_mailbox(account.id, "Odd", "\\Odd")
    assert await store.get_mailbox(account.id, "Odd") is None


async def test_create_an_existing_name(store: Store) -> None:
    account = await alice(store)
    await store.create_mailbox(account.id, "Work")
    for taken in ("Work", "INBOX", "inbox", "Sent"):
        with pytest.raises(MailboxExists):
            await store.create_mailbox(account.id, taken)
    await store.create_mailbox(account.id, "work")  # other names keep their case (RFC 9051 §5.1)


async def test_inbox_as_first_level_is_case_insensitive(store: Store) -> None:
    account = await alice(store)
    created = await store.create_mailbox(account.id, "inbox/Receipts")
    assert created.name == "INBOX/Receipts"
    assert await store.get_mailbox(account.id, "Inbox/Receipts") == created
    with pytest.raises(MailboxExists):
        await store.create_mailbox(account.id, "INBOX/Receipts")


async def test_a_noselect_level_can_become_a_mailbox(store: Store) -> None:
    account = await alice(store)
    await store.create_mailbox(account.id, "a/b")
    created = await store.create_mailbox(account.id, "a")
    assert created.name == "a"
    defaults = [n for n, _ in DEFAULT_MAILBOXES]
    assert await names(store, account.id) == sorted([*defaults, "a", "a/b"])


@pytest.mark.parametrize(
    "name",
    ["", "/a", "a/", "a//b", ".", "..", "a/../b", "a/./b", "a\x00b", "a\r\nb", "a\x7fb",
     "a\u2028b", "x" * (MAX_MAILBOX_NAME + 1)],
)
async def test_bad_names_are_refused_everywhere(store: Store, name: str) -> None:
    account = await alice(store)
    await store.create_mailbox(account.id, "ok")
    for call in (
        lambda: store.create_mailbox(account.id, name),
        lambda: store.delete_mailbox(account.id, name),
        lambda: store.rename_mailbox(account.id, "ok", name),
        lambda: store.rename_mailbox(account.id, name, "fine"),
        lambda: store.subscribe(account.id, name),
        lambda: store.unsubscribe(account.id, name),
    ):
        with pytest.raises(ValueError):
            await call()
    assert "ok" in await names(store, account.id)
    assert "fine" not in await names(store, account.id)


async def test_longest_name_is_accepted(store: Store) -> None:
    account = await alice(store)
    name = "x" * MAX_MAILBOX_NAME
    assert (await store.create_mailbox(account.id, name)).name == name


async def test_create_for_an_unknown_account(store: Store) -> None:
    account = await alice(store)
    with pytest.raises(KeyError):
        await store.create_mailbox(account.id + 10_000, "Work")


# --- delete ---------------------------------------------------------------------------------------
async def test_delete_removes_the_mailbox_and_its_messages(store: Store) -> None:
    account = await alice(store)
    work = await store.create_mailbox(account.id, "Work")
    await fill(store, account.id, "Work", 3)
    await store.delete_mailbox(account.id, "Work")
    assert await store.get_mailbox(account.id, "Work") is None
    assert await store.list_messages(work.id) == []
    assert await store.list_expunged(work.id) == []
    again = await store.create_mailbox(account.id, "Work")  # RFC 9051 §2.3.1.1
    assert again.id != work.id
    assert again.uidvalidity != work.uidvalidity
    assert (again.uidnext, again.message_count) == (1, 0)


async def test_delete_drops_blob_references(store: Store) -> None:
    account = await alice(store)
    await store.create_mailbox(account.id, "Work")
    targets = [DeliveryTarget(account.id), DeliveryTarget(account.id, "Work")]
    assert await deliver_bytes(store, MESSAGE, targets) == [Outcome.DELIVERED] * 2
    [work_copy] = await store.list_messages((await mailbox(store, account.id, "Work")).id)
    await store.delete_mailbox(account.id, "Work")
    [inbox_copy] = await store.list_messages((await mailbox(store, account.id, "INBOX")).id)
    assert inbox_copy.blob_id == work_copy.blob_id
    assert await read_all(store, inbox_copy) == MESSAGE  # the other reference keeps it
    await store.create_mailbox(account.id, "Solo")
    await deliver_bytes(store, MESSAGE, [DeliveryTarget(account.id, "Solo")])
    [solo] = await store.list_messages((await mailbox(store, account.id, "Solo")).id)
    await store.delete_mailbox(account.id, "Solo")
    with pytest.raises(KeyError):
        await read_all(store, solo)  # its only reference went with the mailbox


async def test_delete_keeps_inferiors(store: Store) -> None:
    """RFC 9051 §6.3.5: DELETE never removes inferior names; "a" lives on as a \\Noselect level,
    and deleting that level is an error."""
    account = await alice(store)
    await store.create_mailbox(account.id, "a")
    await store.create_mailbox(account.id, "a/b")
    await fill(store, account.id, "a/b", 2)
    await store.delete_mailbox(account.id, "a")
    assert await store.get_mailbox(account.id, "a") is None
    child = await mailbox(store, account.id, "a/b")
    assert child.message_count == 2
    with pytest.raises(NoSuchMailbox):
        await store.delete_mailbox(account.id, "a")


async def test_delete_refusals(store: Store) -> None:
    account = await alice(store)
    for inbox in ("INBOX", "Inbox"):
        with pytest.raises(MailboxNotAllowed):
            await store.delete_mailbox(account.id, inbox)
    with pytest.raises(NoSuchMailbox):
        await store.delete_mailbox(account.id, "Nothing")
    with pytest.raises(NoSuchMailbox):
        await store.delete_mailbox(account.id + 10_000, "Sent")
    assert len(await store.list_mailboxes(account.id)) == len(DEFAULT_MAILBOXES)


# --- rename ---------------------------------------------------------------------------------------
async def test_rename_moves_a_whole_subtree(store: Store) -> None:
    account = await alice(store)
    for name in ("a", "a/b", "a/b/c", "ab", "a0"):
        await store.create_mailbox(account.id, name)
    await fill(store, account.id, "a/b", 2)
    before = {n: await mailbox(store, account.id, n) for n in ("a", "a/b", "a/b/c")}
    await store.rename_mailbox(account.id, "a", "x/y")
    for old, new in (("a", "x/y"), ("a/b", "x/y/b"), ("a/b/c", "x/y/b/c")):
        moved = await mailbox(store, account.id, new)
        assert moved == replace(before[old], name=new)
        assert await store.get_mailbox(account.id, old) is None
    assert [m.uid for m in await store.list_messages(before["a/b"].id)] == [1, 2]
    for sibling in ("ab", "a0"):  # names that only share a prefix stay
        await mailbox(store, account.id, sibling)


async def test_rename_a_noselect_level(store: Store) -> None:
    account = await alice(store)
    await store.create_mailbox(account.id, "a/b")
    await store.rename_mailbox(account.id, "a", "z")
    assert await names(store, account.id) == sorted([n for n, _ in DEFAULT_MAILBOXES] + ["z/b"])


async def test_rename_keeps_special_use(store: Store) -> None:
    account = await alice(store)
    await store.rename_mailbox(account.id, "Sent", "Sent Items")
    assert (await mailbox(store, account.id, "Sent Items")).special_use == "\\Sent"


async def test_rename_refusals(store: Store) -> None:
    account = await alice(store)
    for name in ("a", "a/b", "c/d"):
        await store.create_mailbox(account.id, name)
    with pytest.raises(NoSuchMailbox):
        await store.rename_mailbox(account.id, "nothing", "new")
    with pytest.raises(MailboxExists):
        await store.rename_mailbox(account.id, "a", "Sent")
    with pytest.raises(MailboxExists):
        await store.rename_mailbox(account.id, "a", "c")  # a \Noselect level is a name
    with pytest.raises(MailboxExists):
        await store.rename_mailbox(account.id, "a", "a")
    with pytest.raises(MailboxExists):
        await store.rename_mailbox(account.id, "Sent", "inbox")
    with pytest.raises(MailboxNotAllowed):
        await store.rename_mailbox(account.id, "a", "a/b/x")
    with pytest.raises(NoSuchMailbox):
        await store.rename_mailbox(account.id + 10_000, "a", "b")
    assert await names(store, account.id) == sorted(
        [n for n, _ in DEFAULT_MAILBOXES] + ["a", "a/b", "c/d"]
    )


async def test_renaming_inbox_moves_its_messages(store: Store) -> None:
    """RFC 9051 §6.3.6: INBOX's messages go to the new mailbox, INBOX stays, empty; its
    inferiors do not move. INBOX's UIDs are not reused and QRESYNC clients see them vanish."""
    account = await alice(store)
    await store.create_mailbox(account.id, "INBOX/kept")
    await fill(store, account.id, "INBOX", 3)
    inbox = await mailbox(store, account.id, "INBOX")
    messages = await store.list_messages(inbox.id)
    await store.rename_mailbox(account.id, "inbox", "Old/INBOX")
    moved = await mailbox(store, account.id, "Old/INBOX")
    assert moved.id != inbox.id
    assert moved.uidvalidity not in {m.uidvalidity for m in await store.list_mailboxes(account.id)
                                     if m.id != moved.id}
    assert (moved.uidnext, moved.highest_modseq, moved.message_count) == (4, 4, 3)
    assert moved.special_use is None
    now = await store.list_messages(moved.id)
    assert [(m.uid, m.flags, m.modseq, m.blob_id) for m in now] == [
        (m.uid, m.flags, m.modseq, m.blob_id) for m in messages
    ]
    assert [await read_all(store, m) for m in now] == [await read_all(store, m) for m in messages]
    emptied = await mailbox(store, account.id, "INBOX")
    assert (emptied.id, emptied.uidvalidity, emptied.uidnext) == (inbox.id, inbox.uidvalidity, 4)
    assert (emptied.message_count, emptied.highest_modseq) == (0, 5)
    assert await store.list_messages(inbox.id) == []
    assert [(e.uid, e.modseq) for e in await store.list_expunged(inbox.id)] == [
        (1, 5), (2, 5), (3, 5)
    ]
    await mailbox(store, account.id, "INBOX/kept")
    await fill(store, account.id, "INBOX", 1)
    assert [m.uid for m in await store.list_messages(inbox.id)] == [4]


async def test_renaming_an_empty_inbox(store: Store) -> None:
    account = await alice(store)
    inbox = await mailbox(store, account.id, "INBOX")
    await store.rename_mailbox(account.id, "INBOX", "INBOX/old")  # below itself: INBOX stays
    assert (await mailbox(store, account.id, "INBOX/old")).message_count == 0
    assert await mailbox(store, account.id, "INBOX") == inbox
    assert await store.list_expunged(inbox.id) == []


# --- subscriptions --------------------------------------------------------------------------------
async def test_new_accounts_are_subscribed_to_their_default_mailboxes(store: Store) -> None:
    account = await alice(store)
    assert await store.list_subscriptions(account.id) == sorted(n for n, _ in DEFAULT_MAILBOXES)
    assert all(m.subscribed for m in await store.list_mailboxes(account.id))


async def test_subscriptions_are_names(store: Store) -> None:
    """RFC 9051 §6.3.7: a subscription may name a mailbox that does not exist, and DELETE does
    not remove it; RENAME does not carry it (docs/decisions.md)."""
    account = await alice(store)
    await store.subscribe(account.id, "Not yet")
    await store.subscribe(account.id, "Not yet")  # idempotent
    assert "Not yet" in await store.list_subscriptions(account.id)
    created = await store.create_mailbox(account.id, "Not yet")
    assert created.subscribed
    await store.delete_mailbox(account.id, "Not yet")
    assert "Not yet" in await store.list_subscriptions(account.id)
    await store.rename_mailbox(account.id, "Junk", "Spam")
    subscriptions = await store.list_subscriptions(account.id)
    assert "Junk" in subscriptions and "Spam" not in subscriptions
    assert not (await mailbox(store, account.id, "Spam")).subscribed
    assert await store.unsubscribe(account.id, "Not yet") is True
    assert await store.unsubscribe(account.id, "Not yet") is False
    assert (await mailbox(store, account.id, "Sent")).subscribed is True
    await store.subscribe(account.id, "inbox")
    assert await store.unsubscribe(account.id, "INBOX") is True
    assert not (await mailbox(store, account.id, "INBOX")).subscribed


async def test_subscriptions_belong_to_one_account(store: Store) -> None:
    first = await alice(store)
    bob = await store.add_account("bob@example.org", "h")
    await store.subscribe(first.id, "Private")
    assert "Private" not in await store.list_subscriptions(bob.id)
    with pytest.raises(KeyError):
        await store.subscribe(bob.id + 10_000, "x")
    assert await store.list_subscriptions(bob.id + 10_000) == []
    await store.remove_account("alice@example.org")
    assert await store.list_subscriptions(first.id) == []


# --- the embedded store: schema upgrade -----------------------------------------------------------
DATA = Path(__file__).parent / "data"


async def test_a_version_2_database_upgrades(tmp_path: Path) -> None:
    """A database written by the release before IMAP (schema version 2) opens: its mailboxes'
    `subscribed` column becomes subscriptions, and the new operations work on it."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with sqlite3.connect(data_dir / "mailhouse.db") as conn:
        conn.executescript((DATA / "schema_v2.sql").read_text(encoding="utf-8"))
        conn.execute("UPDATE mailboxes SET subscribed = 0 WHERE name = 'Junk'")
        conn.execute("PRAGMA user_version = 2")
    store = open_store(data_dir, "sqlite")
    await store.open()
    try:
        account = await store.get_account("alice@example.org")
        assert account is not None
        expected = sorted(n for n, _ in DEFAULT_MAILBOXES if n != "Junk")
        assert await store.list_subscriptions(account.id) == expected
        assert not (await mailbox(store, account.id, "Junk")).subscribed
        inbox = await mailbox(store, account.id, "INBOX")
        sent = await mailbox(store, account.id, "Sent")
        messages = await store.list_messages(sent.id)
        assert messages  # the fixture has mail: the version 5 counters are computed from it
        assert (sent.message_count, sent.unseen, sent.deleted, sent.size) == (
            len(messages),
            sum("\\Seen" not in m.flags for m in messages),
            sum("\\Deleted" in m.flags for m in messages),
            sum(m.size for m in messages),
        )
        assert (inbox.highest_modseq, sent.highest_modseq) == (1, 1)  # version 4: >= 1
        quota = await store.get_quota(account.id)  # version 7: no limit, usage from the rows
        assert quota is not None and (quota.used, quota.limit) == (sent.size, None)
        created = await store.create_mailbox(account.id, "Later")
        assert created.uidvalidity > max(m.uidvalidity for m in await store.list_mailboxes(
            account.id) if m.id != created.id)
        await store.rename_mailbox(account.id, "INBOX", "Before")
        assert (await mailbox(store, account.id, "Before")).message_count == inbox.message_count
    finally:
        await store.close()
    with sqlite3.connect(data_dir / "mailhouse.db") as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (schema.latest_version(),)
