"""What passes between the IMAP server core (server.py) and its transport/service.

Events marked "decision" pause the core until answered (the method named); the rest are
notices. The core owns the protocol's framing and states (tags, CAPABILITY, STARTTLS, login,
IDLE, LOGOUT, which command is valid when); everything that touches mail is a `Request` the
service performs, answering with untagged lines (`untagged()`) and one `complete()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mailhouse.proto.imap.events import Command


@dataclass(frozen=True, slots=True)
class NeedData:
    """Nothing more can happen until more bytes arrive (or a decision is answered)."""


@dataclass(frozen=True, slots=True)
class StartTls:
    """Decision: the "OK Begin TLS negotiation now" is in the output; flush it, discard every
    byte received so far (RFC 9051 §6.2.1: the core already did), run the handshake, then call
    `tls_established()`."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """Decision: a login attempt (LOGIN, or AUTHENTICATE PLAIN/LOGIN through proto/sasl.py).
    Answer `login_result()`. The password never appears in a repr."""

    tag: str
    mechanism: str
    username: str
    password: str = field(repr=False)
    authzid: str = ""


@dataclass(frozen=True, slots=True)
class Request:
    """Decision: a command for the service (SELECT, FETCH, APPEND …), valid in this state.
    Answer with any number of `untagged()` and one `complete()`."""

    command: Command
    selected: bool  # a mailbox is selected (SELECTED state)
    # What ENABLE turned on so far (upper case: CONDSTORE, QRESYNC, IMAP4REV2, UTF8=ACCEPT).
    enabled: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class AppendChunk:
    """Notice: octets of APPEND message `index` of the command tagged `tag`, in order; `last` on
    the final piece. Spool them; the Request for the APPEND follows (or, if the command turns
    out bad, an `AppendAborted`)."""

    tag: str
    index: int
    data: bytes
    last: bool


@dataclass(frozen=True, slots=True)
class AppendAborted:
    """Notice: drop what was spooled for the APPEND tagged `tag` (it was refused)."""

    tag: str


@dataclass(frozen=True, slots=True)
class IdleStarted:
    """Notice: the client is idling ("+ idling" sent): push changes with `untagged()` as they
    happen (RFC 2177, RFC 9051 §6.3.13) until IdleEnded."""

    tag: str


@dataclass(frozen=True, slots=True)
class IdleEnded:
    """Notice: DONE came and the tagged OK is written; flush pending changes before it if any
    (the service may call `untagged()` before pumping on)."""

    tag: str


@dataclass(frozen=True, slots=True)
class Closed:
    """Notice: the session is over (LOGOUT, BYE after too many errors, a fatal input error):
    flush and close."""


ServerEvent = (NeedData | StartTls | Credentials | Request | AppendChunk | AppendAborted
               | IdleStarted | IdleEnded | Closed)
