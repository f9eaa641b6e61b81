"""Rules every store implementation must apply identically, so the memory store used by the fast
tests cannot drift from the embedded one on anything a client can observe."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence

from mailhouse.store.base import FlagOp, MailboxExists, MailboxNotAllowed, NoSuchMailbox

INBOX = "INBOX"
HIERARCHY_DELIMITER = "/"  # RFC 9051 §5.1.1; "." would clash with dotted names ("Mr. X")
MAX_MAILBOX_NAME = 1000  # characters; Dovecot's limit is about this, no client nears it
# RFC 6154 §2 attributes a mailbox may carry (\All and \Flagged are virtual: not creatable here).
SPECIAL_USES = frozenset({"\\Archive", "\\Drafts", "\\Junk", "\\Sent", "\\Trash"})
MAX_UIDVALIDITY = 0xFFFFFFFF  # nz-number, 32 bits (RFC 9051 §9, "uniqueid")


def canonical_mailbox_name(name: str) -> str:
    """INBOX is case-insensitive, every other name is case-sensitive (RFC 9051 §5.1); so is
    INBOX as the first level of a longer name ("inbox/x" is "INBOX/x")."""
    head, delimiter, rest = name.partition(HIERARCHY_DELIMITER)
    return INBOX + delimiter + rest if head.upper() == INBOX else name


def check_mailbox_name(name: str) -> str:
    """The stored form of a mailbox name, or ValueError.

    Names are Unicode (the IMAP layer decodes modified UTF-7, RFC 9051 §5.1.3). "/" separates
    levels (HIERARCHY_DELIMITER); an empty level (leading, trailing or doubled "/"), a "." or
    ".." level, and control characters are refused, so a name can never look like a path or
    split a log line. A first level spelt INBOX in any case is INBOX (RFC 9051 §5.1), so
    "inbox/x" and "INBOX/x" are one name.
    """
    if not name or len(name) > MAX_MAILBOX_NAME:
        raise ValueError(f"mailbox name must be 1 to {MAX_MAILBOX_NAME} characters")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c in "\u2028\u2029" for c in name):
        raise ValueError(f"control character in mailbox name {name!r}")
    if any(level in ("", ".", "..") for level in name.split(HIERARCHY_DELIMITER)):
        raise ValueError(f"empty, '.' or '..' level in mailbox name {name!r}")
    return canonical_mailbox_name(name)


def check_special_use(special_use: str | None) -> str | None:
    if special_use is not None and special_use not in SPECIAL_USES:
        raise ValueError(f"unknown special-use attribute {special_use!r}")
    return special_use


def subtree_bounds(name: str) -> tuple[str, str]:
    """(low, high) such that low < n < high is exactly the names below `name`: "/" sorts just
    before "0", so a range scan of the (account_id, name) index finds a whole subtree."""
    return name + HIERARCHY_DELIMITER, name + chr(ord(HIERARCHY_DELIMITER) + 1)


def check_rename(old: str, new: str, old_exists: bool, new_taken: bool) -> None:
    """RENAME's refusals, in the order both stores apply them (RFC 9051 §6.3.6): `old` must be a
    mailbox or a level with mailboxes below it; `new` must not lie inside the subtree that moves
    (INBOX's subtree stays, so INBOX may move below itself); nothing may exist at or below
    `new`."""
    if not old_exists:
        raise NoSuchMailbox(old)
    if old != INBOX and new.startswith(subtree_bounds(old)[0]):
        raise MailboxNotAllowed(f"cannot rename {old!r} into its own subtree")
    if new_taken:
        raise MailboxExists(new)


def check_quota(limit: int | None) -> int | None:
    if limit is not None and limit < 0:
        raise ValueError(f"a quota cannot be negative: {limit}")
    return limit


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


def apply_flag_op(old: frozenset[str], op: FlagOp, flags: frozenset[str]) -> frozenset[str]:
    if op is FlagOp.SET:
        return flags
    if op is FlagOp.ADD:
        return old | flags
    return old - flags


MAX_ZONE_MINUTES = 99 * 60 + 59  # RFC 9051 §9 "zone": ("+" / "-") 4DIGIT, hhmm


def check_zone(minutes: int) -> int:
    """INTERNALDATE's zone offset, minutes east of UTC; what the date-time syntax can carry."""
    if not -MAX_ZONE_MINUTES <= minutes <= MAX_ZONE_MINUTES:
        raise ValueError(f"zone offset {minutes} minutes is out of range")
    return minutes


SEEN, DELETED = "\\Seen", "\\Deleted"


def flag_counts(flags: frozenset[str]) -> tuple[int, int]:
    """What one message adds to its mailbox's (unseen, deleted) counters."""
    return int(SEEN not in flags), int(DELETED in flags)


def encode_flags(flags: frozenset[str]) -> str:
    return " ".join(sorted(flags))


@functools.lru_cache(maxsize=4096)
def decode_flags(text: str) -> frozenset[str]:
    """Memoised: a mailbox has few distinct flag sets, and equal rows then share one
    frozenset (whose hash, and FETCH's rendering of it, are then computed once)."""
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


_ADMIN_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def check_admin_name(name: str) -> str:
    """Operator names: lower-case letters, digits, `.`, `_`, `-`, at most 64; they appear in
    the audit log and in URLs, so nothing there needs quoting."""
    if not _ADMIN_NAME.fullmatch(name):
        raise ValueError(f"not an admin name: {name!r} (a-z, 0-9, . _ -, at most 64)")
    return name


_SCOPE = re.compile(r"[a-z][a-z0-9:_-]{0,31}")


def check_scopes(scopes: Sequence[str]) -> tuple[str, ...]:
    """API token scopes are stored space-separated: each must be one short word. Which words
    mean something is the service's business (service/api_tokens.py)."""
    for scope in scopes:
        if not _SCOPE.fullmatch(scope):
            raise ValueError(f"not a scope: {scope!r}")
    return tuple(dict.fromkeys(scopes))
