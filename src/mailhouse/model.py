"""Typed values shared by every layer: addresses, envelopes, accounts.

Parse, don't validate: text from the wire becomes an `Address` once, at the edge, and everything
inside trusts it.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

# RFC 5321 §4.5.3.1: local part at most 64 octets, domain 255, a whole path 256.
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 256

# RFC 5322 §3.2.3 atext; a Dot-string is atoms joined by single dots (RFC 5321 §4.1.2).
_ATEXT = r"A-Za-z0-9!#$%&'*+\-/=?^_`{|}~"
_DOT_STRING_ASCII = re.compile(rf"[{_ATEXT}]+(\.[{_ATEXT}]+)*\Z")
# RFC 6531 §3.3: with SMTPUTF8 any UTF-8 non-ASCII character is atext too.
_DOT_STRING_UTF8 = re.compile(rf"[{_ATEXT}\u0080-\U0010ffff]+(\.[{_ATEXT}\u0080-\U0010ffff]+)*\Z")
_LDH_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")
# RFC 5321 §4.1.3 address literals, by syntax (whether an IPv4 literal's numbers are in range is
# the resolver's question): IPv4, "IPv6:…", or a General-address-literal (tag ":" dcontent).
_ADDRESS_LITERAL = re.compile(
    r"\[(\d{1,3}(\.\d{1,3}){3}|[A-Za-z0-9-]*[A-Za-z0-9]:[\x21-\x5a\x5e-\x7e]+)\]\Z")
# C0 and C1 controls, DEL and the Unicode line and paragraph separators: never part of an
# address (RFC 6531's UTF-8 atext is meant for letters), and each can break a log line or a
# header apart.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class AddressError(ValueError):
    """Text that is not a valid RFC 5321 mailbox; the message says why."""


def normalize_domain(text: str) -> str:
    """Canonical form of a domain: lower-case A-labels, so U-label and A-label spellings of one
    domain are the same key (RFC 5890; security checklist item 35)."""
    text = text.strip().rstrip(".")
    if not text:
        raise AddressError("empty domain")
    if text.startswith("[") and text.endswith("]"):
        return text.lower()  # address literal, RFC 5321 §4.1.3
    if any(ord(c) > 127 for c in text):
        try:
            text = unicodedata.normalize("NFC", text).encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise AddressError(f"invalid internationalized domain {text!r}") from exc
    text = text.lower()
    if len(text) > MAX_DOMAIN:
        raise AddressError("domain longer than 255 octets")
    labels = text.split(".")
    for label in labels:
        if not _LDH_LABEL.match(label):
            raise AddressError(f"invalid domain {text!r}")
    return text


def _unquote_local(local: str) -> str:
    if len(local) >= 2 and local[0] == '"' and local[-1] == '"':
        return re.sub(r"\\(.)", r"\1", local[1:-1])
    return local


@dataclass(frozen=True, slots=True)
class Address:
    """A mailbox `local@domain`. `local` keeps the sender's spelling (it is opaque to everyone but
    the destination, RFC 5321 §2.4); `domain` is canonical (lower-case A-labels)."""

    local: str
    domain: str

    @classmethod
    def parse(cls, text: str, *, utf8: bool = True) -> Address:
        """Parse an RFC 5321 Mailbox (no angle brackets). `utf8=False` refuses non-ASCII, as a
        session without SMTPUTF8 must (RFC 6531 §3.4)."""
        if not utf8 and not text.isascii():
            raise AddressError("non-ASCII address without SMTPUTF8")
        if _CONTROL.search(text):
            raise AddressError("control character in address")
        if _SURROGATE.search(text):  # from bytes decoded with surrogateescape: not UTF-8
            raise AddressError("address is not valid UTF-8")
        if len(text.encode("utf-8")) > MAX_PATH:
            raise AddressError("path longer than 256 octets")
        at = text.rfind("@")
        if at <= 0:
            raise AddressError("address needs local@domain")
        local, domain = text[:at], text[at + 1 :]
        if len(local.encode("utf-8")) > MAX_LOCAL_PART:
            raise AddressError("local part longer than 64 octets")
        if local.startswith('"'):
            if not re.fullmatch(r'"([\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"',
                                local):
                raise AddressError("invalid quoted local part")
        else:
            pattern = _DOT_STRING_UTF8 if utf8 else _DOT_STRING_ASCII
            if not pattern.match(local):
                raise AddressError("invalid local part")
        domain = normalize_domain(domain)
        if domain.startswith("[") and not _ADDRESS_LITERAL.match(domain):
            raise AddressError("invalid address literal")
        return cls(unicodedata.normalize("NFC", local), domain)

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"

    @property
    def key(self) -> str:
        """Lookup key for our own accounts: local parts of our users match case-insensitively."""
        return f"{_unquote_local(self.local).casefold()}@{self.domain}"

    @property
    def is_ascii(self) -> bool:
        return self.local.isascii() and self.domain.isascii()


@dataclass(frozen=True, slots=True)
class Envelope:
    """What the SMTP transaction said about a message, beside its bytes."""

    sender: Address | None  # None is the null reverse-path <>
    recipients: tuple[Address, ...]
    helo: str
    peer: str  # "ip:port" of the client
    smtputf8: bool = False
    body_8bit: bool = False
    authenticated_as: str | None = None
    tls: str | None = None  # e.g. "TLSv1.3 TLS_AES_256_GCM_SHA384"
    protocol: str = "ESMTP"  # RFC 3848 "with" keyword: SMTP, ESMTP, ESMTPS, UTF8SMTPS …


@dataclass(frozen=True, slots=True)
class Account:
    """A user who owns mailboxes. `address` is the canonical key form."""

    id: int
    address: str
    password_hash: str


@dataclass(frozen=True, slots=True)
class Directory:
    """A snapshot of who we receive mail for: read once, consulted at every RCPT without I/O."""

    serial: int
    domains: frozenset[str]
    users: dict[str, int] = field(default_factory=dict)  # address key -> account id
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)  # key or "@domain" -> keys
    # Storage limits in octets of the accounts that have one (account id -> limit): RCPT asks
    # the store for usage only for these, so mail to unlimited accounts never waits on it.
    quotas: dict[int, int] = field(default_factory=dict)
