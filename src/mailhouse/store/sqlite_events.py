"""The message trace's steps in SQLite (store/base.py, "the message trace"; schema.py v12)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, TypeVar

from mailhouse.store.base import EventCount, TraceEvent, TraceSearch
from mailhouse.store.event_rules import check_events, check_page

T = TypeVar("T")

_COLUMNS = "at, trace, kind, sender, recipient, message_id, detail, queue_id, id"


def record(conn: sqlite3.Connection, events: Sequence[TraceEvent]) -> None:
    conn.executemany(
        "INSERT INTO message_events"
        " (at, trace, kind, sender, recipient, message_id, detail, queue_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [(e.at, e.trace, e.kind, e.sender, e.recipient, e.message_id, e.detail, e.queue_id)
         for e in events])


def _search(conn: sqlite3.Connection, query: TraceSearch, limit: int) -> list[TraceEvent]:
    """Each equality has its own index (schema.py v12): SQLite picks one and filters the rest."""
    where: list[str] = []
    args: list[object] = []
    for column in ("trace", "sender", "recipient", "message_id", "queue_id"):
        value = getattr(query, column)
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if query.since is not None:
        where.append("at >= ?")
        args.append(query.since)
    if query.until is not None:
        where.append("at < ?")
        args.append(query.until)
    sql = f"SELECT {_COLUMNS} FROM message_events"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id DESC LIMIT ?"
    return [TraceEvent(*row) for row in conn.execute(sql, (*args, limit))]


def of_trace(conn: sqlite3.Connection, trace: str, limit: int) -> list[TraceEvent]:
    return [TraceEvent(*row) for row in conn.execute(
        f"SELECT {_COLUMNS} FROM message_events WHERE trace = ? ORDER BY id LIMIT ?",
        (trace, limit))]


def prune(conn: sqlite3.Connection, before: float) -> int:
    return conn.execute("DELETE FROM message_events WHERE at < ?", (before,)).rowcount


def counts(conn: sqlite3.Connection, since: float, bucket: int) -> list[EventCount]:
    return [EventCount(float(start), kind, n) for start, kind, n in conn.execute(
        "SELECT CAST(at / ?1 AS INTEGER) * ?1 AS start, kind, COUNT(*) FROM message_events"
        " WHERE at >= ?2 GROUP BY start, kind ORDER BY start, kind", (bucket, since))]


class SqliteEvents:
    """SqliteStore's methods for the trace (mixed in; it provides `_write` and `_read`)."""

    async def _write(self, apply: Callable[[sqlite3.Connection], T], **kw: Any) -> T:
        raise NotImplementedError  # SqliteStore's

    async def _read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        raise NotImplementedError  # SqliteStore's

    async def record_events(self, events: Sequence[TraceEvent]) -> None:
        """One writer job for the batch: it commits in whatever group-commit batch is next,
        with the deliveries and queue updates waiting then (sqlite_writer.py)."""
        if events:
            await self._write(partial(record, events=tuple(check_events(events))))

    async def search_events(self, search: TraceSearch, limit: int) -> list[TraceEvent]:
        return await self._read(partial(_search, query=search, limit=check_page(limit)))

    async def trace_events(self, trace: str, limit: int) -> list[TraceEvent]:
        return await self._read(partial(of_trace, trace=trace, limit=check_page(limit)))

    async def prune_events(self, before: float) -> int:
        return await self._write(partial(prune, before=before))

    async def event_counts(self, since: float, bucket: int) -> list[EventCount]:
        if bucket < 1:
            raise ValueError("a bucket is at least one second")
        return await self._read(partial(counts, since=since, bucket=bucket))
