"""The message trace's steps: the contract over every store (and two instances on one data
directory, as the server and the CLI are)."""

from __future__ import annotations

from typing import Any

import pytest

from mailhouse.store.base import (
    EventCount,
    QueueRequest,
    Store,
    TraceEvent,
    TraceSearch,
)
from mailhouse.store.event_rules import MAX_EVENT_DETAIL, MAX_EVENT_FIELD, MAX_EVENT_PAGE


def _event(n: int, trace: str = "T1", **kw: object) -> TraceEvent:
    fields: dict[str, object] = {
        "at": 100.0 + n, "trace": trace, "kind": "received", "sender": "a@example.org",
        "recipient": "b@example.net", "message_id": "<m1@example.org>",
        "detail": f'{{"n": {n}}}'}
    fields.update(kw)
    return TraceEvent(**fields)  # type: ignore[arg-type]


async def test_steps_are_recorded_and_read_back_in_order(store: Store) -> None:
    assert await store.trace_events("T1", 10) == []
    await store.record_events([_event(0), _event(1, kind="accepted", queue_id=7)])
    await store.record_events([_event(2, kind="delivered")])
    await store.record_events([])  # nothing to write: no error
    steps = await store.trace_events("T1", 10)
    assert [s.kind for s in steps] == ["received", "accepted", "delivered"]
    assert steps[1] == TraceEvent(101.0, "T1", "accepted", "a@example.org", "b@example.net",
                                  "<m1@example.org>", '{"n": 1}', 7, steps[1].id)
    assert steps[0].id < steps[1].id < steps[2].id
    assert [s.kind for s in await store.trace_events("T1", 2)] == ["received", "accepted"]


async def test_search_matches_every_given_field_newest_first(store: Store) -> None:
    await store.record_events([
        _event(0, "T1"),
        _event(1, "T2", sender="c@example.org", recipient="a@example.org"),
        _event(2, "T3", message_id="<other@x>", queue_id=5),
        _event(3, "T3", kind="delivered", queue_id=5),
    ])

    async def traces(search: TraceSearch, limit: int = 10) -> list[str]:
        return [e.trace + e.kind[0] for e in await store.search_events(search, limit)]

    assert await traces(TraceSearch(sender="a@example.org")) == ["T3d", "T3r", "T1r"]
    assert await traces(TraceSearch(recipient="a@example.org")) == ["T2r"]
    assert await traces(TraceSearch(message_id="<other@x>")) == ["T3r"]
    assert await traces(TraceSearch(queue_id=5)) == ["T3d", "T3r"]
    assert await traces(TraceSearch(trace="T2")) == ["T2r"]
    assert await traces(TraceSearch(sender="a@example.org", queue_id=5)) == ["T3d", "T3r"]
    assert await traces(TraceSearch(sender="nobody@example.org")) == []
    assert await traces(TraceSearch(sender="a@example.org"), limit=1) == ["T3d"]
    assert await traces(TraceSearch()) == ["T3d", "T3r", "T2r", "T1r"]
    # A time range: since inclusive, until exclusive.
    assert await traces(TraceSearch(since=101.0, until=103.0)) == ["T3r", "T2r"]


async def test_steps_are_counted_per_kind_and_hour(store: Store) -> None:
    hour = 3600.0
    await store.record_events([
        _event(0, at=10 * hour - 1, kind="delivered"),  # before the window
        _event(1, at=10 * hour, kind="delivered"),
        _event(2, at=10 * hour + 5, kind="delivered"),
        _event(3, at=10 * hour + 7, kind="deferred"),
        _event(4, at=12 * hour + 1, kind="delivered"),
    ])
    assert await store.event_counts(10 * hour, 3600) == [
        EventCount(10 * hour, "deferred", 1), EventCount(10 * hour, "delivered", 2),
        EventCount(12 * hour, "delivered", 1)]
    assert await store.event_counts(13 * hour, 3600) == []
    with pytest.raises(ValueError):
        await store.event_counts(0.0, 0)


async def test_pruning_forgets_older_steps_only(store: Store) -> None:
    await store.record_events([_event(n, f"T{n}") for n in range(5)])
    assert await store.prune_events(102.0) == 2
    assert await store.prune_events(102.0) == 0
    assert [e.trace for e in await store.search_events(TraceSearch(), 10)] == ["T4", "T3", "T2"]
    await store.record_events([_event(9, "T9")])
    assert (await store.search_events(TraceSearch(), 1))[0].trace == "T9"


@pytest.mark.parametrize("limit", [0, -1, MAX_EVENT_PAGE + 1])
async def test_a_page_outside_the_limit_is_refused(store: Store, limit: int) -> None:
    with pytest.raises(ValueError, match="page size"):
        await store.search_events(TraceSearch(), limit)
    with pytest.raises(ValueError, match="page size"):
        await store.trace_events("T1", limit)


async def test_a_full_page_is_allowed(store: Store) -> None:
    await store.record_events([_event(n) for n in range(MAX_EVENT_PAGE + 3)])
    assert len(await store.search_events(TraceSearch(), MAX_EVENT_PAGE)) == MAX_EVENT_PAGE
    assert len(await store.trace_events("T1", MAX_EVENT_PAGE)) == MAX_EVENT_PAGE


@pytest.mark.parametrize("bad", [
    {"trace": ""}, {"kind": ""}, {"sender": "x" * (MAX_EVENT_FIELD + 1)},
    {"message_id": "m" * (MAX_EVENT_FIELD + 1)}, {"detail": "d" * (MAX_EVENT_DETAIL + 1)},
])
async def test_steps_over_the_limits_are_refused_whole(store: Store,
                                                       bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        await store.record_events([_event(0, "OK"), _event(1, **bad)])
    assert await store.search_events(TraceSearch(), 10) == []
    await store.record_events([_event(0, sender="x" * MAX_EVENT_FIELD,
                                      detail="d" * MAX_EVENT_DETAIL)])  # at the limits: kept


async def test_a_queued_message_carries_its_trace_id(store: Store) -> None:
    spool = store.new_spool()
    await spool.write(b"Subject: t\r\n\r\nbody\r\n")
    await store.deliver(spool, [],
                        queue=QueueRequest("a@example.org", ("b@example.net",), trace="T42"))
    [queued] = await store.queue_list()
    assert queued.trace == "T42"
    assert (await store.queue_get(queued.id)).trace == "T42"  # type: ignore[union-attr]
    [claimed] = await store.queue_claim(queued.created + 1, 10, 60.0)
    assert claimed.trace == "T42"
