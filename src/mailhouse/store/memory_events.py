"""The message trace's steps in memory (MemoryStore's mixin; store/base.py, "the message
trace")."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

from mailhouse.store.base import EventCount, TraceEvent, TraceSearch
from mailhouse.store.event_rules import check_events, check_page


def _matches(event: TraceEvent, query: TraceSearch) -> bool:
    for name in ("trace", "sender", "recipient", "message_id", "queue_id"):
        wanted = getattr(query, name)
        if wanted is not None and getattr(event, name) != wanted:
            return False
    if query.since is not None and event.at < query.since:
        return False
    return query.until is None or event.at < query.until


class MemoryEvents:
    """Mixed into MemoryStore, which provides `_check_open`."""

    _events: list[TraceEvent]
    _last_event_id: int

    def _check_open(self) -> None:
        raise NotImplementedError  # MemoryStore's

    def _init_events(self) -> None:
        self._events = []
        self._last_event_id = 0  # never reused, as SQLite's AUTOINCREMENT

    async def record_events(self, events: Sequence[TraceEvent]) -> None:
        self._check_open()
        for event in check_events(events):
            self._last_event_id += 1
            self._events.append(replace(event, id=self._last_event_id))

    async def search_events(self, search: TraceSearch, limit: int) -> list[TraceEvent]:
        self._check_open()
        check_page(limit)
        found = [e for e in reversed(self._events) if _matches(e, search)]
        return found[:limit]

    async def trace_events(self, trace: str, limit: int) -> list[TraceEvent]:
        self._check_open()
        check_page(limit)
        return [e for e in self._events if e.trace == trace][:limit]

    async def prune_events(self, before: float) -> int:
        self._check_open()
        kept = [e for e in self._events if e.at >= before]
        pruned = len(self._events) - len(kept)
        self._events = kept
        return pruned

    async def event_counts(self, since: float, bucket: int) -> list[EventCount]:
        self._check_open()
        if bucket < 1:
            raise ValueError("a bucket is at least one second")
        counted: Counter[tuple[float, str]] = Counter(
            (float(int(e.at / bucket) * bucket), e.kind) for e in self._events if e.at >= since)
        return [EventCount(start, kind, n) for (start, kind), n in sorted(counted.items())]
