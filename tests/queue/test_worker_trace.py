"""The queue worker's steps in the message trace: each attempt's outcome per recipient, the
DSN, an expiry, a bounce that could not be sent, and the delay warning."""

from __future__ import annotations

from mailhouse.queue.worker import QueueWorker
from mailhouse.service.trace import TraceService
from mailhouse.service.trace_recorder import TraceRecorder
from mailhouse.store.base import QueueRequest, Store
from tests.queue.test_worker import (
    GREY,
    IDLE,
    MESSAGE,
    UNKNOWN,
    FakeDelivery,
    Setup,
    _attempts,
    gone,
    memory_store,
    run,
    until,
)


class TracedSetup(Setup):
    def make_worker(self) -> QueueWorker:
        self.recorder = TraceRecorder(self.store, flush_interval=0.01)
        return QueueWorker(self.store, self.delivery, self.config, self.bounce,
                           clock=self.clock, idle_wake=IDLE, trace=self.recorder)


async def _enqueue(store: Store, *recipients: str, trace: str = "T1",
                   sender: str = "alice@example.org") -> int:
    spool = store.new_spool()
    await spool.write(MESSAGE)
    await store.deliver(spool, [], queue=QueueRequest(sender, recipients, trace=trace))
    return max(m.id for m in await store.queue_list())


async def _steps(s: TracedSetup, trace: str) -> list[tuple[str, str, str]]:
    await s.recorder.close()
    found = await TraceService(s.store).show(trace)
    assert found is not None
    return [(step.kind, step.recipient, step.description) for step in found.steps]


def test_delivered_deferred_bounced_and_the_dsn_are_steps_of_the_trace() -> None:
    async def scenario() -> None:
        store = await memory_store()
        s = TracedSetup(store, FakeDelivery({"grey@remote.example": [GREY],
                                             "bad@remote.example": [UNKNOWN]}))
        queue_id = await _enqueue(store, "ok@remote.example", "grey@remote.example",
                                  "bad@remote.example")
        await s.worker.start()
        try:
            await until(lambda: _attempts(store, queue_id, 1))
        finally:
            await s.worker.stop()
        steps = await _steps(s, "T1")
        kinds = {(kind, rcpt) for kind, rcpt, _ in steps}
        assert kinds == {("delivered", "ok@remote.example"),
                         ("deferred", "grey@remote.example"),
                         ("dsn", "alice@example.org"), ("bounced", "bad@remote.example")}
        lines = {kind: line for kind, _, line in steps}
        assert "mx.remote [192.0.2.9]" in lines["delivered"]
        assert "451 4.7.1 Greylisted" in lines["deferred"] and "next attempt" in lines["deferred"]
        assert "550 5.1.1 User unknown" in lines["bounced"]
        assert "bounce (DSN)" in lines["dsn"]
        [first] = await store.trace_events("T1", 1)
        assert first.queue_id == queue_id

    run(scenario())


def test_expiry_and_a_bounce_that_could_not_be_sent_are_steps() -> None:
    async def scenario() -> None:
        store = await memory_store()
        s = TracedSetup(store, FakeDelivery({"grey@remote.example": [GREY]}),
                        max_lifetime=3600)
        s.bounce.failures = 1  # the expiry's first bounce cannot be stored
        queue_id = await _enqueue(store, "grey@remote.example")
        await s.worker.start()
        try:
            await until(lambda: _attempts(store, queue_id, 1))
            s.clock.advance(3600)
            s.worker.wake()
            await until(lambda: _attempts(store, queue_id, 2))
            s.clock.advance(7200)
            s.worker.wake()
            await until(lambda: gone(store, queue_id))
        finally:
            await s.worker.stop()
        steps = [(kind, line) for kind, _, line in await _steps(s, "T1")]
        assert [kind for kind, _ in steps] == ["deferred", "deferred", "dsn", "bounced"]
        assert "bounce could not be sent" in steps[1][1]
        assert "4.4.7 Delivery time expired" in steps[-1][1]

    run(scenario())


def test_the_delay_warning_is_a_step() -> None:
    async def scenario() -> None:
        store = await memory_store()
        s = TracedSetup(store, FakeDelivery({"grey@remote.example": [GREY]}),
                        delay_warning=1)
        queue_id = await _enqueue(store, "grey@remote.example")
        s.clock.advance(2)
        await s.worker.start()
        try:
            await until(lambda: bool(s.bounce.sent))
        finally:
            await s.worker.stop()
        steps = await _steps(s, "T1")
        assert [kind for kind, _, _ in steps] == ["deferred", "dsn"]
        assert "delay warning (DSN) sent to <alice@example.org>" in steps[1][2]
        assert (await store.queue_get(queue_id)) is not None

    run(scenario())


def test_a_message_queued_without_a_trace_id_gets_one_from_its_queue_id() -> None:
    async def scenario() -> None:
        store = await memory_store()
        s = TracedSetup(store)
        queue_id = await _enqueue(store, "ok@remote.example", trace="")
        await s.worker.start()
        try:
            await until(lambda: gone(store, queue_id))
        finally:
            await s.worker.stop()
        assert [k for k, _, _ in await _steps(s, f"Q{queue_id}")] == ["delivered"]

    run(scenario())
