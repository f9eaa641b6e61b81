"""The queue scheduler (queue/worker.py) against a fake RemoteDelivery, a fake BounceSender and
an injected clock, over the real stores: retries, bounces, expiry, delay warnings, concurrency
limits, and a restart in the middle of a delivery."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prometheus_client import Histogram

from mailhouse import metrics
from mailhouse.config import QueueConfig
from mailhouse.errors import Reply
from mailhouse.queue import worker as worker_module
from mailhouse.queue.contracts import FailedRecipient, OutboundMessage, RemoteResult
from mailhouse.queue.worker import EXPIRED_REPLY, QueueWorker, domain_of, reply_line
from mailhouse.store import open_store
from mailhouse.store.base import (
    DeliveryTarget,
    Outcome,
    QueuedMessage,
    QueueRequest,
    RecipientStatus,
    RecipientUpdate,
    Store,
)

T = TypeVar("T")
MESSAGE = b"From: alice@example.org\r\nSubject: out\r\n\r\nhello\r\n"
OK = (Outcome.DELIVERED, Reply(250, "2.0.0", "Ok: queued as 123"))
GREY = (Outcome.TEMPORARY, Reply(451, "4.7.1", "Greylisted, try again"))
UNKNOWN = (Outcome.PERMANENT, Reply(550, "5.1.1", "User unknown"))
IDLE = 0.02  # the workers under test look at the store this often when idle
PENDING, DELIVERED, FAILED = (
    RecipientStatus.PENDING,
    RecipientStatus.DELIVERED,
    RecipientStatus.FAILED,
)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class Clock:
    def __init__(self) -> None:
        # The stores stamp `created` and the first attempt with the real clock: start a little
        # ahead of it, so what a test queues is due at once.
        self.now = time.time() + 5

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Call:
    domain: str
    queue_id: int
    recipients: list[str]
    data: bytes


Answer = tuple[Outcome, Reply]


class FakeDelivery:
    """Answers per recipient from a script (a list consumed one attempt at a time; the last
    answer repeats), OK when unscripted. Deliveries to held domains (all with hold=True) wait
    for `release`."""

    def __init__(self, script: dict[str, list[Answer]] | None = None, *,
                 hold: bool | set[str] = False):
        self.script = script or {}
        self.calls: list[Call] = []
        self.hold = hold
        self.release = asyncio.Event()
        self.active: dict[str, int] = {}
        self.most: dict[str, int] = {}
        self.total = 0
        self.most_total = 0
        self.raise_once = False

    async def deliver(
        self, domain: str, message: OutboundMessage, recipients: Sequence[str]
    ) -> list[RemoteResult]:
        data = b"".join([chunk async for chunk in message.source()])
        self.calls.append(Call(domain, message.queue_id, list(recipients), data))
        self.active[domain] = self.active.get(domain, 0) + 1
        self.total += 1
        self.most[domain] = max(self.most.get(domain, 0), self.active[domain])
        self.most_total = max(self.most_total, self.total)
        try:
            if self.hold is True or (isinstance(self.hold, set) and domain in self.hold):
                await self.release.wait()
            await asyncio.sleep(0)
        finally:
            self.active[domain] -= 1
            self.total -= 1
        if self.raise_once:
            self.raise_once = False
            raise RuntimeError("bug in the delivery")
        return [RemoteResult(r, *self.answer(r), remote_host="mx.remote [192.0.2.9]")
                for r in recipients]

    def answer(self, recipient: str) -> Answer:
        answers = self.script.get(recipient)
        if not answers:
            return OK
        return answers.pop(0) if len(answers) > 1 else answers[0]

    async def close(self) -> None:
        pass


@dataclass
class Dsn:
    message: QueuedMessage
    failed: list[FailedRecipient]
    delayed: bool
    original: bytes


@dataclass
class FakeBounce:
    store: Store
    sent: list[Dsn] = field(default_factory=list)
    failures: int = 0  # raise this many times first

    async def send_dsn(
        self, message: QueuedMessage, failed: Sequence[FailedRecipient], *, delayed: bool
    ) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError("disk full")
        # The message and its bytes must still be there when the DSN is built.
        original = b"".join([c async for c in self.store.read_blob(message.blob_id)])
        self.sent.append(Dsn(message, list(failed), delayed, original))


async def until(check: Callable[[], bool | Awaitable[bool]], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.003)


async def enqueue(
    store: Store, *recipients: str, sender: str = "alice@example.org",
    targets: list[DeliveryTarget] | None = None,
) -> int:
    before = {m.id for m in await store.queue_list()}
    spool = store.new_spool()
    await spool.write(MESSAGE)
    await store.deliver(spool, targets or [], queue=QueueRequest(sender, tuple(recipients)))
    [new] = [m.id for m in await store.queue_list() if m.id not in before]
    return new


async def statuses(store: Store, queue_id: int) -> dict[str, RecipientStatus] | None:
    message = await store.queue_get(queue_id)
    return None if message is None else {r.address: r.status for r in message.recipients}


async def gone(store: Store, queue_id: int) -> bool:
    return await store.queue_get(queue_id) is None


class Setup:
    def __init__(self, store: Store, delivery: FakeDelivery | None = None, **config: Any):
        self.store = store
        self.clock = Clock()
        self.delivery = delivery or FakeDelivery()
        self.bounce = FakeBounce(store)
        config.setdefault("delay_warning", 0)
        self.config = QueueConfig(**config)
        self.worker = self.make_worker()

    def make_worker(self) -> QueueWorker:
        return QueueWorker(self.store, self.delivery, self.config, self.bounce,
                           clock=self.clock, idle_wake=IDLE)


async def memory_store() -> Store:
    store = open_store(Path("/nonexistent"), "memory")
    await store.open()
    return store


# --- retries and bounces --------------------------------------------------------------------------
def test_4xx_then_success_is_delivered_once_after_backoff() -> None:
    timed = metrics.get().delivery_seconds
    before = _observations(timed)

    async def scenario() -> None:
        store = await memory_store()
        s = Setup(store, FakeDelivery({"bob@remote.example": [GREY, OK]}))
        queue_id = await enqueue(store, "bob@remote.example")
        await s.worker.start()
        try:
            await until(lambda: len(s.delivery.calls) == 1)
            await until(lambda: _attempts(store, queue_id, 1))
            message = await store.queue_get(queue_id)
            assert message is not None
            [rcpt] = message.recipients
            assert rcpt.status is PENDING
            assert rcpt.last_reply == "451 4.7.1 Greylisted, try again"
            assert s.clock.now + 270 <= rcpt.next_attempt <= s.clock.now + 330  # 300 s ± 10 %
            await asyncio.sleep(IDLE * 8)
            assert len(s.delivery.calls) == 1  # not before its time
            s.clock.advance(331)
            s.worker.wake()
            await until(lambda: gone(store, queue_id))
            assert len(s.delivery.calls) == 2
            assert all(c.data == MESSAGE for c in s.delivery.calls)
            assert s.bounce.sent == []
        finally:
            await s.worker.stop()

    run(scenario())
    assert _observations(timed) == before + 2  # each attempt's time (the latency histogram)


def _observations(histogram: Histogram) -> float:
    return next(sample.value for family in histogram.collect() for sample in family.samples
                if sample.name.endswith("_count"))


async def _attempts(store: Store, queue_id: int, attempts: int) -> bool:
    message = await store.queue_get(queue_id)
    return message is not None and all(r.attempts == attempts for r in message.recipients)


def test_5xx_for_one_of_two_bounces_only_that_one() -> None:
    async def scenario() -> None:
        store = await memory_store()
        s = Setup(store, FakeDelivery({"bob@remote.example": [UNKNOWN]}))
        queue_id = await enqueue(store, "bob@remote.example", "carol@remote.example")
        await s.worker.start()
        try:
            await until(lambda: gone(store, queue_id))
        finally:
            await s.worker.stop()
        [call] = s.delivery.calls  # one transaction for the domain's two recipients
        assert (call.domain, call.recipients) == (
            "remote.example", ["bob@remote.example", "carol@remote.example"])
        [dsn] = s.bounce.sent
        assert dsn.delayed is False
        assert dsn.message.id == queue_id and dsn.message.sender == "alice@example.org"
        assert dsn.failed == [FailedRecipient(
            address="bob@remote.example", action="failed", status="5.1.1",
            diagnostic="smtp; 550 5.1.1 User unknown", remote_mta="mx.remote [192.0.2.9]")]
        assert dsn.original == MESSAGE

    run(scenario())


def test_failures_in_several_domains_make_one_dsn() -> None:
    async def scenario() -> None:
        store = await memory_store()
        s = Setup(store, FakeDelivery({
            "a@one.example": [UNKNOWN],
            "b@two.example": [(Outcome.PERMANENT, Reply(554, None, "No thanks"))],
        }))
        queue_id = await enqueue(store, "a@one.example", "b@two.example", "c@three.example")
        await s.worker.start()
        try:
            await until(lambda: gone(store, queue_id))
        finally:
            await s.worker.stop()
        assert sorted(c.domain for c in s.delivery.calls) == [
            "one.example", "three.example", "two.example"]
        [dsn] = s.bounce.sent
        assert [(f.address, f.status) for f in dsn.failed] == [
            ("a@one.example", "5.1.1"), ("b@two.example", "5.0.0")]

    run(scenario())


def test_no_dsn_for_a_null_sender() -> None:
    async def scenario() -> None:
        store = await memory_store()
        s = Setup(store, FakeDelivery({"bob@remote.example": [UNKNOWN]}))
        queue_id = await enqueue(store, "bob@remote.example", sender="")
        await s.worker.start()
        try:
            await until(lambda: gone(store, queue_id))
        finally:
            await s.worker.stop()
        assert len(s.delivery.calls) == 1
        assert s.bounce.sent == []

    run(scenario())


def test_a_failed_dsn_keeps_the_recipient_pending_until_it_goes_out() -> None:
    async def scenario() -> None:
        store = await memory_store()
        s = Setup(store, FakeDelivery({"bob@remote.example": [UNKNOWN]}))
        s.bounce.failures = 1
        queue_id = await enqueue(store, "bob@remote.example")
        await s.worker.start()
        try:
            await until(lambda: _attempts(store, queue_id, 1))
            assert await statuses(store, queue_id) == {"bob@remote.example": PENDING}
            assert s.bounce.sent == []
            s.clock.advance(3600)
            s.worker.wake()
            await until(lambda: gone(store, queue_id))
        finally:
            await s.worker.stop()
        [dsn] = s.bounce.sent
        assert [f.address for f in dsn.failed] == ["bob@remote.example"]

    run(scenario())


# --- expiry and delay warnings --------------------------------------------------------------------
def test_expiry_after_max_lifetime_bounces_with_4_4_7() -> None:
    async def scenario() -> None:
        store = await memory_store()
        s = Setup(store, FakeDelivery({"bob@remote.example": [GREY]}), max_lifetime=3600)
        queue_id = await enqueue(store, "bob@remote.example")
        await s.worker.start()
        try:
            await until(lambda: _attempts(store, queue_id, 1))
            s.clock.advance(3600)
            s.worker.wake()
            await until(lambda: gone(store, queue_id))
        finally:
            await s.worker.stop()
        assert len(s.delivery.calls) == 1  # expired: no further attempt, a bounce
        [dsn] = s.bounce.sent
        assert dsn.delayed is False
        assert dsn.failed == [FailedRecipient(
            address="bob@remote.example", action="failed", status="4.4.7",
            diagnostic="smtp; 451 4.7.1 Greylisted, try again", remote_mta=None)]

    run(scenario())


def test_expiry_records_the_expired_reply() -> None:
    async def scenario() -> None:
        store = await memory_store()
        s = Setup(store, max_lifetime=60)
        queue_id = await enqueue(store, "bob@remote.example", sender="")
        s.clock.advance(61)  # already expired when the worker first sees it
        updates: list[Any] = []
        real_update = store.queue_update

        async def spy(message_id: int, ups: Sequence[Any], **kw: Any) -> None:
            updates.extend(ups)
            await real_update(message_id, ups, **kw)

        store.queue_update = spy  # type: ignore[method-assign,assignment]
        await s.worker.start()
        try:
            await until(lambda: gone(store, queue_id))
        finally:
            await s.worker.stop()
        assert s.delivery.calls == [] and s.bounce.sent == []  # <> sender: no DSN either
        assert [(u.address, u.status, u.reply) for u in updates] == [
            ("bob@remote.example", FAILED, EXPIRED_REPLY)]

    run(scenario())


def test_delay_warning_is_sent_once() -> None:
    async def scenario() -> None:
        store = await memory_store()
        s = Setup(store, FakeDelivery({"bob@remote.example": [GREY, GREY, GREY, UNKNOWN]}),
                  delay_warning=600)
        queue_id = await enqueue(store, "bob@remote.example")
        await s.worker.start()
        try:
            await until(lambda: _attempts(store, queue_id, 1))
            assert s.bounce.sent == []  # not waited long enough yet
            for attempts in (2, 3):
                s.clock.advance(2000)
                s.worker.wake()
                await until(lambda a=attempts: _attempts(store, queue_id, a))  # type: ignore[misc]
            message = await store.queue_get(queue_id)
            assert message is not None and message.delay_warned
            s.clock.advance(5000)
            s.worker.wake()
            await until(lambda: gone(store, queue_id))
        finally:
            await s.worker.stop()
        warning, bounce = s.bounce.sent
        assert warning.delayed is True
        assert warning.failed == [FailedRecipient(
            address="bob@remote.example", action="delayed", status="4.7.1",
            diagnostic="smtp; 451 4.7.1 Greylisted, try again", remote_mta=None)]
        assert bounce.delayed is False and bounce.failed[0].status == "5.1.1"

    run(scenario())


def test_no_delay_warning_when_everything_got_through() -> None:
    async def scenario() -> None:
        store = await memory_store()
        s = Setup(store, delay_warning=10)
        s.clock.advance(20)
        queue_id = await enqueue(store, "bob@remote.example")
        await s.worker.start()
        try:
            await until(lambda: gone(store, queue_id))
        finally:
            await s.worker.stop()
        assert s.bounce.sent == []

    run(scenario())


# --- concurrency ----------------------------------------------------------------------------------
def test_per_domain_and_global_limits_are_respected() -> None:
    async def scenario() -> None:
        store = await memory_store()
        s = Setup(store, FakeDelivery(hold=True), max_concurrency=3, destination_concurrency=2)
        ids = [await enqueue(store, f"u{i}@{d}.example") for i in range(4) for d in ("a", "b")]
        await s.worker.start()
        try:
            await until(lambda: s.delivery.total == 3)
            await asyncio.sleep(IDLE * 3)
            assert s.delivery.total == 3
            assert all(n <= 2 for n in s.delivery.active.values())
            s.delivery.release.set()
            for queue_id in ids:
                await until(lambda q=queue_id: gone(store, q))  # type: ignore[misc]
        finally:
            await s.worker.stop()
        assert s.delivery.most_total == 3
        assert max(s.delivery.most.values()) <= 2
        assert len(s.delivery.calls) == 8

    run(scenario())


def test_one_busy_domain_does_not_block_the_others() -> None:
    async def scenario() -> None:
        store = await memory_store()
        s = Setup(store, FakeDelivery(hold=True), max_concurrency=10, destination_concurrency=2)
        for i in range(6):
            await enqueue(store, f"u{i}@busy.example")
        await enqueue(store, "x@quiet.example")
        await s.worker.start()
        try:
            await until(lambda: s.delivery.active.get("quiet.example") == 1)
            await asyncio.sleep(IDLE * 3)
            assert s.delivery.active["busy.example"] == 2
        finally:
            s.delivery.release.set()
            await s.worker.stop()

    run(scenario())


def test_messages_beyond_the_active_limit_follow_without_waiting() -> None:
    async def scenario() -> None:
        store = await memory_store()
        s = Setup(store)
        s.worker = QueueWorker(store, s.delivery, s.config, s.bounce, clock=s.clock,
                               idle_wake=30.0, active_limit=2)
        ids = [await enqueue(store, f"u{i}@remote.example") for i in range(7)]
        await s.worker.start()
        try:
            for queue_id in ids:  # each round's end makes room for the next: no 30 s naps
                await until(lambda q=queue_id: gone(store, q), timeout=1.0)  # type: ignore[misc]
        finally:
            await s.worker.stop()
        assert len(s.delivery.calls) == 7

    run(scenario())


def test_a_message_in_flight_is_not_attempted_twice() -> None:
    async def scenario() -> None:
        store = await memory_store()
        s = Setup(store, FakeDelivery(hold=True))
        queue_id = await enqueue(store, "bob@remote.example")
        await s.worker.start()
        try:
            await until(lambda: len(s.delivery.calls) == 1)
            for _ in range(5):
                s.clock.advance(100_000)
                s.worker.wake()
                await asyncio.sleep(IDLE)
            assert len(s.delivery.calls) == 1
            assert s.worker.in_flight == {queue_id}
            s.delivery.release.set()
            await until(lambda: gone(store, queue_id))
        finally:
            await s.worker.stop()
        assert len(s.delivery.calls) == 1

    run(scenario())


def test_recipients_are_grouped_by_lower_cased_domain() -> None:
    assert domain_of("Bob@Remote.EXAMPLE") == "remote.example"
    assert domain_of('"a@b"@c.example') == "c.example"

    async def scenario() -> None:
        store = await memory_store()
        s = Setup(store)
        queue_id = await enqueue(store, "a@Remote.Example", "b@remote.example", "c@other.example")
        await s.worker.start()
        try:
            await until(lambda: gone(store, queue_id))
        finally:
            await s.worker.stop()
        assert sorted((c.domain, tuple(c.recipients)) for c in s.delivery.calls) == [
            ("other.example", ("c@other.example",)),
            ("remote.example", ("a@Remote.Example", "b@remote.example")),
        ]

    run(scenario())


# --- restart, flush, failures ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_restart_mid_delivery_delivers_the_rest(kind: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        store = open_store(tmp_path / "data", kind)
        await store.open()
        first = FakeDelivery(hold={"slow.example"})  # hangs until the worker is stopped
        s = Setup(store, first)
        alice = await store.add_account("alice@example.org", "h")
        queue_id = await enqueue(store, "x@fast.example", "y@slow.example",
                                 targets=[DeliveryTarget(alice.id, "Sent")])
        await s.worker.start()
        await until(lambda: first.active.get("slow.example") == 1)
        await until(lambda: statuses_are(store, queue_id, {"x@fast.example": DELIVERED}))
        await s.worker.stop(grace=0.05)
        if kind == "sqlite":  # a real restart: the state comes back from disk
            await store.close()
            store = open_store(tmp_path / "data", kind)
            await store.open()
        message = await store.queue_get(queue_id)
        assert message is not None
        assert {r.address: (r.status, r.attempts) for r in message.recipients} == {
            "x@fast.example": (DELIVERED, 1),
            "y@slow.example": (PENDING, 0),  # cancelled: nothing recorded, still due
        }
        second = FakeDelivery()
        s2 = Setup(store, second)
        await s2.worker.start()
        try:
            await until(lambda: gone(store, queue_id))
        finally:
            await s2.worker.stop()
        assert [(c.domain, c.recipients, c.data) for c in second.calls] == [
            ("slow.example", ["y@slow.example"], MESSAGE)]
        sent = next(m for m in await store.list_mailboxes(alice.id) if m.name == "Sent")
        assert len(await store.list_messages(sent.id)) == 1  # the local copy is untouched
        await store.close()

    run(scenario())


async def statuses_are(store: Store, queue_id: int, expected: dict[str, RecipientStatus]) -> bool:
    current = await statuses(store, queue_id) or {}
    return all(current.get(a) is s for a, s in expected.items())


def test_stop_lets_a_delivery_in_flight_finish_within_the_grace() -> None:
    async def scenario() -> None:
        store = await memory_store()
        s = Setup(store, FakeDelivery(hold=True))
        queue_id = await enqueue(store, "bob@remote.example")
        await s.worker.start()
        await until(lambda: s.delivery.total == 1)
        stopping = asyncio.create_task(s.worker.stop(grace=5.0))
        await asyncio.sleep(0.05)
        assert not stopping.done()  # waiting for the delivery
        s.delivery.release.set()
        await asyncio.wait_for(stopping, 1.0)
        assert await gone(store, queue_id)  # its outcome was recorded before stop() returned

    run(scenario())


def test_flush_from_another_process_is_noticed_without_wake() -> None:
    async def scenario() -> None:
        store = await memory_store()
        s = Setup(store, FakeDelivery({"bob@remote.example": [GREY, OK]}))
        queue_id = await enqueue(store, "bob@remote.example")
        await s.worker.start()
        try:
            await until(lambda: _attempts(store, queue_id, 1))
            assert await store.queue_retry(None, s.clock.now) == 1  # `mailhouse queue flush`
            await until(lambda: gone(store, queue_id), timeout=IDLE * 50)
        finally:
            await s.worker.stop()
        assert len(s.delivery.calls) == 2

    assert worker_module.IDLE_WAKE <= 1.0
    run(scenario())


def test_a_delivery_that_raises_is_deferred_and_the_worker_goes_on() -> None:
    async def scenario() -> None:
        store = await memory_store()
        delivery = FakeDelivery()
        delivery.raise_once = True
        s = Setup(store, delivery)
        queue_id = await enqueue(store, "bob@remote.example")
        await s.worker.start()
        try:
            await until(lambda: _attempts(store, queue_id, 1))
            message = await store.queue_get(queue_id)
            assert message is not None
            assert message.recipients[0].last_reply == reply_line(worker_module.LOCAL_FAILURE)
            s.clock.advance(400)
            s.worker.wake()
            await until(lambda: gone(store, queue_id))
        finally:
            await s.worker.stop()

    run(scenario())


# --- the claim ------------------------------------------------------------------------------------
def test_a_message_claimed_by_another_process_waits_for_its_lease(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = open_store(tmp_path / "data", "sqlite")
        other = open_store(tmp_path / "data", "sqlite")  # another queue process, or node
        await store.open()
        await other.open()
        try:
            s = Setup(store, claim_lease=600.0)
            queue_id = await enqueue(store, "bob@remote.example")
            [claimed] = await other.queue_claim(s.clock.now, 10, 600.0)  # and then it died
            assert claimed.id == queue_id
            await s.worker.start()
            try:
                s.clock.advance(599)
                s.worker.wake()
                await asyncio.sleep(IDLE * 8)
                assert s.delivery.calls == []
                s.clock.advance(1)
                s.worker.wake()
                await until(lambda: gone(store, queue_id))
            finally:
                await s.worker.stop()
            assert len(s.delivery.calls) == 1
        finally:
            await other.close()
            await store.close()

    run(scenario())


def test_a_round_holds_its_recipients_for_the_configured_lease() -> None:
    async def scenario() -> None:
        store = await memory_store()
        s = Setup(store, FakeDelivery(hold=True), claim_lease=1234.0)
        queue_id = await enqueue(store, "bob@remote.example")
        await s.worker.start()
        try:
            await until(lambda: s.delivery.total == 1)
            message = await store.queue_get(queue_id)
            assert message is not None
            assert message.recipients[0].next_attempt == s.clock.now + 1234.0
            assert await store.queue_claim(s.clock.now + 1233, 10, 1.0) == []  # nobody else
            s.delivery.release.set()
            await until(lambda: gone(store, queue_id))
        finally:
            await s.worker.stop()

    assert QueueConfig().claim_lease >= 30 * 60  # RFC 5321 §4.5.3.2: 5+5+5+2+3+10 minutes
    run(scenario())


def test_a_round_that_fails_locally_releases_its_recipients_for_a_while() -> None:
    async def scenario() -> None:
        store = await memory_store()
        s = Setup(store)
        queue_id = await enqueue(store, "bob@remote.example")
        real_update = store.queue_update
        failures = [OSError("disk full")]

        async def failing_update(*args: Any, **kw: Any) -> None:
            if failures:
                raise failures.pop()
            await real_update(*args, **kw)

        store.queue_update = failing_update  # type: ignore[method-assign]
        await s.worker.start()
        try:
            await until(lambda: len(s.delivery.calls) == 1)
            expected = s.clock.now + worker_module.ROUND_FAILURE_HOLD

            async def held() -> bool:
                return await store.queue_next_attempt() == expected

            await until(held)
            assert s.worker.in_flight == frozenset()
            await asyncio.sleep(IDLE * 8)
            assert len(s.delivery.calls) == 1  # not before the hold ends
            s.clock.advance(worker_module.ROUND_FAILURE_HOLD)
            s.worker.wake()
            await until(lambda: gone(store, queue_id))
        finally:
            await s.worker.stop()
        assert len(s.delivery.calls) == 2

    run(scenario())


def test_a_message_made_due_during_its_round_is_tried_when_the_round_ends() -> None:
    """A flush while a round runs: not a second round at once, but the recipients the round did
    not hold are released at its end instead of waiting for the lease."""
    async def scenario() -> None:
        store = await memory_store()
        s = Setup(store, FakeDelivery(hold={"slow.example"}))
        queue_id = await enqueue(store, "x@fast.example", "y@slow.example")
        await store.queue_update(queue_id, [RecipientUpdate(
            "x@fast.example", RecipientStatus.PENDING, s.clock.now + 500, "451 later")])
        await s.worker.start()
        try:
            await until(lambda: s.delivery.total == 1)  # y, held
            assert await store.queue_retry(queue_id, s.clock.now) == 2  # `queue retry ID`
            await asyncio.sleep(IDLE * 8)  # claimed again, but no second round
            assert [c.recipients for c in s.delivery.calls] == [["y@slow.example"]]
            s.delivery.release.set()
            await until(lambda: gone(store, queue_id))
        finally:
            await s.worker.stop()
        assert [c.recipients for c in s.delivery.calls] == [
            ["y@slow.example"], ["x@fast.example"]]

    run(scenario())


def test_new_mail_is_seen_at_once_with_wake() -> None:
    async def scenario() -> None:
        store = await memory_store()
        s = Setup(store)
        s.worker = QueueWorker(store, s.delivery, s.config, s.bounce, clock=s.clock,
                               idle_wake=30.0)
        await s.worker.start()
        try:
            await asyncio.sleep(0.01)  # asleep on an empty queue
            queue_id = await enqueue(store, "bob@remote.example")
            s.worker.wake()
            await until(lambda: gone(store, queue_id), timeout=1.0)
        finally:
            await s.worker.stop()

    run(scenario())


def test_start_twice_and_stop_when_idle() -> None:
    async def scenario() -> None:
        store = await memory_store()
        s = Setup(store)
        await s.worker.start()
        with pytest.raises(RuntimeError):
            await s.worker.start()
        started = time.monotonic()
        await s.worker.stop()
        await s.worker.stop()  # idempotent
        assert time.monotonic() - started < 0.5

    run(scenario())


def test_one_log_line_per_attempt(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        store = await memory_store()
        s = Setup(store, FakeDelivery({"bob@remote.example": [GREY]}))
        queue_id = await enqueue(store, "bob@remote.example", "carol@remote.example")
        await s.worker.start()
        try:
            await until(lambda: _attempts(store, queue_id, 1))
        finally:
            await s.worker.stop()
        lines = [r.getMessage() for r in caplog.records if "event=queue.attempt" in r.message]
        assert lines == [
            f"event=queue.attempt id={queue_id} domain=remote.example rcpts=2 outcome=mixed"
            f" reply='451 4.7.1 Greylisted, try again' host=mx.remote[192.0.2.9]"
            f" delay=0.000"
        ]

    caplog.set_level(logging.INFO, logger="mailhouse.queue")
    run(scenario())
