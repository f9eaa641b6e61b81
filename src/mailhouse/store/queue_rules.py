"""Rules of the outbound queue that every store implementation applies identically, so the memory
store used by the fast tests cannot drift from the embedded one (or, later, PostgreSQL).

- A queued message holds each recipient once (the first spelling given wins) and at least one.
- A recipient only ever leaves PENDING: an update for one that is DELIVERED or FAILED, or for an
  unknown message or address, is ignored. The worker and `mailhouse queue delete` race by
  design (the CLI edits the store while the server runs); the loser's write is a no-op.
- Each applied update counts one attempt. A PENDING update moves `next_attempt`; the others
  keep it (it means nothing once the recipient is done).
- When no recipient is PENDING any more the message leaves the queue and its blob loses the
  reference the queue entry held.
"""

from __future__ import annotations

from collections.abc import Sequence

from mailhouse.store.base import QueueRequest, RecipientStatus, RecipientUpdate

MAX_REPLY = 2000  # characters of a remote reply kept for `queue show` and DSNs


def queue_recipients(request: QueueRequest) -> tuple[str, ...]:
    """The request's recipients, each once, in order. Raises ValueError for none, or for an
    address a line-based protocol could not carry (CR, LF, NUL: security.md checklist 15)."""
    seen: dict[str, None] = {}
    for address in request.recipients:
        if not address or any(c in address for c in "\r\n\0"):
            raise ValueError(f"invalid queue recipient {address!r}")
        seen.setdefault(address, None)
    if not seen:
        raise ValueError("a queue request needs at least one recipient")
    if any(c in request.sender for c in "\r\n\0"):
        raise ValueError(f"invalid queue sender {request.sender!r}")
    return tuple(seen)


def clean_reply(reply: str | None) -> str | None:
    """One line, bounded: remote servers choose this text (multi-line replies are joined)."""
    if reply is None:
        return None
    text = " ".join(part.strip() for part in reply.replace("\0", " ").splitlines()).strip()
    return text[:MAX_REPLY]


def checked_updates(updates: Sequence[RecipientUpdate]) -> list[RecipientUpdate]:
    for update in updates:
        if not isinstance(update.status, RecipientStatus):
            raise TypeError(f"not a RecipientStatus: {update.status!r}")
    return list(updates)
