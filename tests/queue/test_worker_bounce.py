"""An operator's bounce (`Store.queue_bounce`, `mailhouse queue bounce`) as the queue worker
carries it out: the PENDING recipients fail with 5.0.0 without another attempt, the sender gets
one DSN, what was delivered stays delivered, and a round in flight finishes first."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from mailhouse.queue.contracts import FailedRecipient
from mailhouse.queue.worker import BOUNCED_REPLY, BOUNCED_STATUS
from mailhouse.store.base import RecipientStatus, RecipientUpdate, Store
from tests.queue.test_worker import (
    GREY,
    IDLE,
    OK,
    FakeDelivery,
    Setup,
    enqueue,
    gone,
    memory_store,
    run,
    statuses,
    until,
)

PENDING, DELIVERED, FAILED = (
    RecipientStatus.PENDING,
    RecipientStatus.DELIVERED,
    RecipientStatus.FAILED,
)


def recorded(store: Store) -> list[tuple[str, RecipientStatus, str | None]]:
    """Spy on the store: every recipient update the worker makes, in order."""
    updates: list[tuple[str, RecipientStatus, str | None]] = []
    real_update = store.queue_update

    async def spy(message_id: int, ups: Sequence[RecipientUpdate], **kw: Any) -> None:
        updates.extend((u.address, u.status, u.reply) for u in ups)
        await real_update(message_id, ups, **kw)

    store.queue_update = spy  # type: ignore[method-assign]
    return updates


def test_a_deferred_message_is_bounced_with_one_dsn_and_no_attempt() -> None:
    async def scenario() -> None:
        store = await memory_store()
        s = Setup(store, FakeDelivery({"bob@remote.example": [GREY],
                                       "carol@other.example": [OK]}))
        queue_id = await enqueue(store, "bob@remote.example", "carol@other.example")
        updates = recorded(store)
        await s.worker.start()
        try:
            await until(lambda: len(updates) == 2)  # carol delivered, bob deferred
            assert await statuses(store, queue_id) == {
                "bob@remote.example": PENDING, "carol@other.example": DELIVERED}
            assert await store.queue_bounce(queue_id, s.clock.now) == 1  # no wake(): polled
            await until(lambda: gone(store, queue_id))
            await asyncio.sleep(IDLE * 4)
        finally:
            await s.worker.stop()
        assert len(s.delivery.calls) == 2  # the first round only: a bounce is not an attempt
        [dsn] = s.bounce.sent
        assert dsn.delayed is False and dsn.message.id == queue_id
        assert dsn.failed == [FailedRecipient(
            address="bob@remote.example", action="failed", status=BOUNCED_STATUS,
            diagnostic="smtp; 451 4.7.1 Greylisted, try again", remote_mta=None)]
        assert updates[2:] == [("bob@remote.example", FAILED, BOUNCED_REPLY)]

    run(scenario())


def test_no_dsn_when_the_sender_is_null() -> None:
    async def scenario() -> None:
        store = await memory_store()
        s = Setup(store, FakeDelivery({"bob@remote.example": [GREY]}))
        queue_id = await enqueue(store, "bob@remote.example", sender="")
        updates = recorded(store)
        await store.queue_bounce(queue_id, s.clock.now)  # before any attempt
        await s.worker.start()
        try:
            await until(lambda: gone(store, queue_id))
        finally:
            await s.worker.stop()
        assert s.delivery.calls == [] and s.bounce.sent == []
        assert updates == [("bob@remote.example", FAILED, BOUNCED_REPLY)]

    run(scenario())


def test_a_round_in_flight_finishes_before_the_bounce_takes_the_rest() -> None:
    """y is being delivered when the operator bounces: its delivery goes on and is recorded;
    x (deferred, not in the round) is bounced when the round ends, with one DSN for x only."""
    async def scenario() -> None:
        store = await memory_store()
        s = Setup(store, FakeDelivery(hold={"slow.example"}))
        queue_id = await enqueue(store, "x@fast.example", "y@slow.example")
        await store.queue_update(queue_id, [RecipientUpdate(
            "x@fast.example", PENDING, s.clock.now + 500, "451 4.4.1 No answer")])
        await s.worker.start()
        try:
            await until(lambda: s.delivery.total == 1)  # y, held
            assert await store.queue_bounce(queue_id, s.clock.now) == 2
            await asyncio.sleep(IDLE * 8)  # claimed again, but the round still runs
            assert s.bounce.sent == []
            s.delivery.release.set()
            await until(lambda: gone(store, queue_id))
        finally:
            await s.worker.stop()
        assert [c.recipients for c in s.delivery.calls] == [["y@slow.example"]]
        [dsn] = s.bounce.sent
        assert [(f.address, f.status) for f in dsn.failed] == [("x@fast.example", "5.0.0")]

    run(scenario())


def test_a_bounce_whose_dsn_cannot_be_sent_is_tried_again() -> None:
    async def scenario() -> None:
        store = await memory_store()
        s = Setup(store)
        s.bounce.failures = 1
        queue_id = await enqueue(store, "bob@remote.example")
        await store.queue_bounce(queue_id, s.clock.now)
        await s.worker.start()
        try:
            await until(lambda: s.bounce.failures == 0)
            await asyncio.sleep(IDLE * 4)
            assert await statuses(store, queue_id) == {"bob@remote.example": PENDING}
            s.clock.advance(3600)
            await until(lambda: gone(store, queue_id))
        finally:
            await s.worker.stop()
        assert s.delivery.calls == []  # still bounced, never delivered
        [dsn] = s.bounce.sent
        assert [f.address for f in dsn.failed] == ["bob@remote.example"]

    run(scenario())
