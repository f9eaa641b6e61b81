"""The message trace (issue 9 §2): find a message by what an operator knows of it, and tell its
way through the server step by step, one human line each. The CLI (`mailhouse trace`) and the
web admin both answer from here; the steps come from service/trace_recorder.py.

A query is read by its shape: `<...>` is a Message-ID, anything with an `@` an address (as
sender or recipient), digits the outbound queue's id (`mailhouse queue list`), anything else a
trace id (the reception's id, as in "250 2.0.0 Ok: queued as 2C7H..." and the Received header).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from mailhouse.service.trace_recorder import clip
from mailhouse.store.base import QueuedMessage, Store, TraceEvent, TraceSearch
from mailhouse.store.event_rules import MAX_EVENT_FIELD, MAX_EVENT_PAGE

DEFAULT_TRACES = 20  # traces one `find` returns
MAX_TRACES = 100  # ... at most (each is one more read of its steps)


class TraceQueryError(ValueError):
    """A query that names nothing (empty, or longer than any stored field)."""


@dataclass(frozen=True, slots=True)
class Step:
    at: float
    kind: str
    sender: str
    recipient: str
    queue_id: int
    description: str  # one line for a person
    detail: dict[str, object] = field(default_factory=dict)

    def as_json(self) -> dict[str, object]:
        return {"at": self.at, "time": iso_time(self.at), "kind": self.kind,
                "sender": self.sender, "recipient": self.recipient, "queue_id": self.queue_id,
                "description": self.description, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class Trace:
    """One message's steps, in order, and a summary for a list of results."""

    trace: str
    message_id: str
    sender: str
    recipients: tuple[str, ...]
    first: float
    last: float
    outcome: str  # the last step's kind: "delivered", "deferred", "bounced" ...
    steps: tuple[Step, ...]

    def as_json(self) -> dict[str, object]:
        return {"trace": self.trace, "message_id": self.message_id, "sender": self.sender,
                "recipients": list(self.recipients), "first": iso_time(self.first),
                "last": iso_time(self.last), "outcome": self.outcome,
                "steps": [s.as_json() for s in self.steps]}


def iso_time(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def classify(query: str) -> TraceSearch:
    """What a query string searches for (the module doc); TraceQueryError if it names nothing."""
    text = query.strip()
    if not text or len(text) > MAX_EVENT_FIELD:
        raise TraceQueryError("give an address, a <Message-ID>, a queue id or a trace id")
    if text.startswith("<") and text.endswith(">"):
        return TraceSearch(message_id=text)
    if "@" in text:
        return TraceSearch(sender=text.strip("<>").lower())  # and as recipient: see find()
    if text.isascii() and text.isdigit():
        return TraceSearch(queue_id=int(text))
    return TraceSearch(trace=text)


class TraceService:
    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    @staticmethod
    def check(query: str, limit: int) -> TraceSearch:
        """TraceQueryError for a query or a limit `find` would refuse, before any I/O."""
        if not 1 <= limit <= MAX_TRACES:
            raise TraceQueryError(f"--limit must be 1 to {MAX_TRACES}")
        return classify(query)

    async def find(self, query: str, *, limit: int = DEFAULT_TRACES,
                   since: float | None = None, until: float | None = None) -> list[Trace]:
        """The traces the query matches, the most recently active first, each whole."""
        search = self.check(query, limit)
        searches = [search]
        if search.sender is not None:
            searches.append(TraceSearch(recipient=search.sender))
        traces: dict[str, float] = {}
        for one in searches:
            ranged = replace(one, since=since, until=until)
            for event in await self._store.search_events(ranged, MAX_EVENT_PAGE):
                traces[event.trace] = max(traces.get(event.trace, 0.0), event.at)
        if search.trace is not None and not traces and search.trace.upper() != search.trace:
            return await self.find(query.strip().upper(), limit=limit, since=since, until=until)
        if search.queue_id is not None and not traces:
            queued = await self._store.queue_get(search.queue_id)  # queued, not yet tried
            if queued is not None and queued.trace:
                traces[queued.trace] = queued.created
        newest = sorted(traces, key=lambda t: traces[t], reverse=True)[:limit]
        found = [await self.show(trace) for trace in newest]
        return [t for t in found if t is not None]

    async def show(self, trace: str) -> Trace | None:
        """One trace's steps in order (the first MAX_EVENT_PAGE), None if it has none."""
        events = await self._store.trace_events(trace, MAX_EVENT_PAGE)
        if not events:
            return None
        steps = tuple(step(e) for e in events)
        recipients: list[str] = []
        for e in events:
            if e.recipient and e.kind in ("received", "queued") and e.recipient not in recipients:
                recipients.append(e.recipient)
        first = events[0]
        sender = next((e.sender for e in events if e.kind == "received"), first.sender)
        message_id = next((e.message_id for e in events if e.message_id), "")
        return Trace(trace, message_id, sender, tuple(recipients), first.at, events[-1].at,
                     events[-1].kind, steps)


QUEUE_ACTIONS = frozenset({"retry", "delete", "bounce"})


async def record_queue_action(store: Store, message: QueuedMessage, action: str, actor: str,
                              now: float) -> None:
    """An operator's `retry`, `delete` or `bounce` of one queued message, as a step of its
    trace, for the queue's service to call (cli:root, admin:ann). Written at once: operator
    actions are rare, and the step must be there when the operator looks next."""
    if action not in QUEUE_ACTIONS:
        raise ValueError(f"not a queue action: {action!r}")
    await store.record_events([TraceEvent(
        now, message.trace or f"Q{message.id}", action, sender=message.sender,
        detail=json.dumps({"actor": clip(actor)}), queue_id=message.id)])


_QUEUE_ACTION_WORDS = {
    "retry": "retried now",
    "delete": "deleted from the queue",
    "bounce": "bounce requested",  # the worker's "bounced" and "dsn" steps follow
}


def step(event: TraceEvent) -> Step:
    try:
        loaded = json.loads(event.detail)
    except ValueError:
        loaded = {}
    detail: dict[str, object] = loaded if isinstance(loaded, dict) else {}
    return Step(event.at, event.kind, event.sender, event.recipient, event.queue_id,
                describe(event.kind, event.sender, event.recipient, detail), detail)


def _text(detail: dict[str, object], key: str) -> str:
    value = detail.get(key)
    return "" if value is None else str(value)


def describe(kind: str, sender: str, recipient: str, detail: dict[str, object]) -> str:
    """One line for a person: what happened, where, and why."""
    rcpt = f"<{recipient}>"
    reply = _text(detail, "reply")
    host = _text(detail, "host")
    if kind == "received":
        via = _text(detail, "via") or "smtp"
        line = f"received by {via.upper()} from {_text(detail, 'client')}"
        if helo := _text(detail, "helo"):
            line += f" (HELO {helo})"
        line += f" over TLS ({_text(detail, 'tls')})" if detail.get("tls") else " without TLS"
        if user := _text(detail, "user"):
            line += f", authenticated as {user}"
        line += f", from <{sender}> for {rcpt}, {_text(detail, 'size')} octets"
        if dkim := _text(detail, "dkim"):
            line += f", DKIM {dkim}"
        return line
    if kind == "refused":
        return f"recipient {rcpt} refused ({_text(detail, 'reason')}): {reply}"
    if kind == "rejected":
        reason = _text(detail, "reason")
        return f"message refused{f' ({reason})' if reason else ''}: {reply}"
    if kind == "stored":
        return (f"stored for {rcpt} in mailbox {_text(detail, 'mailbox')} of account "
                f"#{_text(detail, 'account')}")
    if kind == "not_stored":
        why = "over quota" if detail.get("outcome") == "temporary" else "no such mailbox"
        return f"not stored for {rcpt}: {why} (account #{_text(detail, 'account')})"
    if kind == "queued":
        return f"queued for delivery to {rcpt}"
    if kind == "delivered":
        return f"delivered to {rcpt} at {host or 'the remote server'}: {reply}"
    if kind == "deferred":
        line = f"deferred for {rcpt}{f' at {host}' if host else ''}: {reply}"
        if reason := _text(detail, "reason"):
            line += f" ({reason})"
        next_at = detail.get("next_attempt")
        if isinstance(next_at, int | float) and next_at > 0:
            line += f"; next attempt {iso_time(float(next_at))}"
        return line
    if kind == "bounced":
        return f"bounced for {rcpt}{f' by {host}' if host else ''}: {reply}"
    if kind == "dsn":
        count = _text(detail, "recipients")
        report = "delay warning" if detail.get("report") == "delayed" else "bounce"
        return f"{report} (DSN) sent to {rcpt} for {count} recipient(s)"
    if kind in QUEUE_ACTIONS:
        who = _text(detail, "actor") or "an operator"
        return f"{_QUEUE_ACTION_WORDS[kind]} by {who}"
    extra = ", ".join(f"{k}={v}" for k, v in sorted(detail.items()))
    return f"{kind} {rcpt if recipient else ''} {extra}".strip()
