"""Mailbox names from the wire: decoding, INBOX, and the naming rules the server enforces.

Two kinds of refusal (docs/decisions.md): octets that are not a name at all (invalid modified
UTF-7, invalid UTF-8, NUL, CR, LF) are a syntax error, tagged BAD; a name that decodes but breaks
our naming rules (other control characters, "." or ".." components, empty components, a leading
or trailing delimiter, over MAX_NAME_LENGTH) is refused by policy with NO [CANNOT] (RFC 5530),
as RFC 3501 §5.1.3 has servers refuse invalid names for CREATE rather than misparse them.
A new name (CREATE, RENAME's target) must also be in Unicode NFC: names are Net-Unicode
(RFC 9051 §5.1, RFC 6855 §3, RFC 5198 §2), and refusing a denormalised one, rather than
normalising it, keeps every name a client can create the name it later finds in LIST.
"""

from __future__ import annotations

import unicodedata

from mailhouse.proto.imap import mutf7
from mailhouse.proto.imap.lexer import ParseError, PolicyError

MAX_NAME_LENGTH = 1000  # characters of a decoded name (Dovecot: 1000 for a whole name)


def normalise_inbox(name: str, delimiter: str = "/") -> str:
    """RFC 9051 §5.1: "INBOX" in any case is INBOX, and so is the first level of its children."""
    head, sep, rest = name.partition(delimiter)
    if head.upper() == "INBOX":
        return "INBOX" + sep + rest
    return name


def decode_name(wire: bytes, *, utf8: bool) -> str:
    """The name a client sent. `utf8`: the session enabled IMAP4rev2 or UTF8=ACCEPT, so names
    travel as UTF-8 (RFC 9051 §5.1, RFC 6855 §3); otherwise as modified UTF-7."""
    if b"\x00" in wire or b"\r" in wire or b"\n" in wire:
        raise ParseError("NUL, CR or LF in a mailbox name")
    if utf8:
        try:
            return wire.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ParseError("Mailbox name is not valid UTF-8") from exc
    try:
        return mutf7.decode(wire)
    except mutf7.MUTF7Error as exc:
        raise ParseError(f"Mailbox name is not valid modified UTF-7: {exc}") from exc


def check_name(name: str, delimiter: str = "/") -> None:
    """Raise PolicyError unless `name` may name a mailbox here."""
    if not name:
        raise PolicyError("Empty mailbox name", "CANNOT")
    if len(name) > MAX_NAME_LENGTH:
        raise PolicyError("Mailbox name too long", "CANNOT")
    for ch in name:
        if unicodedata.category(ch) == "Cc" or ch in "\u2028\u2029":
            raise PolicyError("Control character in a mailbox name", "CANNOT")
    for component in name.split(delimiter):
        if component in ("", ".", ".."):
            raise PolicyError("Empty, '.' or '..' component in a mailbox name", "CANNOT")


def check_new_name(name: str) -> None:
    """Raise PolicyError unless `name` is in NFC (RFC 9051 §5.1: "Server implementations MUST
    prohibit the creation of 8-bit mailbox names that do not comply with Net-Unicode")."""
    if not unicodedata.is_normalized("NFC", name):
        raise PolicyError("Mailbox name is not in Unicode NFC", "CANNOT")


def mailbox(wire: bytes, *, utf8: bool, delimiter: str = "/", create: bool = False,
            new: bool = False) -> str:
    """A mailbox argument: decoded, INBOX normalised, checked. `create`: CREATE's name, whose
    one trailing delimiter only declares that children will follow (RFC 9051 §6.3.4); `new`
    (implied by `create`): a name about to be given to a mailbox (RENAME's target)."""
    name = decode_name(wire, utf8=utf8)
    if create and len(name) > 1 and name.endswith(delimiter):
        name = name[:-1]
    name = normalise_inbox(name, delimiter)
    check_name(name, delimiter)
    if create or new:
        check_new_name(name)
    return name
