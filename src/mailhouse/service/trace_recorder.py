"""Recording the message trace's steps (issue 9 §2) without costing the mail its speed.

Why a buffer and not a write per step: a delivery is durable when its group-commit batch's one
fsync returns (store/sqlite_writer.py). A separate awaited write for its trace steps would add a
second commit to every message's reply latency, and a second fsync whenever the server is not
busy enough to share it. So sessions and the queue only append steps here (no I/O, no await),
and one task writes everything buffered as ONE store job at most every `FLUSH_INTERVAL` seconds
(or at once when `FLUSH_AT` steps wait). That job joins whatever group-commit batch is next, so
under load it rides along with the deliveries' own commit, and at rest it costs one commit per
interval however many messages came in it.

The price: steps buffered when the process dies (at most one interval's worth) are lost. The
trace is a diagnostic, never the mail itself (the Received headers, the queue rows and the logs
stay the record of truth), so that loss is accepted; a clean stop writes what is buffered.
A failed write is logged and its steps dropped: tracing never fails or delays a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from email.parser import BytesHeaderParser
from email.policy import compat32

from mailhouse.errors import Reply
from mailhouse.store.base import Store, TraceEvent
from mailhouse.store.event_rules import MAX_EVENT_DETAIL, MAX_EVENT_FIELD

log = logging.getLogger("mailhouse.trace")

FLUSH_INTERVAL = 0.5  # seconds a step may wait in memory before it is written
FLUSH_AT = 256  # steps that are written at once, without waiting for the interval
# Steps held while writes fail or lag; beyond, new steps are dropped (and counted): a store
# that cannot keep up must not make the trace eat the process's memory.
MAX_BUFFERED = 20_000
# Octets of a message's start scanned for its Message-ID (header fields come first).
MAX_HEAD_SCAN = 16 * 1024


def clip(text: str, limit: int = MAX_EVENT_FIELD) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def detail_json(detail: Mapping[str, object]) -> str:
    """The step's detail as compact JSON; a value too long is cut so the whole fits."""
    text = json.dumps(detail, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    if len(text) <= MAX_EVENT_DETAIL:
        return text
    room = MAX_EVENT_DETAIL // max(1, len(detail)) - 40
    short = {k: clip(v, room) if isinstance(v, str) else v for k, v in detail.items()}
    text = json.dumps(short, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return text if len(text) <= MAX_EVENT_DETAIL else "{}"


def reply_text(reply: Reply) -> str:
    """A reply as one line: "550 5.1.1 text"."""
    text = " ".join(reply.text.split())
    return " ".join(str(part) for part in (reply.code, reply.enhanced, text) if part)


def message_id_of(head: bytes) -> str:
    """The Message-ID field of a message's start (RFC 5322 §3.6.4), '' if none; read with the
    stdlib parser, which unfolds it (a header cut off by MAX_HEAD_SCAN parses as far as it
    goes)."""
    end = head.find(b"\r\n\r\n")
    if end >= 0:
        head = head[: end + 4]
    try:
        value = BytesHeaderParser(policy=compat32).parsebytes(head).get("message-id")
    except Exception:  # a malformed header is the sender's problem, not the trace's
        return ""
    return clip(" ".join(str(value).split())) if value else ""


class TraceRecorder:
    """One per process, shared by its sessions and its queue worker."""

    def __init__(self, store: Store, *, flush_interval: float = FLUSH_INTERVAL,
                 flush_at: int = FLUSH_AT, max_buffered: int = MAX_BUFFERED,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._interval = flush_interval
        self._flush_at = flush_at
        self._max = max_buffered
        self._clock = clock
        self._buffer: list[TraceEvent] = []
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._soon = False  # a flush task is started and has not taken the buffer yet
        self.dropped = 0  # steps lost to a full buffer or a failed write
        self.writes = 0  # store jobs made (the cost the buffer bounds)

    def record(self, kind: str, trace: str, detail: Mapping[str, object] | None = None, *,
               sender: str = "", recipient: str = "", message_id: str = "",
               queue_id: int = 0) -> None:
        """Append one step; never blocks, never raises for a full buffer."""
        if not trace:
            return
        if len(self._buffer) >= self._max:
            self.dropped += 1
            return
        self._buffer.append(TraceEvent(
            at=self._clock(), trace=clip(trace), kind=clip(kind),
            sender=clip(sender.lower()), recipient=clip(recipient.lower()),
            message_id=clip(message_id), detail=detail_json(detail or {}), queue_id=queue_id))
        if self._soon:
            return
        if len(self._buffer) >= self._flush_at:
            self._spawn()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a synchronous caller): the next flush() takes it
                return
            self._timer = loop.call_later(self._interval, self._spawn)

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def _spawn(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._soon = True
        task = asyncio.get_running_loop().create_task(self.flush())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def flush(self) -> None:
        """Write what is buffered, as one store job."""
        batch, self._buffer = self._buffer, []
        self._soon = False
        if not batch:
            return
        self.writes += 1
        try:
            await self._store.record_events(batch)
        except Exception:
            self.dropped += len(batch)
            log.warning("event=trace.write_failed steps=%d", len(batch), exc_info=True)

    async def close(self) -> None:
        """Write what is buffered and wait for writes in flight (before the store closes)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.flush()


PRUNE_INTERVAL = 3600.0  # seconds between two prunings of old steps
DAY = 86_400.0


class TracePruner:
    """Forgets steps older than `keep_days` ([trace] keep_days): once at start, then every
    PRUNE_INTERVAL. Run by the main process only (one pruner per data directory is enough;
    a DELETE by age is idempotent, so a second one would only repeat it)."""

    def __init__(self, store: Store, keep_days: int, *, interval: float = PRUNE_INTERVAL,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._keep = keep_days * DAY
        self._interval = interval
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    async def prune(self) -> int:
        pruned = await self._store.prune_events(self._clock() - self._keep)
        if pruned:
            log.info("event=trace.pruned steps=%d", pruned)
        return pruned

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="trace-prune")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            try:
                await self.prune()
            except Exception:  # the store is unavailable: try again next time
                log.warning("event=trace.prune_failed", exc_info=True)
            await asyncio.sleep(self._interval)
