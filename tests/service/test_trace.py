"""The message trace's core: the recorder's batching and limits, the service's queries and
descriptions, and the steps the MX and submission sessions record (memory store)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailhouse.errors import Reply
from mailhouse.model import Address
from mailhouse.proto.smtp import events as ev
from mailhouse.service.accounts import Accounts, Passwords
from mailhouse.service.directory import DirectoryCache
from mailhouse.service.inbound import InboundPolicy, InboundService
from mailhouse.service.submission import SubmissionService
from mailhouse.service.trace import (
    MAX_TRACES,
    TraceQueryError,
    TraceService,
    classify,
    describe,
    record_queue_action,
)
from mailhouse.service.trace_recorder import (
    DAY,
    MAX_HEAD_SCAN,
    TracePruner,
    TraceRecorder,
    clip,
    detail_json,
    message_id_of,
)
from mailhouse.store.base import QueueRequest, TraceEvent, TraceSearch
from mailhouse.store.event_rules import MAX_EVENT_DETAIL, MAX_EVENT_FIELD
from mailhouse.store.memory import MemoryStore
from tests.service.test_submission import CHEAP, login, run, send


class CountingStore(MemoryStore):
    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.batches: list[int] = []
        self.fail = fail

    async def record_events(self, events: Sequence[TraceEvent]) -> None:
        self.batches.append(len(events))
        if self.fail:
            raise OSError("disk gone")
        await super().record_events(events)


async def _opened(store: MemoryStore | None = None) -> MemoryStore:
    store = store or MemoryStore()
    await store.open()
    return store


# --- the recorder ---------------------------------------------------------------------------------
def test_many_steps_in_one_interval_cost_one_write() -> None:
    async def main() -> None:
        store = await _opened(CountingStore())
        assert isinstance(store, CountingStore)
        recorder = TraceRecorder(store, flush_interval=0.05)
        for n in range(100):
            recorder.record("received", f"T{n}", {"size": n}, sender="A@Example.org")
        assert store.batches == [] and recorder.pending == 100  # nothing written yet
        await asyncio.sleep(0.2)
        assert store.batches == [100] and recorder.writes == 1
        [first] = await store.trace_events("T0", 10)
        assert first.sender == "a@example.org"  # addresses are kept lower-cased
        assert json.loads(first.detail) == {"size": 0}
        recorder.record("delivered", "T0")
        await recorder.close()  # a clean stop writes what waits
        assert store.batches == [100, 1]

    asyncio.run(main())


def test_a_full_batch_is_written_without_waiting() -> None:
    async def main() -> None:
        store = await _opened(CountingStore())
        assert isinstance(store, CountingStore)
        recorder = TraceRecorder(store, flush_interval=3600.0, flush_at=10)
        for n in range(25):  # one write starts at the 10th; it takes all that came meanwhile
            recorder.record("received", f"T{n}")
        await asyncio.sleep(0.01)
        assert store.batches == [25]
        for n in range(12):
            recorder.record("received", f"U{n}")
        await asyncio.sleep(0.01)
        assert store.batches == [25, 12] and recorder.pending == 0
        await recorder.close()
        assert store.batches == [25, 12]

    asyncio.run(main())


def test_the_buffer_is_bounded_and_failures_drop_steps_not_mail() -> None:
    async def main() -> None:
        store = await _opened(CountingStore(fail=True))
        recorder = TraceRecorder(store, flush_interval=3600.0, max_buffered=3)
        for n in range(5):
            recorder.record("received", f"T{n}")
        recorder.record("received", "")  # no trace id: nothing to file it under
        assert recorder.pending == 3 and recorder.dropped == 2
        await recorder.flush()  # the store fails: logged, counted, never raised
        assert recorder.dropped == 5 and recorder.pending == 0

    asyncio.run(main())


def test_fields_and_details_are_clipped_to_the_store_limits() -> None:
    assert clip("x" * MAX_EVENT_FIELD) == "x" * MAX_EVENT_FIELD
    assert len(clip("x" * (MAX_EVENT_FIELD + 1))) == MAX_EVENT_FIELD
    big = detail_json({"reply": "r" * (2 * MAX_EVENT_DETAIL), "size": 5})
    assert len(big) <= MAX_EVENT_DETAIL and json.loads(big)["size"] == 5

    async def main() -> None:
        store = await _opened()
        recorder = TraceRecorder(store)
        recorder.record("x" * 2000, "T" * 2000, {"r": "y" * 10_000}, sender="s" * 2000)
        await recorder.close()
        [step] = await store.search_events(TraceSearch(), 1)
        assert len(step.trace) == len(step.kind) == len(step.sender) == MAX_EVENT_FIELD

    asyncio.run(main())


@given(st.dictionaries(st.text(max_size=20), st.one_of(st.text(max_size=3000), st.integers()),
                       max_size=8))
def test_any_detail_fits(detail: dict[str, object]) -> None:
    text = detail_json(detail)
    assert len(text) <= MAX_EVENT_DETAIL
    assert isinstance(json.loads(text), dict)


@pytest.mark.parametrize(("head", "expected"), [
    (b"Subject: x\r\nMessage-ID: <a@b>\r\n\r\nbody", "<a@b>"),
    (b"message-id:\r\n <folded@b>\r\nSubject: x\r\n\r\n", "<folded@b>"),  # RFC 5322 §2.2.3
    (b"Subject: x\r\n\r\nMessage-ID: <in-the-body@b>\r\n", ""),
    (b"Subject: x\r\n\r\n", ""),
    (b"\xff\xfe: garbage\r\n\r\n", ""),
    (b"Subject: " + b"x" * MAX_HEAD_SCAN, ""),  # cut off: parsed as far as it goes
])
def test_message_id_of(head: bytes, expected: str) -> None:
    assert message_id_of(head) == expected


@given(st.binary(max_size=300))
def test_message_id_of_never_raises(head: bytes) -> None:
    assert isinstance(message_id_of(head), str)


def test_old_steps_are_pruned_by_age() -> None:
    async def main() -> None:
        store = await _opened()
        now = 100 * DAY
        await store.record_events([
            TraceEvent(now - 31 * DAY, "OLD", "received"),
            TraceEvent(now - 29 * DAY, "NEW", "received")])
        pruner = TracePruner(store, 30, clock=lambda: now, interval=3600.0)
        pruner.start()  # prunes at once, then every interval
        await asyncio.sleep(0.01)
        await pruner.stop()
        assert [e.trace for e in await store.search_events(TraceSearch(), 10)] == ["NEW"]
        assert await pruner.prune() == 0

    asyncio.run(main())


# --- queries and descriptions ---------------------------------------------------------------------
@pytest.mark.parametrize(("query", "expected"), [
    ("<m@x>", TraceSearch(message_id="<m@x>")),
    (" Bob@Example.org ", TraceSearch(sender="bob@example.org")),
    ("<bob@example.org", TraceSearch(sender="bob@example.org")),
    ("42", TraceSearch(queue_id=42)),
    ("2C7HQ", TraceSearch(trace="2C7HQ")),
    ("\u00b2", TraceSearch(trace="\u00b2")),  # a digit to isdigit(), not to int()
])
def test_a_query_is_read_by_its_shape(query: str, expected: TraceSearch) -> None:
    assert classify(query) == expected


@pytest.mark.parametrize("query", ["", "   ", "x" * (MAX_EVENT_FIELD + 1)])
def test_an_empty_or_oversized_query_is_refused(query: str) -> None:
    with pytest.raises(TraceQueryError):
        classify(query)


def test_the_number_of_traces_is_bounded() -> None:
    TraceService.check("x", MAX_TRACES)
    for bad in (0, MAX_TRACES + 1):
        with pytest.raises(TraceQueryError):
            TraceService.check("x", bad)


def _steps() -> list[TraceEvent]:
    return [
        TraceEvent(10.0, "AAA", "received", "s@x.org", "r@y.org", "<m1@x>",
                   '{"client":"192.0.2.1:5","helo":"h","tls":"","size":9,"via":"smtp"}'),
        TraceEvent(11.0, "AAA", "queued", "s@x.org", "r@y.org", "<m1@x>"),
        TraceEvent(12.0, "AAA", "deferred", "s@x.org", "r@y.org", "",
                   '{"reply":"451 4.7.1 later","host":"mx.y.org [192.0.2.9]",'
                   '"next_attempt":1000.0}', queue_id=7),
        TraceEvent(20.0, "BBB", "received", "r@y.org", "s@x.org", "<m2@y>", "{}"),
    ]


def test_find_by_address_covers_sender_and_recipient_newest_first() -> None:
    async def main() -> None:
        store = await _opened()
        await store.record_events(_steps())
        service = TraceService(store)
        assert [t.trace for t in await service.find("s@x.org")] == ["BBB", "AAA"]
        assert [t.trace for t in await service.find("s@x.org", limit=1)] == ["BBB"]
        assert [t.trace for t in await service.find("s@x.org", since=15.0)] == ["BBB"]
        assert [t.trace for t in await service.find("s@x.org", until=15.0)] == ["AAA"]
        assert [t.trace for t in await service.find("<m1@x>")] == ["AAA"]
        assert [t.trace for t in await service.find("7")] == ["AAA"]
        assert [t.trace for t in await service.find("aaa")] == ["AAA"]  # ids are upper-case
        assert await service.find("nobody@x.org") == []
        trace = await service.show("AAA")
        assert trace is not None
        assert (trace.sender, trace.recipients, trace.message_id) == (
            "s@x.org", ("r@y.org",), "<m1@x>")
        assert [s.kind for s in trace.steps] == ["received", "queued", "deferred"]
        assert trace.outcome == "deferred" and (trace.first, trace.last) == (10.0, 12.0)
        assert "next attempt 1970-01-01 00:16:40 UTC" in trace.steps[2].description
        assert trace.as_json()["steps"][2]["queue_id"] == 7  # type: ignore[index]
        assert await service.show("ZZZ") is None

    asyncio.run(main())


def test_a_queued_message_not_tried_yet_is_found_by_its_queue_id() -> None:
    async def main() -> None:
        store = await _opened()
        spool = store.new_spool()
        await spool.write(b"Subject: x\r\n\r\n")
        await store.deliver(spool, [], queue=QueueRequest("s@x.org", ("r@y.org",), trace="AAA"))
        await store.record_events(_steps()[:2])
        [queued] = await store.queue_list()
        assert [t.trace for t in await TraceService(store).find(str(queued.id))] == ["AAA"]

    asyncio.run(main())


@pytest.mark.parametrize(("kind", "detail", "words"), [
    ("received", {"client": "192.0.2.1:5", "helo": "h.test", "tls": "TLSv1.3", "size": 9,
                  "via": "submission", "user": "s@x.org", "dkim": "signed"},
     ["SUBMISSION", "192.0.2.1:5", "HELO h.test", "over TLS (TLSv1.3)", "authenticated as",
      "9 octets", "DKIM signed"]),
    ("refused", {"reply": "550 5.1.1 unknown", "reason": "unknown user"},
     ["<r@y.org> refused", "unknown user", "550 5.1.1"]),
    ("rejected", {"reply": "452 4.2.2 full", "reason": "mailbox full"}, ["refused", "452"]),
    ("stored", {"mailbox": "INBOX", "account": 3}, ["INBOX", "#3"]),
    ("not_stored", {"outcome": "temporary", "account": 3}, ["over quota"]),
    ("not_stored", {"outcome": "permanent", "account": 3}, ["no such mailbox"]),
    ("queued", {}, ["queued", "<r@y.org>"]),
    ("delivered", {"reply": "250 ok", "host": "mx [192.0.2.9]"}, ["mx [192.0.2.9]", "250 ok"]),
    ("deferred", {"reply": "451 x", "reason": "the bounce could not be sent"},
     ["451 x", "bounce could not"]),
    ("bounced", {"reply": "550 5.1.1 gone", "host": "mx"}, ["bounced", "by mx", "550"]),
    ("dsn", {"report": "failed", "recipients": 2}, ["bounce (DSN)", "2 recipient"]),
    ("dsn", {"report": "delayed", "recipients": 1}, ["delay warning"]),
    ("retry", {"actor": "cli:root"}, ["retried", "cli:root"]),
    ("delete", {}, ["deleted", "an operator"]),
    ("bounce", {"actor": "operator:ann"}, ["bounce requested by operator:ann"]),
    ("something", {"a": 1}, ["something", "a=1"]),
])
def test_every_step_has_a_line(kind: str, detail: dict[str, object], words: list[str]) -> None:
    line = describe(kind, "s@x.org", "r@y.org", detail)
    assert "\n" not in line
    for word in words:
        assert word in line, (word, line)


# --- the MX session's steps -----------------------------------------------------------------------
def test_the_mx_session_records_reception_refusals_and_storage() -> None:
    async def main() -> None:
        store = await _opened()
        accounts = Accounts(store, Passwords(CHEAP))
        await accounts.add_domain("example.test")
        alice = await accounts.add_user("alice@example.test", "pw")
        directory = DirectoryCache(store)
        await directory.refresh()
        recorder = TraceRecorder(store)
        service = InboundService(store, directory, InboundPolicy("mx.example.test"), recorder)
        session = service.session("192.0.2.1:4000")
        session.on_helo(ev.Helo("client.test", True))
        assert session.mail_from(ev.MailFrom(Address.parse("s@remote.test"), None, False,
                                             False)).code == 250
        for rcpt in ("nobody@example.test", "x@elsewhere.test"):
            event = ev.RcptTo(Address.parse(rcpt))
            assert session.rcpt_to(event) is None
            assert (await session.rcpt_recheck(event)).code in (550, 554)
        assert session.rcpt_to(ev.RcptTo(Address.parse("alice@example.test"))) is not None
        session.data_start()
        message = b"Message-ID:\r\n <m1@remote.test>\r\nSubject: s\r\n\r\nbody\r\n"
        for i in range(0, len(message), 5):
            session.data_chunk(message[i : i + 5])
        reply = await session.data_complete(ev.DataComplete(len(message), 0))
        assert reply.code == 250
        await recorder.close()
        trace_id = reply.text.rsplit(" ", 1)[1]
        trace = await TraceService(store).show(trace_id)
        assert trace is not None and trace.message_id == "<m1@remote.test>"
        assert [(s.kind, s.recipient) for s in trace.steps] == [
            ("refused", "nobody@example.test"), ("refused", "x@elsewhere.test"),
            ("received", "alice@example.test"), ("stored", "alice@example.test")]
        assert all(s.sender == "s@remote.test" for s in trace.steps)
        assert trace.steps[3].detail == {"account": alice.id, "mailbox": "INBOX",
                                         "outcome": "delivered"}
        assert "relay" in trace.steps[1].description
        # A full mailbox refuses the message at its end: one "rejected" step.
        used = await store.get_quota(alice.id)
        assert used is not None
        await store.set_quota("alice@example.test", used.used + 50)
        await directory.refresh()
        assert session.mail_from(ev.MailFrom(Address.parse("s@remote.test"), None, False,
                                             False)).code == 250
        again = ev.RcptTo(Address.parse("alice@example.test"))
        if session.rcpt_to(again) is None:
            assert (await session.rcpt_recheck(again)).code == 250
        session.data_start()
        session.data_chunk(b"Subject: big\r\n\r\n" + b"x" * 100 + b"\r\n")
        full = await session.data_complete(ev.DataComplete(120, 0))
        assert full.code == 452
        await recorder.close()
        [rejected] = await store.search_events(TraceSearch(sender="s@remote.test"), 1)
        assert rejected.kind == "rejected" and "452" in json.loads(rejected.detail)["reply"]

    asyncio.run(main())


def test_no_recorder_no_steps() -> None:
    async def main() -> None:
        store = await _opened()
        service = InboundService(store, DirectoryCache(store), InboundPolicy("mx.test"))
        session = service.session("192.0.2.1:4000")
        session.mail_from(ev.MailFrom(Address.parse("s@remote.test"), None, False, False))
        assert isinstance(session.rcpt_to(ev.RcptTo(Address.parse("a@b.test"))), Reply | None)
        assert await store.search_events(TraceSearch(), 10) == []

    asyncio.run(main())


# --- the submission session's steps ---------------------------------------------------------------
def test_the_submission_session_records_the_user_the_queue_and_refusals() -> None:
    async def scenario(store: MemoryStore, service: SubmissionService, woken: list[int]) -> None:
        recorder = TraceRecorder(store)
        service.trace = recorder
        session = await login(service)
        reply = await send(session, ["carol@remote.test", "bob@example.test"])
        assert reply.code == 250
        trace_id = reply.text.rsplit(" ", 1)[1]
        # Two From fields: the message is refused at its end.
        two = b"From: a@example.test\r\nFrom: b@example.test\r\n\r\nx\r\n"
        assert (await send(session, ["carol@remote.test"], two)).code >= 500
        await recorder.close()
        trace = await TraceService(store).show(trace_id)
        assert trace is not None
        assert [(s.kind, s.recipient) for s in trace.steps] == [
            ("received", "carol@remote.test"), ("received", "bob@example.test"),
            ("stored", "bob@example.test"), ("queued", "carol@remote.test")]
        assert trace.steps[0].detail["user"] == "alice@example.test"
        assert trace.steps[0].detail["via"] == "submission"
        assert trace.message_id.startswith(f"<{trace_id}.")  # the one submission added
        [queued] = await store.queue_list()
        assert queued.trace == trace_id  # the queue's attempts will join this trace
        [rejected] = await store.search_events(TraceSearch(sender="alice@example.test"), 1)
        assert rejected.kind == "rejected" and rejected.trace != trace_id

    run(scenario)


def test_an_operators_queue_action_is_a_step_of_the_trace() -> None:
    async def main() -> None:
        store = await _opened()
        spool = store.new_spool()
        await spool.write(b"Subject: x\r\n\r\n")
        await store.deliver(spool, [], queue=QueueRequest("s@x.org", ("r@y.org",), trace="AAA"))
        [queued] = await store.queue_list()
        await record_queue_action(store, queued, "retry", "cli:root", 50.0)
        with pytest.raises(ValueError):
            await record_queue_action(store, queued, "requeue", "cli:root", 51.0)
        [trace] = await TraceService(store).find(str(queued.id))
        [retry] = trace.steps
        assert (trace.trace, retry.kind, retry.queue_id) == ("AAA", "retry", queued.id)
        assert retry.description == "retried now by cli:root"

    asyncio.run(main())
