"""Rules every store implementation must apply identically, so the memory store used by the fast
tests cannot drift from the embedded one on anything a client can observe."""

from __future__ import annotations

from collections.abc import Iterable

INBOX = "INBOX"
MAX_UIDVALIDITY = 0xFFFFFFFF  # nz-number, 32 bits (RFC 9051 §9, "uniqueid")


def canonical_mailbox_name(name: str) -> str:
    """INBOX is case-insensitive, every other name is case-sensitive (RFC 9051 §5.1)."""
    return INBOX if name.upper() == INBOX else name


def next_uidvalidity(last: int, now: float) -> int:
    """A UIDVALIDITY never handed out before on this store.

    Seconds since the epoch make values unique across a store being wiped and recreated; `last + 1`
    keeps them unique within one second and when the clock steps back, so a mailbox deleted and
    recreated under the same name never reuses a value (RFC 9051 §2.3.1.1).
    """
    value = max(int(now), last + 1)
    if value > MAX_UIDVALIDITY:  # after 2106, or a clock far in the future: wrap, stay nonzero
        value = value % MAX_UIDVALIDITY or 1
    return value


def check_flags(flags: Iterable[str]) -> frozenset[str]:
    """Flags as a set; refuses what could not be an IMAP flag atom (RFC 9051 §9, "flag").

    The check is deliberately loose (case and backslash rules belong to the IMAP layer) but strict
    enough that the space-separated storage encoding below is unambiguous.
    """
    result = frozenset(flags)
    for flag in result:
        if not flag or any(c.isspace() or ord(c) < 0x20 or c in '(){%*"]' for c in flag):
            raise ValueError(f"invalid flag {flag!r}")
    return result


def encode_flags(flags: frozenset[str]) -> str:
    return " ".join(sorted(flags))


def decode_flags(text: str) -> frozenset[str]:
    return frozenset(text.split()) if text else frozenset()


def check_address_key(address: str) -> None:
    """Catch a caller passing a display form instead of model.Address.key."""
    if "@" not in address or address != address.strip():
        raise ValueError(f"not an address key: {address!r}")


def check_alias_key(alias: str) -> None:
    """An alias is an address key, or "@domain" for a catch-all."""
    if not alias.startswith("@"):
        check_address_key(alias)
    elif len(alias) < 2:
        raise ValueError("catch-all alias needs a domain")
