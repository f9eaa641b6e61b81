"""The seams between the queue's parts: the scheduler (worker.py) hands a destination's
recipients to a `RemoteDelivery` (delivery.py: MX lookup + outbound SMTP) and gets one
`RemoteResult` per recipient back; permanent failures and expiries become DSNs (dsn.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from mailhouse.errors import Reply
from mailhouse.store.base import Outcome

# A message's bytes, readable as many times as needed (one read per MX host tried).
MessageSource = Callable[[], AsyncIterator[bytes]]


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """What the client needs to know about one queued message."""

    queue_id: int
    sender: str  # "" for <>
    size: int
    smtputf8: bool  # the envelope or headers need SMTPUTF8 (RFC 6531)
    body_8bit: bool  # the body has 8-bit content (needs 8BITMIME, RFC 6152)
    source: MessageSource


@dataclass(frozen=True, slots=True)
class RemoteResult:
    recipient: str
    outcome: Outcome  # DELIVERED, TEMPORARY (retry later) or PERMANENT (bounce)
    reply: Reply  # the remote server's reply, or a local one (DNS failure, timeout…)
    remote_host: str | None = None  # "mx.example.org [192.0.2.1]" when a server answered


class RemoteDelivery(Protocol):
    async def deliver(self, domain: str, message: OutboundMessage,
                      recipients: Sequence[str]) -> list[RemoteResult]:
        """Deliver to the recipients of one domain: resolve MX (RFC 5321 §5.1), try each host
        in order, one SMTP transaction for all recipients, per-recipient results in order.
        Never raises for delivery problems: they are results."""
        ...

    async def close(self) -> None:
        """Close cached connections."""
        ...


@dataclass(frozen=True, slots=True)
class FailedRecipient:
    """One line of a DSN (RFC 3464 §2.3)."""

    address: str
    action: str  # "failed" or "delayed"
    status: str  # enhanced status code, e.g. "5.1.1"
    diagnostic: str | None  # "smtp; 550 5.1.1 User unknown"
    remote_mta: str | None
