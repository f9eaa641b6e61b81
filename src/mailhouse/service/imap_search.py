"""SEARCH keys evaluated against what was stored at delivery (issue 8, RFC 9051 §6.4.4).

A search key tree (proto/imap/search.py) is compiled once per command into one predicate, with
every sequence set resolved against the mailbox's current maximum, so a search over 100,000
messages costs one call per message and no re-parsing. Flags, dates, sizes, UIDs and MODSEQ come
from the message's row; FROM/TO/CC/BCC/SUBJECT from the decoded search fields stored beside it.
Only HEADER, BODY and TEXT need the message itself: `needs_content()` tells the caller to read
it (then `content_of()` gives the decoded header and body text to pass in).

Matching is a case-insensitive substring test on decoded text (RFC 9051 §6.4.4: "the
matching SHOULD be case-insensitive"; Unicode case folding here, as the search fields are
folded when stored).
"""

from __future__ import annotations

import binascii
import bisect
import email
import email.policy
import quopri
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime

from mailhouse.message.searchfields import SearchFields, decode_words
from mailhouse.message.structure import MessageStructure
from mailhouse.proto.imap import search as sk
from mailhouse.proto.imap.sequence import SequenceSet


@dataclass(slots=True)
class Candidate:
    """One message as SEARCH sees it."""

    seq: int
    uid: int
    flags: frozenset[str]
    internal_date: datetime  # aware
    size: int
    modseq: int
    fields: SearchFields


@dataclass(frozen=True, slots=True)
class Content:
    """What HEADER, BODY and TEXT search: header fields decoded (name upper-cased → values),
    and the decoded text of the body's text parts, case-folded."""

    headers: dict[str, list[str]]
    header_text: str
    body_text: str


@dataclass(frozen=True, slots=True)
class Context:
    max_seq: int
    max_uid: int
    now: datetime  # for OLDER/YOUNGER (RFC 5032)
    charset: str = "UTF-8"
    saved_uids: frozenset[int] = frozenset()  # "$" (RFC 5182)


Predicate = Callable[[Candidate, Content | None], bool]


class SearchError(ValueError):
    """The search cannot be run as asked: answered NO [BADCHARSET] or similar by the caller."""

    def __init__(self, text: str, code: str) -> None:
        super().__init__(text)
        self.code = code


def any_key(key: sk.SearchKey, test: Callable[[sk.SearchKey], bool]) -> bool:
    """Whether `test` holds for any leaf of the search tree (And, Or, Not walked)."""
    if isinstance(key, sk.And):
        return any(any_key(k, test) for k in key.keys)
    if isinstance(key, sk.Or):
        return any_key(key.left, test) or any_key(key.right, test)
    if isinstance(key, sk.Not):
        return any_key(key.key, test)
    return test(key)


_FIELD_KEYS = frozenset({"FROM", "TO", "CC", "BCC", "SUBJECT"})


def required_needles(key: sk.SearchKey, charset: str) -> list[str]:
    """The case-folded strings of the FROM/TO/CC/BCC/SUBJECT keys every match must satisfy
    (those of the top-level And, not under OR or NOT): a store can narrow the search to the
    messages whose stored fields contain them all (Store.search_candidates)."""
    keys = key.keys if isinstance(key, sk.And) else (key,)
    out: list[str] = []
    for k in keys:
        if isinstance(k, sk.And):
            out += required_needles(k, charset)
        elif isinstance(k, sk.TextKey) and k.field in _FIELD_KEYS:
            needle = _text(k.value, charset)
            if needle:
                out.append(needle)
    return out


def needs_content(key: sk.SearchKey) -> bool:
    """HEADER, BODY and TEXT read the message itself."""
    return any_key(key, lambda k: isinstance(k, sk.HeaderKey) or (
        isinstance(k, sk.TextKey) and k.field in ("BODY", "TEXT")))


def compile_key(key: sk.SearchKey, context: Context) -> Predicate:
    """One predicate for the whole tree. SearchError for an unknown charset."""
    return _compile(key, context)


def _text(value: bytes, charset: str) -> str:
    try:
        return value.decode(charset).casefold()
    except LookupError:
        raise SearchError(f"Unknown charset {charset}", "BADCHARSET") from None
    except UnicodeDecodeError:
        raise SearchError(f"The search string is not {charset}", "BADCHARSET") from None


def _members(sequence_set: SequenceSet, maximum: int,
             saved: frozenset[int]) -> Callable[[int], bool]:
    if sequence_set.saved:
        return saved.__contains__
    ranges = sequence_set.resolve(maximum)
    lows = [lo for lo, _ in ranges]

    def member(number: int) -> bool:
        i = bisect.bisect_right(lows, number) - 1
        return i >= 0 and number <= ranges[i][1]

    return member


def _compile(key: sk.SearchKey, ctx: Context) -> Predicate:
    if isinstance(key, sk.All):
        return lambda m, c: True
    if isinstance(key, sk.And):
        parts = [_compile(k, ctx) for k in key.keys]
        return lambda m, c: all(p(m, c) for p in parts)
    if isinstance(key, sk.Or):
        left, right = _compile(key.left, ctx), _compile(key.right, ctx)
        return lambda m, c: left(m, c) or right(m, c)
    if isinstance(key, sk.Not):
        inner = _compile(key.key, ctx)
        return lambda m, c: not inner(m, c)
    if isinstance(key, sk.FlagKey):
        return _flag(key)
    if isinstance(key, sk.TextKey):
        return _text_key(key.field, _text(key.value, ctx.charset))
    if isinstance(key, sk.HeaderKey):
        name, needle = key.name.upper(), _text(key.value, ctx.charset)
        return lambda m, c: c is not None and any(
            needle in value for value in c.headers.get(name, ()))
    if isinstance(key, sk.DateKey):
        return _date_key(key)
    if isinstance(key, sk.SizeKey):
        size, larger = key.size, key.larger
        return lambda m, c: m.size > size if larger else m.size < size
    if isinstance(key, sk.AgeKey):
        seconds, older = key.seconds, key.older
        now = ctx.now

        def age(m: Candidate, c: Content | None) -> bool:
            elapsed = (now - m.internal_date).total_seconds()
            return elapsed >= seconds if older else elapsed < seconds

        return age
    if isinstance(key, sk.UidKey):
        member = _members(key.sequence_set, ctx.max_uid, ctx.saved_uids)
        return lambda m, c: member(m.uid)
    if isinstance(key, sk.SequenceKey):
        if key.sequence_set.saved:  # "$" holds UIDs whatever the command (RFC 5182 §2)
            saved = ctx.saved_uids
            return lambda m, c: m.uid in saved
        member = _members(key.sequence_set, ctx.max_seq, ctx.saved_uids)
        return lambda m, c: member(m.seq)
    assert isinstance(key, sk.ModSeqKey)
    modseq = key.modseq
    return lambda m, c: m.modseq >= modseq  # RFC 7162 §3.1.5


def _flag(key: sk.FlagKey) -> Predicate:
    present = key.present
    if key.flag in ("\\Recent", "NEW"):
        # \Recent is not kept (RFC 9051 removed it): no message is recent, none is new.
        return lambda m, c: not present
    if key.flag == "OLD":
        return lambda m, c: present
    exact, flag = key.flag, key.flag.casefold()  # keywords compare case-insensitively
    # The exact spelling first (system flags are stored canonical): no loop for most messages.
    return lambda m, c: (exact in m.flags or any(f.casefold() == flag for f in m.flags)) == present


def _text_key(field: str, needle: str) -> Predicate:
    if field == "BODY":
        return lambda m, c: c is not None and needle in c.body_text
    if field == "TEXT":
        return lambda m, c: c is not None and (needle in c.header_text or needle in c.body_text)
    attribute = {"FROM": "from_text", "TO": "to_text", "CC": "cc_text", "BCC": "bcc_text",
                 "SUBJECT": "subject_text"}[field]
    return lambda m, c: needle in getattr(m.fields, attribute)


def _date_key(key: sk.DateKey) -> Predicate:
    day, relation, sent = key.day, key.relation, key.sent

    def when(m: Candidate) -> date:
        # RFC 9051 §6.4.4: dates compare "disregarding time and timezone". The internal date
        # keeps its own zone; the Date header is stored in UTC, so its day is UTC's.
        if sent and m.fields.sent_date is not None:
            return datetime.fromtimestamp(m.fields.sent_date, UTC).date()
        return m.internal_date.date()

    if relation == "BEFORE":
        return lambda m, c: when(m) < day
    if relation == "ON":
        return lambda m, c: when(m) == day
    return lambda m, c: when(m) >= day


def content_of(message: bytes) -> Content:
    """Header fields and body text decoded for HEADER/BODY/TEXT. Reads the whole message:
    only for searches that need it."""
    head, _, _ = message.partition(b"\r\n\r\n")
    header_text = decode_words(head.decode("utf-8", "replace").replace("\r\n ", " ")
                               .replace("\r\n\t", " ")).casefold()
    parsed = email.message_from_bytes(message, policy=email.policy.compat32)
    headers: dict[str, list[str]] = {}
    for name, value in parsed.items():
        headers.setdefault(name.upper(), []).append(decode_words(str(value)).casefold())
    texts: list[str] = []
    for part in parsed.walk():
        if part.get_content_maintype() != "text":
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        charset = part.get_content_charset() or "us-ascii"
        try:
            texts.append(payload.decode(charset, "replace"))
        except LookupError:
            texts.append(payload.decode("utf-8", "replace"))
    return Content(headers, header_text, "\n".join(texts).casefold())


def content_from(structure: MessageStructure, message: bytes) -> Content:
    """What content_of gives, from the structure stored at delivery instead of the stdlib
    parser: the top-level header's fields, and every text part's body with its transfer
    encoding and charset undone. Several times faster; same answers for HEADER/BODY/TEXT."""
    root = structure.root
    head = message[root.header_start:root.body_start]
    head = head[:-4] if head.endswith(b"\r\n\r\n") else head.removesuffix(b"\r\n")
    unfolded = head.decode("utf-8", "replace").replace("\r\n ", " ").replace("\r\n\t", " ")
    header_text = decode_words(unfolded).casefold()
    headers: dict[str, list[str]] = {}
    for line in unfolded.split("\r\n"):
        name, colon, value = line.partition(":")
        if colon and name and " " not in name:
            headers.setdefault(name.strip().upper(), []).append(
                decode_words(value.strip()).casefold())
    texts: list[str] = []
    for part in root.walk():
        content = part.content
        if content.type != "text" or part.is_multipart:
            continue
        raw = message[part.body_start:part.body_end]
        encoding = (content.encoding or "7bit").lower()
        if encoding == "base64":
            raw = binascii.a2b_base64(b"".join(raw.split()) + b"==")
        elif encoding == "quoted-printable":
            raw = quopri.decodestring(raw)
        charset = dict(content.params).get("charset", "us-ascii")
        try:
            texts.append(raw.decode(charset, "replace"))
        except LookupError:
            texts.append(raw.decode("utf-8", "replace"))
    return Content(headers, header_text, "\n".join(texts).casefold())
