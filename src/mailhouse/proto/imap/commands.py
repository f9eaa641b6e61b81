"""The typed arguments of each IMAP command, as the parser produces them (grammar.py).

Values are decoded as far as the grammar can: mailbox names to str (INBOX normalised),
numbers to int, dates to date/datetime. Search strings stay bytes: their charset is the
command's CHARSET, which only the search engine applies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from mailhouse.proto.imap.fetch import FetchAttribute
from mailhouse.proto.imap.search import SearchKey
from mailhouse.proto.imap.sequence import SequenceSet


@dataclass(frozen=True, slots=True)
class NoArguments:
    """CAPABILITY, NOOP, LOGOUT, STARTTLS, NAMESPACE, IDLE, UNSELECT, CLOSE, CHECK, EXPUNGE."""


@dataclass(frozen=True, slots=True)
class Login:
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Authenticate:
    """`initial`: the SASL-IR initial response in wire form (base64, or b"=" for an empty one,
    RFC 4959 §3); decoding it is the SASL layer's job."""

    mechanism: str
    initial: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class QResync:
    """SELECT (QRESYNC (uidvalidity modseq [known-uids [(seq-set uid-set)]])), RFC 7162 §3.2.5."""

    uidvalidity: int
    modseq: int
    known_uids: SequenceSet | None = None
    seq_match: tuple[SequenceSet, SequenceSet] | None = None


@dataclass(frozen=True, slots=True)
class Select:
    """SELECT or EXAMINE (`read_only`)."""

    mailbox: str
    read_only: bool = False
    condstore: bool = False
    qresync: QResync | None = None


@dataclass(frozen=True, slots=True)
class Create:
    mailbox: str
    use: tuple[str, ...] = ()  # RFC 6154 §3: CREATE name (USE (\Sent ...))


@dataclass(frozen=True, slots=True)
class MailboxArgument:
    """DELETE, SUBSCRIBE, UNSUBSCRIBE, GETQUOTAROOT."""

    mailbox: str


@dataclass(frozen=True, slots=True)
class Rename:
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class ListMailboxes:
    """LIST (basic or extended, RFC 5258), or LSUB. Patterns and the reference are decoded but
    not checked: they are patterns, not names."""

    reference: str
    patterns: tuple[str, ...]
    selection: tuple[str, ...] = ()  # SUBSCRIBED, REMOTE, RECURSIVEMATCH, SPECIAL-USE
    returns: tuple[str, ...] = ()  # SUBSCRIBED, CHILDREN, SPECIAL-USE, STATUS
    status_items: tuple[str, ...] = ()  # RETURN (STATUS (...)), RFC 5819
    extended: bool = False  # selection options, several patterns or RETURN were used


@dataclass(frozen=True, slots=True)
class Status:
    mailbox: str
    items: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AppendMessage:
    """One message of APPEND (several with MULTIAPPEND, RFC 3502); its octets came as
    AppendData events with this `index`."""

    index: int
    size: int
    flags: tuple[str, ...] = ()
    internal_date: datetime | None = None
    binary: bool = False  # literal8 (RFC 3516 §4.4)
    utf8: bool = False  # sent as APPEND's UTF8 data item (RFC 6855 §4): may hold UTF-8 headers


@dataclass(frozen=True, slots=True)
class Append:
    mailbox: str
    messages: tuple[AppendMessage, ...]


@dataclass(frozen=True, slots=True)
class Enable:
    capabilities: tuple[str, ...]  # upper-cased


@dataclass(frozen=True, slots=True)
class Id:
    """RFC 2971: None for ID NIL."""

    params: tuple[tuple[str, str | None], ...] | None


@dataclass(frozen=True, slots=True)
class GetQuota:
    root: str


@dataclass(frozen=True, slots=True)
class SetQuota:
    root: str
    limits: tuple[tuple[str, int], ...]  # (resource upper-cased, limit)


@dataclass(frozen=True, slots=True)
class SearchReturn:
    """ESEARCH RETURN options (RFC 4731, RFC 5182 SAVE, RFC 5267 CONTEXT/UPDATE/PARTIAL).
    RETURN () means ALL (RFC 4731 §3.1)."""

    options: tuple[str, ...]
    partial: tuple[int, int] | None = None  # RFC 5267 §4.4 PARTIAL low:high (negative: from end)


@dataclass(frozen=True, slots=True)
class Search:
    key: SearchKey
    charset: str | None = None
    returns: SearchReturn | None = None  # None: plain SEARCH, answered with * SEARCH


@dataclass(frozen=True, slots=True)
class Fetch:
    sequence_set: SequenceSet
    attributes: tuple[FetchAttribute, ...]
    changed_since: int | None = None  # RFC 7162 §3.1.4
    vanished: bool = False  # RFC 7162 §3.2.6, UID FETCH only


@dataclass(frozen=True, slots=True)
class Store:
    sequence_set: SequenceSet
    mode: str  # "+", "-" or "" (replace)
    silent: bool
    flags: tuple[str, ...]
    unchanged_since: int | None = None  # RFC 7162 §3.1.3


@dataclass(frozen=True, slots=True)
class Copy:
    """COPY and MOVE."""

    sequence_set: SequenceSet
    mailbox: str


@dataclass(frozen=True, slots=True)
class Expunge:
    """UID EXPUNGE (RFC 4315 §2.1); plain EXPUNGE has NoArguments."""

    sequence_set: SequenceSet


@dataclass(frozen=True, slots=True)
class Sort:
    """RFC 5256 SORT; `criteria` are (key, reversed); RFC 5267 ESORT adds `returns`."""

    criteria: tuple[tuple[str, bool], ...]
    charset: str
    key: SearchKey
    returns: SearchReturn | None = None


@dataclass(frozen=True, slots=True)
class CancelUpdate:
    """RFC 5267 §4.3.5: CANCELUPDATE with the tags of the searching commands to silence."""

    tags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Thread:
    algorithm: str
    charset: str
    key: SearchKey


Arguments = (
    NoArguments | Login | Authenticate | Select | Create | MailboxArgument | Rename
    | ListMailboxes | Status | Append | Enable | Id | GetQuota | SetQuota | Search | Fetch
    | Store | Copy | Expunge | Sort | Thread | CancelUpdate
)
