"""SASL server mechanisms (RFC 4422) shared by SMTP AUTH, IMAP AUTHENTICATE and POP3 AUTH.

Pure: wire responses in, challenges or credentials out. All three protocols frame SASL the same
way (RFC 4954 §4, RFC 9051 §6.2.2, RFC 5034 §4): every client response is one line of base64, a
line holding only "*" cancels the exchange, and an initial response of "=" means "present but
empty". That framing lives here too, so each protocol core only maps the outcome onto its own
replies (SMTP: 334 / 501 / 504 / 535).

Only mechanisms that carry a plain password exist (PLAIN, LOGIN): the passwords are stored as
argon2id hashes, which challenge-response mechanisms (CRAM-MD5, SCRAM) cannot be checked against.
Plain-password mechanisms are therefore only ever offered inside TLS; enforcing that is the
protocol core's job.
"""

from __future__ import annotations

import abc
import base64
import binascii
from dataclasses import dataclass, field
from enum import Enum

MECHANISMS: tuple[str, ...] = ("PLAIN", "LOGIN")

CANCEL = b"*"  # RFC 4954 §4, RFC 9051 §6.2.2
EMPTY_INITIAL_RESPONSE = b"="  # RFC 4954 §4: an initial response of zero length
# Nothing legitimate comes close (an address is at most 256 octets, a password 1024 bytes as
# service/accounts.py accepts them); the protocol line limit (12288 octets in SMTP, RFC 4954 §4)
# already bounds it, this bounds what any core can hand us.
MAX_DECODED = 4096


class SaslErrorKind(Enum):
    UNSUPPORTED = "unsupported"  # no such mechanism here (SMTP 504 5.5.4)
    CANCELLED = "cancelled"  # the client sent "*" (SMTP 501 5.7.0)
    BAD_BASE64 = "bad_base64"  # the response is not base64 (SMTP 501 5.5.2)
    FAILED = "failed"  # well framed but unacceptable: authentication fails (SMTP 535 5.7.8)


class SaslError(Exception):
    """The exchange is over without credentials; `kind` tells the core which reply to send."""

    def __init__(self, kind: SaslErrorKind, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Challenge:
    """A server challenge; `payload` is raw, `encoded()` is what goes after "334 " or "+ "."""

    payload: bytes

    def encoded(self) -> str:
        return base64.b64encode(self.payload).decode("ascii")


@dataclass(frozen=True, slots=True)
class Credentials:
    """What the client claimed. `authzid` is "" unless the client asked to act as someone else;
    the password never appears in a repr (logs, tracebacks)."""

    mechanism: str
    authzid: str
    username: str
    password: str = field(repr=False)


Step = Challenge | Credentials


def decode_response(line: bytes, *, initial: bool = False) -> bytes:
    """One client response line (without CRLF) → its bytes, or SaslError.

    Strict base64 (RFC 4648 §3.3: characters outside the alphabet are an error, not noise), so two
    servers can never disagree about what a client said."""
    line = line.strip(b" ")
    if line == CANCEL:
        raise SaslError(SaslErrorKind.CANCELLED, "authentication cancelled")
    if initial and line == EMPTY_INITIAL_RESPONSE:
        return b""
    if len(line) > (MAX_DECODED * 4) // 3 + 4:
        raise SaslError(SaslErrorKind.FAILED, "response too long")
    try:
        return base64.b64decode(line, validate=True)
    except (binascii.Error, ValueError):
        raise SaslError(SaslErrorKind.BAD_BASE64, "response is not valid base64") from None


def _text(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SaslError(SaslErrorKind.FAILED, f"{what} is not UTF-8") from None


class Mechanism(abc.ABC):
    """One exchange of one mechanism, as a small state machine: `start()` once, then `step()`
    for each client response until a Credentials comes out (or SaslError)."""

    name = ""

    @abc.abstractmethod
    def start(self, initial_response: bytes | None) -> Step:
        """`initial_response` is the wire text after the mechanism name (RFC 4954 §4), or None
        when the client sent none."""

    @abc.abstractmethod
    def step(self, response: bytes) -> Step: ...


class Plain(Mechanism):
    """RFC 4616: one message `[authzid] NUL authcid NUL passwd`, all UTF-8.

    A client may ask to act as another identity (authzid). We have no proxy rights to grant, so
    an authzid other than the login itself fails the exchange (RFC 4616 §2: the server verifies
    the authentication identity may act as the authorization identity) with the same answer as a
    wrong password. The comparison is exact: clients that send an authzid copy the login."""

    name = "PLAIN"

    def __init__(self) -> None:
        self._done = False

    def start(self, initial_response: bytes | None) -> Step:
        if initial_response is None:
            return Challenge(b"")  # RFC 4616 §2: the client speaks first, with an empty prompt
        return self.step(initial_response, initial=True)

    def step(self, response: bytes, *, initial: bool = False) -> Step:
        if self._done:
            raise SaslError(SaslErrorKind.FAILED, "exchange already complete")
        self._done = True
        message = decode_response(response, initial=initial)
        parts = message.split(b"\0")
        if len(parts) != 3:
            raise SaslError(SaslErrorKind.FAILED, "PLAIN message needs exactly two NULs")
        authzid, authcid, password = (_text(p, "PLAIN field") for p in parts)
        if not authcid or not password:
            raise SaslError(SaslErrorKind.FAILED, "empty authentication identity or password")
        if authzid and authzid != authcid:
            raise SaslError(SaslErrorKind.FAILED, "authorization identity differs from login")
        return Credentials(self.name, authzid, authcid, password)


class Login(Mechanism):
    """The LOGIN mechanism (draft-murchison-sasl-login, never an RFC but what many clients still
    use): "Username:" then "Password:" challenges. An initial response is the user name."""

    name = "LOGIN"

    def __init__(self) -> None:
        self._username: str | None = None
        self._done = False

    def start(self, initial_response: bytes | None) -> Step:
        if initial_response is None:
            return Challenge(b"Username:")
        return self._take(decode_response(initial_response, initial=True))

    def step(self, response: bytes) -> Step:
        return self._take(decode_response(response))

    def _take(self, data: bytes) -> Step:
        if self._done:
            raise SaslError(SaslErrorKind.FAILED, "exchange already complete")
        if self._username is None:
            self._username = _text(data, "user name")
            return Challenge(b"Password:")
        self._done = True
        password = _text(data, "password")
        if not self._username or not password:
            raise SaslError(SaslErrorKind.FAILED, "empty user name or password")
        return Credentials(self.name, "", self._username, password)


_MECHANISMS: dict[str, type[Mechanism]] = {"PLAIN": Plain, "LOGIN": Login}


def new_mechanism(name: str, offered: tuple[str, ...] = MECHANISMS) -> Mechanism:
    """A fresh exchange for `name` (case-insensitive, RFC 4422 §3.1), if it is offered."""
    upper = name.upper()
    if upper not in offered or upper not in _MECHANISMS:
        raise SaslError(SaslErrorKind.UNSUPPORTED, "mechanism not supported")
    return _MECHANISMS[upper]()
