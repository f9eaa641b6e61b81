"""Search keys as a tree (RFC 9051 §6.4.4 and §9 search-key, RFC 7162 MODSEQ, RFC 5032
OLDER/YOUNGER). Juxtaposed keys are an And; a parenthesised group is an And of its keys."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

from mailhouse.proto.imap import values
from mailhouse.proto.imap.lexer import ParseError, Reader
from mailhouse.proto.imap.sequence import SequenceSet


@dataclass(frozen=True, slots=True)
class And:
    keys: tuple[SearchKey, ...]


@dataclass(frozen=True, slots=True)
class Or:
    left: SearchKey
    right: SearchKey


@dataclass(frozen=True, slots=True)
class Not:
    key: SearchKey


@dataclass(frozen=True, slots=True)
class All:
    pass


@dataclass(frozen=True, slots=True)
class FlagKey:
    """ANSWERED/UNANSWERED... (system flags, canonical case), KEYWORD/UNKEYWORD, and NEW, OLD,
    RECENT as the pseudo-flags "NEW", "OLD", "\\Recent"."""

    flag: str
    present: bool = True


@dataclass(frozen=True, slots=True)
class TextKey:
    """BCC, BODY, CC, FROM, SUBJECT, TEXT, TO: substring `value` (in the command's charset)."""

    field: str
    value: bytes


@dataclass(frozen=True, slots=True)
class HeaderKey:
    name: str
    value: bytes


@dataclass(frozen=True, slots=True)
class DateKey:
    """BEFORE/ON/SINCE (`sent` False: INTERNALDATE) and SENTBEFORE/SENTON/SENTSINCE."""

    relation: str  # "BEFORE", "ON", "SINCE"
    day: date
    sent: bool = False


@dataclass(frozen=True, slots=True)
class SizeKey:
    larger: bool  # LARGER n, else SMALLER n
    size: int


@dataclass(frozen=True, slots=True)
class AgeKey:
    """RFC 5032 OLDER/YOUNGER seconds."""

    older: bool
    seconds: int


@dataclass(frozen=True, slots=True)
class UidKey:
    sequence_set: SequenceSet


@dataclass(frozen=True, slots=True)
class SequenceKey:
    sequence_set: SequenceSet


@dataclass(frozen=True, slots=True)
class ModSeqKey:
    """RFC 7162 §3.1.5: MODSEQ ["/flags/\\seen" priv|shared|all] value."""

    modseq: int
    entry: str | None = None
    entry_type: str | None = None


SearchKey = (And | Or | Not | All | FlagKey | TextKey | HeaderKey | DateKey | SizeKey | AgeKey
             | UidKey | SequenceKey | ModSeqKey)

_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True), "DELETED": ("\\Deleted", True),
    "DRAFT": ("\\Draft", True), "FLAGGED": ("\\Flagged", True), "SEEN": ("\\Seen", True),
    "UNANSWERED": ("\\Answered", False), "UNDELETED": ("\\Deleted", False),
    "UNDRAFT": ("\\Draft", False), "UNFLAGGED": ("\\Flagged", False),
    "UNSEEN": ("\\Seen", False), "RECENT": ("\\Recent", True), "NEW": ("NEW", True),
    "OLD": ("OLD", True),
}
_TEXT_KEYS = frozenset({"BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"})
_DATE_KEYS = {"BEFORE": ("BEFORE", False), "ON": ("ON", False), "SINCE": ("SINCE", False),
              "SENTBEFORE": ("BEFORE", True), "SENTON": ("ON", True),
              "SENTSINCE": ("SINCE", True)}
_ARGUMENT_KEYS = _TEXT_KEYS | _DATE_KEYS.keys() | {
    "KEYWORD", "UNKEYWORD", "HEADER", "LARGER", "SMALLER", "OLDER", "YOUNGER", "UID", "MODSEQ"}
_ENTRY = re.compile(r"/flags/\\?[^\x00-\x20\x7f-\U0010ffff(){%*\"\\\]]+\Z")
_HEADER_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+\Z")  # RFC 5322 ftext


class SearchParser:
    """Recursive descent with an explicit depth bound (`max_depth`): nesting by parentheses,
    NOT and OR all count, so no input reaches Python's recursion limit."""

    def __init__(self, reader: Reader, max_depth: int, max_sequence_items: int) -> None:
        self.reader = reader
        self.max_depth = max_depth
        self.max_items = max_sequence_items

    def keys(self) -> SearchKey:
        """search-key *(SP search-key), as one key (an And when there are several)."""
        keys = [self.key(1)]
        while self.reader.skip(b" "):
            keys.append(self.key(1))
        return keys[0] if len(keys) == 1 else And(tuple(keys))

    def key(self, depth: int) -> SearchKey:
        if depth > self.max_depth:
            raise ParseError("Search keys nested too deeply", "LIMIT")
        r = self.reader
        if r.skip(b"("):
            keys = [self.key(depth + 1)]
            while r.skip(b" "):
                keys.append(self.key(depth + 1))
            r.expect(b")")
            return keys[0] if len(keys) == 1 else And(tuple(keys))
        c = r.peek()
        if c == 0x2A or c == 0x24 or 0x30 <= c <= 0x39:  # "*", "$", digit
            return SequenceKey(values.sequence_set(r, self.max_items))
        name = r.word()
        if name in _FLAG_KEYS:
            flag, present = _FLAG_KEYS[name]
            return FlagKey(flag, present)
        if name == "ALL":
            return All()
        if name == "NOT":
            r.sp()
            return Not(self.key(depth + 1))
        if name == "OR":
            r.sp()
            left = self.key(depth + 1)
            r.sp()
            return Or(left, self.key(depth + 1))
        if name not in _ARGUMENT_KEYS:
            raise ParseError(f"Unknown search key {name}")
        r.sp()
        return self._with_argument(name)

    def _with_argument(self, name: str) -> SearchKey:
        r = self.reader
        if name in _TEXT_KEYS:
            return TextKey(name, r.astring())
        if name in _DATE_KEYS:
            relation, sent = _DATE_KEYS[name]
            return DateKey(relation, values.search_date(r), sent)
        if name in ("KEYWORD", "UNKEYWORD"):
            if r.peek() == 0x5C:
                raise ParseError("KEYWORD takes a keyword, not a system flag")
            return FlagKey(r.atom("a keyword").decode("ascii"), name == "KEYWORD")
        if name == "HEADER":
            field = r.astring()
            if not _HEADER_NAME.match(field):
                raise ParseError("Bad header field name")
            r.sp()
            return HeaderKey(field.decode("ascii"), r.astring())
        if name in ("LARGER", "SMALLER"):
            return SizeKey(name == "LARGER", r.number(wide=True))
        if name in ("OLDER", "YOUNGER"):
            return AgeKey(name == "OLDER", r.number(nonzero=True))
        if name == "UID":
            return UidKey(values.sequence_set(r, self.max_items))
        return self._modseq()  # MODSEQ

    def _modseq(self) -> ModSeqKey:
        r = self.reader
        entry = entry_type = None
        if r.peek() == 0x22:
            raw = r.quoted()
            try:
                entry = raw.decode("ascii")
            except UnicodeDecodeError as exc:
                raise ParseError("Bad MODSEQ entry name") from exc
            if not _ENTRY.match(entry):
                raise ParseError("Bad MODSEQ entry name")
            r.sp()
            entry_type = r.word()
            if entry_type not in ("PRIV", "SHARED", "ALL"):
                raise ParseError("Bad MODSEQ entry type")
            r.sp()
        return ModSeqKey(r.number(wide=True), entry, entry_type.lower() if entry_type else None)
