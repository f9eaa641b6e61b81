"""Limits on the message trace's steps (store/base.py, "the message trace"), the same for every
store kind so that one never accepts what another refuses."""

from __future__ import annotations

from collections.abc import Sequence

from mailhouse.store.base import TraceEvent

# A page of search results: what one screen or one `mailhouse trace` shows. A query is a single
# indexed lookup bounded by this, so a busy sender's millions of steps cost one page.
MAX_EVENT_PAGE = 500
# Characters of one field (trace id, kind, an address, a Message-ID). RFC 5321 §4.5.3.1 caps a
# path at 256 octets; a Message-ID line at 998 (RFC 5322 §2.1.1).
MAX_EVENT_FIELD = 1000
# Characters of one step's detail (a small JSON object: a remote reply, a client's name ...).
MAX_EVENT_DETAIL = 4000


def check_page(limit: int) -> int:
    if not 1 <= limit <= MAX_EVENT_PAGE:
        raise ValueError(f"page size {limit} is outside 1..{MAX_EVENT_PAGE}")
    return limit


def check_events(events: Sequence[TraceEvent]) -> Sequence[TraceEvent]:
    """ValueError for a step the store would not keep whole (the recorder clips before)."""
    for event in events:
        if not event.trace or not event.kind:
            raise ValueError("a trace step needs a trace id and a kind")
        fields = (event.trace, event.kind, event.sender, event.recipient, event.message_id)
        if any(len(field) > MAX_EVENT_FIELD for field in fields):
            raise ValueError(f"a trace step's field is over {MAX_EVENT_FIELD} characters")
        if len(event.detail) > MAX_EVENT_DETAIL:
            raise ValueError(f"a trace step's detail is over {MAX_EVENT_DETAIL} characters")
    return events
