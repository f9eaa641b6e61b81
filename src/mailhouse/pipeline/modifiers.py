"""Headers a receiving server adds: the trace (RFC 5321 §4.4) in front of the message as sent."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.utils import format_datetime

from mailhouse.model import Address, Envelope

# What may appear of a client-chosen HELO name inside our Received header; anything else is
# replaced, so a client cannot forge header structure (comments, `;`, `by` clauses).
_UNSAFE_HELO = re.compile(r"[^A-Za-z0-9.\-_:\[\]]")


def protocol_keyword(*, esmtp: bool, tls: bool, authenticated: bool, smtputf8: bool) -> str:
    """The `with` keyword: RFC 3848 (ESMTP, ESMTPS, ESMTPA, ESMTPSA) and RFC 6531 §3.7.3
    (UTF8SMTP…)."""
    if not esmtp:
        return "SMTP"
    base = "UTF8SMTP" if smtputf8 else "ESMTP"
    return base + ("S" if tls else "") + ("A" if authenticated else "")


def _path(address: Address | None) -> str:
    return f"<{address}>" if address is not None else "<>"


def trace_headers(envelope: Envelope, *, hostname: str, queue_id: str,
                  now: datetime | None = None) -> bytes:
    """`Return-Path` and `Received`, as the bytes to put in front of the message."""
    when = format_datetime(now or datetime.now(UTC))
    helo = _UNSAFE_HELO.sub("?", envelope.helo)[:255] or "unknown"
    ip = envelope.peer.rsplit(":", 1)[0].strip("[]")
    if ":" in ip:
        ip = "IPv6:" + ip  # RFC 5321 §4.1.3 address literal
    parts = [f"from {helo} ([{ip}])",
             f"by {hostname} (mailhouse) with {envelope.protocol} id {queue_id}"]
    if envelope.tls:
        parts.append(f"({envelope.tls})")
    if len(envelope.recipients) == 1:  # naming one of several would leak the others' envelope
        parts.append(f"for {_path(envelope.recipients[0])}")
    received = "Received: " + "\r\n\t".join(parts) + f";\r\n\t{when}"
    head = f"Return-Path: {_path(envelope.sender)}\r\n{received}\r\n"
    return head.encode("utf-8")
