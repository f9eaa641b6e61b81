"""What passes between the POP3 server core and its transport: events out, answers in.

Events marked "decision" pause the core until the transport answers them (`login_result`, the
`message_*` calls, `commit_result`); the rest are notices. `LoginResult` and `MaildropEntry` travel
the other way, in the answer to `Credentials`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


@dataclass(frozen=True, slots=True)
class NeedData:
    """Nothing more can happen until more bytes arrive (or a pending decision is answered)."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """Decision: a login attempt, from USER + PASS (`mechanism` "USER") or from an AUTH exchange
    (RFC 5034; "PLAIN" or "LOGIN" through proto/sasl.py). Answer with `login_result()`.

    `authzid` is "" or equal to `username` (the SASL layer refuses anything else). The password
    never appears in a repr (logs, tracebacks)."""

    mechanism: str
    username: str
    password: str = field(repr=False)
    authzid: str = ""


@dataclass(frozen=True, slots=True)
class Retrieve:
    """Decision: RETR (`top_lines` None) or TOP (`top_lines` body lines wanted) of the message at
    `index`, 0-based into the maildrop given to `login_result()`. Answer by streaming the stored
    bytes with `message_data()` then `message_end()`, or `message_failed()` before any data."""

    index: int
    top_lines: int | None = None

    def __post_init__(self) -> None:
        if self.index < 0 or (self.top_lines is not None and self.top_lines < 0):
            raise ValueError("Retrieve needs a non-negative index and line count")


@dataclass(frozen=True, slots=True)
class Commit:
    """Decision: QUIT in the TRANSACTION state, i.e. the UPDATE state (RFC 1939 §6): expunge the
    messages at these indexes (sorted, possibly none), then answer `commit_result()`. Emitted even
    when nothing was deleted, so the transport has one place to end a session cleanly."""

    deleted: tuple[int, ...]

    def __post_init__(self) -> None:
        if any(i < 0 for i in self.deleted):
            raise ValueError("Commit indexes are non-negative")


@dataclass(frozen=True, slots=True)
class StartTls:
    """The transport must flush, do the TLS handshake, then call `tls_established()`."""


@dataclass(frozen=True, slots=True)
class Closed:
    """The transport must flush what is pending and close the connection."""


Event = NeedData | Credentials | Retrieve | Commit | StartTls | Closed


class LoginResult(Enum):
    """The service's verdict on `Credentials`. Each maps onto one RFC 2449 / RFC 3206 code."""

    OK = "ok"  # maildrop opened and locked: TRANSACTION state
    FAILED = "failed"  # -ERR [AUTH]: wrong password or unknown user (one answer for both)
    # -ERR [AUTH] with the very text of FAILED: a throttled client must not learn that it is
    # throttled, nor whether the password it just tried was right (security checklist 11).
    THROTTLED = "throttled"
    IN_USE = "in_use"  # -ERR [IN-USE]: right password, maildrop locked by another session
    SYS_TEMP = "sys_temp"  # -ERR [SYS/TEMP]: the store failed; trying later may work
    SYS_PERM = "sys_perm"  # -ERR [SYS/PERM]: a lasting problem (RFC 3206 §4); do not retry


def _valid_uidl(uidl: str) -> bool:
    # RFC 1939 §7: 1 to 70 characters in the range 0x21 to 0x7E.
    return 0 < len(uidl) <= 70 and uidl.isascii() and uidl.isprintable() and " " not in uidl


@dataclass(frozen=True, slots=True)
class MaildropEntry:
    """One message of the maildrop snapshot taken at login (RFC 1939 §5: later deliveries stay
    invisible until the next session).

    `size` is the stored message in CRLF form, exactly the octets RETR sends before byte-stuffing,
    so LIST and STAT agree with what clients download. `uidl` never changes for this message."""

    size: int
    uidl: str

    def __post_init__(self) -> None:
        if self.size < 0:
            raise ValueError("message size is negative")
        if not _valid_uidl(self.uidl):
            raise ValueError("a UIDL is 1-70 characters in 0x21-0x7E (RFC 1939 §7)")
