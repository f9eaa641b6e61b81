"""Events the SMTP server core hands to its transport, which asks the service and answers.

Events marked "decision" pause the core until `respond(reply)`; the rest are notices.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mailhouse.errors import Reply
from mailhouse.model import Address


@dataclass(frozen=True, slots=True)
class NeedData:
    """Nothing more can happen until more bytes arrive."""


@dataclass(frozen=True, slots=True)
class Helo:
    """Notice: the client (re)introduced itself; any transaction is gone."""

    name: str
    extended: bool


@dataclass(frozen=True, slots=True)
class MailFrom:
    """Decision: accept this reverse-path?"""

    sender: Address | None
    size: int | None
    body_8bit: bool
    smtputf8: bool


@dataclass(frozen=True, slots=True)
class RcptTo:
    """Decision: accept this recipient? `recipient` is None for a bare <Postmaster>."""

    recipient: Address | None


@dataclass(frozen=True, slots=True)
class DataStart:
    """Notice: message content begins (after 354, or with the first BDAT chunk)."""


@dataclass(frozen=True, slots=True)
class DataChunk:
    """Notice: message content, already unstuffed, in wire (CRLF) form."""

    data: bytes


@dataclass(frozen=True, slots=True)
class DataComplete:
    """Decision: the whole message has arrived intact; store it (250) or refuse it."""

    size: int
    received_headers: int


@dataclass(frozen=True, slots=True)
class DataAborted:
    """Notice: the content will not be kept (size, bare newline, loop…); drop what was spooled."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class TransactionReset:
    """Notice: RSET/EHLO/STARTTLS ended a transaction; drop any spooled content."""


@dataclass(frozen=True, slots=True)
class AuthCredentials:
    """Decision: a SASL exchange (RFC 4954) produced these credentials; answer 235 2.7.0 when
    they are right, 535 5.7.8 when not (one text for an unknown user and a wrong password), or
    454 4.7.0 while logins are throttled. `authzid` is "" or equal to `username` (the SASL layer
    refuses anything else). The password never appears in a repr."""

    mechanism: str
    authzid: str
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class StartTls:
    """The transport must flush, do the TLS handshake, then call `tls_established()`."""


@dataclass(frozen=True, slots=True)
class Closed:
    """The transport must flush what is pending and close the connection."""


Event = (
    NeedData | Helo | MailFrom | RcptTo | DataStart | DataChunk | DataComplete | DataAborted
    | TransactionReset | AuthCredentials | StartTls | Closed
)
