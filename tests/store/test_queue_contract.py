"""The outbound queue part of the Store contract (store/base.py), run against every
implementation: what the scheduler (queue/worker.py) and `mailhouse queue` rely on."""

from __future__ import annotations

import time

import pytest

from mailhouse.store.base import (
    DeliveryTarget,
    Outcome,
    QueuedMessage,
    QueueRequest,
    QueueStats,
    RecipientStatus,
    RecipientUpdate,
    Store,
)
from tests.store.conftest import chunks_of

MESSAGE = b"From: a@example.org\r\nSubject: out\r\n\r\nhello\r\n"
PENDING, DELIVERED, FAILED = (
    RecipientStatus.PENDING,
    RecipientStatus.DELIVERED,
    RecipientStatus.FAILED,
)


async def enqueue(
    store: Store,
    recipients: tuple[str, ...] = ("bob@remote.example",),
    *,
    data: bytes = MESSAGE,
    targets: list[DeliveryTarget] | None = None,
    sender: str = "alice@example.org",
    not_before: float | None = None,
    **flags: bool,
) -> QueuedMessage:
    """Deliver `data` with a queue request and return the queue entry it made."""
    before = {m.id for m in await store.queue_list()}
    spool = store.new_spool()
    await spool.write(data)
    request = QueueRequest(sender, recipients, not_before=not_before, **flags)
    await store.deliver(spool, targets or [], queue=request)
    [message] = [m for m in await store.queue_list() if m.id not in before]
    return message


async def blob_bytes(store: Store, blob_id: str) -> bytes:
    return b"".join(await chunks_of(store.read_blob(blob_id)))


def statuses(message: QueuedMessage | None) -> dict[str, RecipientStatus]:
    assert message is not None
    return {r.address: r.status for r in message.recipients}


# --- entering the queue ---------------------------------------------------------------------------
async def test_local_copies_and_queue_entry_share_one_blob(store: Store) -> None:
    alice = await store.add_account("alice@example.org", "h")
    start = time.time()
    message = await enqueue(
        store,
        ("bob@remote.example", "carol@other.example"),
        targets=[DeliveryTarget(alice.id, "Sent")],
        smtputf8=True,
    )
    assert message.sender == "alice@example.org"
    assert message.size == len(MESSAGE)
    assert (message.smtputf8, message.body_8bit, message.delay_warned) == (True, False, False)
    assert start - 1 <= message.created <= time.time() + 1
    assert [(r.address, r.status, r.attempts, r.last_reply) for r in message.recipients] == [
        ("bob@remote.example", PENDING, 0, None),
        ("carol@other.example", PENDING, 0, None),
    ]
    assert all(start - 1 <= r.next_attempt <= time.time() + 1 for r in message.recipients)
    sent = next(m for m in await store.list_mailboxes(alice.id) if m.name == "Sent")
    [copy] = await store.list_messages(sent.id)
    assert copy.blob_id == message.blob_id
    assert await blob_bytes(store, message.blob_id) == MESSAGE
    assert await store.queue_get(message.id) == message


async def test_all_remote_message_needs_no_target(store: Store) -> None:
    spool = store.new_spool()
    await spool.write(MESSAGE)
    outcomes = await store.deliver(spool, [], queue=QueueRequest("", ("x@remote.example",)))
    assert outcomes == []
    [message] = await store.queue_list()
    assert message.sender == ""  # a bounce: the null reverse-path survives the round trip
    assert await blob_bytes(store, message.blob_id) == MESSAGE


async def test_outcomes_still_per_target_when_queueing(store: Store) -> None:
    alice = await store.add_account("alice@example.org", "h")
    spool = store.new_spool()
    await spool.write(MESSAGE)
    outcomes = await store.deliver(
        spool,
        [DeliveryTarget(alice.id + 999), DeliveryTarget(alice.id)],
        queue=QueueRequest("alice@example.org", ("b@remote.example",), body_8bit=True),
    )
    assert outcomes == [Outcome.PERMANENT, Outcome.DELIVERED]
    [message] = await store.queue_list()
    assert message.body_8bit


async def test_recipients_are_kept_once_in_order(store: Store) -> None:
    message = await enqueue(store, ("b@x.example", "a@x.example", "b@x.example"))
    assert [r.address for r in message.recipients] == ["b@x.example", "a@x.example"]


@pytest.mark.parametrize(
    "recipients", [(), ("bad\r\nRCPT TO:<evil@example.org>",), ("",), ("nul\0@x.example",)]
)
async def test_bad_queue_requests_store_nothing(store: Store, recipients: tuple[str, ...]) -> None:
    alice = await store.add_account("alice@example.org", "h")
    spool = store.new_spool()
    await spool.write(MESSAGE)
    with pytest.raises(ValueError):
        await store.deliver(
            spool, [DeliveryTarget(alice.id)], queue=QueueRequest("a@example.org", recipients)
        )
    assert await store.queue_list() == []
    inbox = next(m for m in await store.list_mailboxes(alice.id) if m.name == "INBOX")
    assert await store.list_messages(inbox.id) == []


async def test_read_blob_of_unknown_id_is_key_error(store: Store) -> None:
    for blob_id in ("../../etc/passwd", "20240101/" + "0" * 32, ""):
        with pytest.raises(KeyError):
            await blob_bytes(store, blob_id)


# --- what is due ----------------------------------------------------------------------------------
async def test_not_before_and_next_attempt(store: Store) -> None:
    assert await store.queue_next_attempt() is None
    later = time.time() + 3600
    message = await enqueue(store, not_before=later)
    assert [r.next_attempt for r in message.recipients] == [later]
    assert await store.queue_next_attempt() == later
    assert await store.queue_due(later - 1, 10) == []
    assert [m.id for m in await store.queue_due(later, 10)] == [message.id]


async def test_due_is_oldest_attempt_first_and_limited(store: Store) -> None:
    base = 1_000_000.0
    third = await enqueue(store, not_before=base + 30)
    first = await enqueue(store, ("a@x.example", "b@y.example"), not_before=base + 10)
    second = await enqueue(store, not_before=base + 20)
    await enqueue(store, not_before=base + 999)  # not due
    due = await store.queue_due(base + 100, 10)
    assert [m.id for m in due] == [first.id, second.id, third.id]  # each message once
    assert [m.id for m in await store.queue_due(base + 100, 2)] == [first.id, second.id]
    assert await store.queue_due(base + 100, 0) == []
    assert await store.queue_next_attempt() == base + 10


async def test_a_message_is_due_when_any_pending_recipient_is(store: Store) -> None:
    base = 2_000_000.0
    message = await enqueue(store, ("a@x.example", "b@y.example"), not_before=base)
    await store.queue_update(
        message.id, [RecipientUpdate("a@x.example", PENDING, base + 500, "451 4.3.0 later")]
    )
    assert [m.id for m in await store.queue_due(base, 5)] == [message.id]
    await store.queue_update(
        message.id, [RecipientUpdate("b@y.example", DELIVERED, 0, "250 2.0.0 ok")]
    )
    assert await store.queue_due(base, 5) == []
    assert await store.queue_next_attempt() == base + 500


# --- claims (queue_claim, queue_release) ----------------------------------------------------------
async def recipient_times(store: Store, message_id: int) -> dict[str, tuple[float, int]]:
    message = await store.queue_get(message_id)
    assert message is not None
    return {r.address: (r.next_attempt, r.attempts) for r in message.recipients}


async def test_a_claim_holds_a_message_until_its_lease_ends(store: Store) -> None:
    base = 5_000_000.0
    message = await enqueue(store, not_before=base)
    [claimed] = await store.queue_claim(base + 1, 10, 100.0)
    assert claimed == message  # as it stood before the claim: due at `base`
    assert await store.queue_claim(base + 50, 10, 100.0) == []
    assert await store.queue_due(base + 50, 10) == []
    # What `queue list` and the scheduler see: the next attempt if this one never reports back.
    assert await store.queue_next_attempt() == base + 101
    assert await recipient_times(store, message.id) == {"bob@remote.example": (base + 101, 0)}
    assert [m.id for m in await store.queue_claim(base + 101, 10, 100.0)] == [message.id]
    assert await store.queue_next_attempt() == base + 201


async def test_claims_are_oldest_first_limited_and_each_message_once(store: Store) -> None:
    base = 6_000_000.0
    third = await enqueue(store, not_before=base + 30)
    first = await enqueue(store, ("a@x.example", "b@y.example"), not_before=base + 10)
    second = await enqueue(store, not_before=base + 20)
    later = await enqueue(store, not_before=base + 999)  # not due
    assert await store.queue_claim(base + 100, 0, 60.0) == []
    assert [m.id for m in await store.queue_claim(base + 100, 2, 60.0)] == [first.id, second.id]
    assert [m.id for m in await store.queue_claim(base + 100, 10, 60.0)] == [third.id]
    assert await store.queue_claim(base + 100, 10, 60.0) == []
    assert (await recipient_times(store, later.id))["bob@remote.example"] == (base + 999, 0)


async def test_a_claim_leases_only_the_due_recipients(store: Store) -> None:
    base = 7_000_000.0
    message = await enqueue(store, ("a@x.example", "b@y.example"), not_before=base)
    await store.queue_update(
        message.id, [RecipientUpdate("b@y.example", PENDING, base + 500, "451 4.3.0 later")]
    )
    [claimed] = await store.queue_claim(base, 10, 100.0)
    assert [(r.address, r.next_attempt) for r in claimed.recipients] == [
        ("a@x.example", base), ("b@y.example", base + 500)]
    assert await recipient_times(store, message.id) == {
        "a@x.example": (base + 100, 0), "b@y.example": (base + 500, 1)}


async def test_updates_after_a_claim_record_as_before(store: Store) -> None:
    base = 8_000_000.0
    message = await enqueue(store, ("a@x.example", "b@y.example"), not_before=base)
    await store.queue_claim(base, 10, 3600.0)
    await store.queue_update(message.id, [
        RecipientUpdate("a@x.example", PENDING, base + 300, "451 4.7.1 greylisted"),
        RecipientUpdate("b@y.example", DELIVERED, 0, "250 2.0.0 ok"),
    ])
    assert await recipient_times(store, message.id) == {
        "a@x.example": (base + 300, 1), "b@y.example": (base + 3600, 1)}
    assert statuses(await store.queue_get(message.id))["b@y.example"] is DELIVERED
    assert await store.queue_next_attempt() == base + 300  # the lease is over for both
    assert [m.id for m in await store.queue_claim(base + 300, 10, 3600.0)] == [message.id]
    await store.queue_update(message.id, [RecipientUpdate("a@x.example", FAILED, 0, "550")])
    assert await store.queue_get(message.id) is None
    assert await store.queue_claim(base + 10_000, 10, 3600.0) == []


async def test_release_ends_a_claim_early_without_an_attempt(store: Store) -> None:
    base = 9_000_000.0
    message = await enqueue(store, ("a@x.example", "b@y.example", "c@z.example"),
                            not_before=base)
    await store.queue_update(message.id, [RecipientUpdate("c@z.example", DELIVERED, 0, "250")])
    await store.queue_claim(base, 10, 3600.0)
    await store.queue_release(message.id, ["a@x.example", "c@z.example", "nobody@x.example"],
                              base + 30)
    assert await recipient_times(store, message.id) == {
        "a@x.example": (base + 30, 0), "b@y.example": (base + 3600, 0), "c@z.example": (base, 1)}
    await store.queue_release(message.id, ["a@x.example"], base + 60)  # never postpones
    assert (await recipient_times(store, message.id))["a@x.example"] == (base + 30, 0)
    assert [m.id for m in await store.queue_claim(base + 30, 10, 3600.0)] == [message.id]
    await store.queue_release(987_654, ["a@x.example"], base)  # an unknown message: ignored


async def test_retry_ends_a_lease(store: Store) -> None:
    """`mailhouse queue flush` during a round: the message may be claimed again (the
    scheduler keeps its own rounds apart; another process could deliver it twice)."""
    base = time.time()
    message = await enqueue(store, not_before=base)
    await store.queue_claim(base, 10, 3600.0)
    assert await store.queue_claim(base + 1, 10, 3600.0) == []
    assert await store.queue_retry(None, base + 1) == 1
    assert [m.id for m in await store.queue_claim(base + 1, 10, 3600.0)] == [message.id]


# --- recording attempts ---------------------------------------------------------------------------
async def test_update_records_each_outcome(store: Store) -> None:
    base = 3_000_000.0
    message = await enqueue(store, ("a@x.example", "b@x.example", "c@y.example"), not_before=base)
    await store.queue_update(
        message.id,
        [
            RecipientUpdate("a@x.example", PENDING, base + 300, "451 4.7.1 grey\r\ntry later"),
            RecipientUpdate("b@x.example", FAILED, 0, "550 5.1.1 no such user"),
        ],
    )
    updated = await store.queue_get(message.id)
    assert updated is not None
    a, b, c = updated.recipients
    assert (a.status, a.attempts, a.next_attempt) == (PENDING, 1, base + 300)
    assert a.last_reply == "451 4.7.1 grey try later"  # one line, whatever the remote sent
    assert (b.status, b.attempts, b.last_reply) == (FAILED, 1, "550 5.1.1 no such user")
    assert (c.status, c.attempts, c.last_reply) == (PENDING, 0, None)
    assert updated.delay_warned is False


async def test_done_recipients_never_change_again(store: Store) -> None:
    message = await enqueue(store, ("a@x.example", "b@x.example"))
    await store.queue_update(message.id, [RecipientUpdate("a@x.example", DELIVERED, 0, "250 ok")])
    await store.queue_update(
        message.id,
        [
            RecipientUpdate("a@x.example", PENDING, 1.0, "451 again?"),
            RecipientUpdate("nobody@x.example", FAILED, 0, "550"),
        ],
    )
    updated = await store.queue_get(message.id)
    assert statuses(updated) == {"a@x.example": DELIVERED, "b@x.example": PENDING}
    assert updated is not None and updated.recipients[0].attempts == 1
    await store.queue_update(987_654, [RecipientUpdate("a@x.example", DELIVERED, 0, None)])


async def test_delay_warned_flag(store: Store) -> None:
    message = await enqueue(store)
    await store.queue_update(message.id, [], delay_warned=True)
    updated = await store.queue_get(message.id)
    assert updated is not None and updated.delay_warned is True
    assert updated.recipients == message.recipients
    await store.queue_update(message.id, [])  # None leaves it alone
    assert (await store.queue_get(message.id)).delay_warned is True  # type: ignore[union-attr]


async def test_last_pending_recipient_takes_the_message_out(store: Store) -> None:
    message = await enqueue(store, ("a@x.example", "b@y.example"))
    await store.queue_update(message.id, [RecipientUpdate("a@x.example", FAILED, 0, "550 no")])
    assert await store.queue_get(message.id) is not None
    await store.queue_update(message.id, [RecipientUpdate("b@y.example", DELIVERED, 0, "250")])
    assert await store.queue_get(message.id) is None
    assert await store.queue_list() == []
    assert await store.queue_next_attempt() is None
    with pytest.raises(KeyError):  # the queue held the blob's only reference
        await blob_bytes(store, message.blob_id)


async def test_leaving_the_queue_keeps_the_local_copy(store: Store) -> None:
    alice = await store.add_account("alice@example.org", "h")
    message = await enqueue(store, targets=[DeliveryTarget(alice.id)])
    await store.queue_update(
        message.id, [RecipientUpdate("bob@remote.example", DELIVERED, 0, "250")]
    )
    inbox = next(m for m in await store.list_mailboxes(alice.id) if m.name == "INBOX")
    [copy] = await store.list_messages(inbox.id)
    assert b"".join(await chunks_of(store.read_message(copy))) == MESSAGE


async def test_removing_the_local_owner_keeps_the_queued_bytes(store: Store) -> None:
    alice = await store.add_account("alice@example.org", "h")
    message = await enqueue(store, targets=[DeliveryTarget(alice.id)])
    await store.remove_account("alice@example.org")
    assert await blob_bytes(store, message.blob_id) == MESSAGE


# --- operator actions -----------------------------------------------------------------------------
async def test_retry_one_message_or_all(store: Store) -> None:
    now = time.time()
    later = now + 10_000
    one = await enqueue(store, ("a@x.example", "b@x.example"), not_before=later)
    two = await enqueue(store, not_before=later)
    await store.queue_update(one.id, [RecipientUpdate("b@x.example", DELIVERED, 0, "250")])
    assert await store.queue_due(now, 10) == []
    assert await store.queue_retry(one.id, now) == 1
    assert [m.id for m in await store.queue_due(now, 10)] == [one.id]
    assert await store.queue_retry(None, now) == 2  # every PENDING recipient is due now
    assert [m.id for m in await store.queue_due(now, 10)] == [one.id, two.id]
    assert await store.queue_retry(987_654, now) == 0
    retried = await store.queue_get(one.id)
    assert retried is not None and retried.recipients[0].attempts == 0  # not an attempt


async def test_retry_never_postpones(store: Store) -> None:
    message = await enqueue(store, not_before=100.0)
    assert await store.queue_retry(message.id, 5_000.0) == 1
    assert await store.queue_retry(None, 5_000.0) == 1
    assert await store.queue_next_attempt() == 100.0


async def test_bounce_flags_the_message_and_makes_it_due(store: Store) -> None:
    now = time.time()
    later = now + 10_000
    message = await enqueue(store, ("a@x.example", "b@x.example"), not_before=later)
    other = await enqueue(store, not_before=later)
    await store.queue_update(message.id, [RecipientUpdate("b@x.example", DELIVERED, 0, "250")])
    assert not message.bounce_requested
    assert await store.queue_bounce(message.id, now) == 1  # the one still PENDING
    [due] = await store.queue_due(now, 10)
    assert due.id == message.id and due.bounce_requested
    assert statuses(due) == {"a@x.example": PENDING, "b@x.example": DELIVERED}
    assert due.recipients[0].attempts == 0  # not an attempt
    [claimed] = await store.queue_claim(now, 10, 3600.0)  # the flag survives a claim
    assert claimed.bounce_requested
    assert await store.queue_bounce(message.id, now) == 1  # again: the same, and a lease ends
    assert [m.id for m in await store.queue_due(now, 10)] == [message.id]
    untouched = await store.queue_get(other.id)
    assert untouched is not None and not untouched.bounce_requested
    assert [m.bounce_requested for m in await store.queue_list()] == [True, False]


async def test_bounce_of_an_unknown_message_is_zero(store: Store) -> None:
    message = await enqueue(store)
    await store.queue_delete(message.id)
    assert await store.queue_bounce(message.id, time.time()) == 0
    assert await store.queue_bounce(987_654, time.time()) == 0
    assert await store.queue_list() == []


async def test_delete(store: Store) -> None:
    message = await enqueue(store)
    other = await enqueue(store)
    assert await store.queue_delete(message.id) is True
    assert await store.queue_delete(message.id) is False
    assert [m.id for m in await store.queue_list()] == [other.id]
    with pytest.raises(KeyError):
        await blob_bytes(store, message.blob_id)
    await store.queue_update(message.id, [RecipientUpdate("bob@remote.example", FAILED, 0, "x")])


async def test_ids_are_never_reused(store: Store) -> None:
    first = await enqueue(store)
    await store.queue_delete(first.id)
    second = await enqueue(store)
    assert second.id > first.id


async def test_queue_stats_count_what_waits(store: Store) -> None:
    assert await store.queue_stats() == QueueStats(0, 0, None)
    first = await enqueue(store, ("a@remote.example", "b@remote.example"))
    second = await enqueue(store, ("c@remote.example",))
    stats = await store.queue_stats()
    assert (stats.messages, stats.recipients) == (2, 3)
    assert stats.oldest == min(first.created, second.created)
    await store.queue_update(first.id, [
        RecipientUpdate("a@remote.example", RecipientStatus.DELIVERED, 0, "250 ok"),
        RecipientUpdate("b@remote.example", RecipientStatus.FAILED, 0, "550 no")])
    assert await store.queue_stats() == QueueStats(1, 1, second.created)
