"""Grammar of the values shared by several commands: sequence sets, dates, flags (RFC 9051 §9)."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone

from mailhouse.proto.imap.lexer import MAX_NUMBER, ParseError, Reader
from mailhouse.proto.imap.sequence import STAR, SequenceSet

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTHS = {m.upper(): i for i, m in enumerate(MONTHS, 1)}
_DATE = re.compile(rb"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})\Z")
_DATE_TIME = re.compile(
    rb"([ 0-9][0-9])-([A-Za-z]{3})-([0-9]{4}) "
    rb"([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{2})([0-9]{2})\Z"
)
SYSTEM_FLAGS = {f.upper(): f for f in
                ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", "\\Recent")}


def _seq_number(reader: Reader) -> int:
    if reader.skip(b"*"):
        return STAR
    value = reader.number(nonzero=True)
    if value > MAX_NUMBER:  # pragma: no cover - number() bounds it already
        raise ParseError("Number out of range")
    return value


def sequence_set(reader: Reader, max_items: int) -> SequenceSet:
    """sequence-set, or "$" alone (RFC 5182 §2)."""
    if reader.skip(b"$"):
        return SequenceSet(saved=True)
    ranges: list[tuple[int, int]] = []
    while True:
        if len(ranges) >= max_items:
            raise ParseError("Too many items in a sequence set", "LIMIT")
        low = _seq_number(reader)
        high = _seq_number(reader) if reader.skip(b":") else low
        ranges.append((low, high))
        if not reader.skip(b","):
            return SequenceSet(tuple(ranges))


def _date_octets(reader: Reader) -> bytes:
    if reader.peek() == 0x22:
        return reader.quoted()
    return reader.atom("a date")


def search_date(reader: Reader) -> date:
    """date: date-text or DQUOTE date-text DQUOTE, e.g. 1-Feb-1994."""
    m = _DATE.match(_date_octets(reader))
    month = _MONTHS.get(m.group(2).decode().upper()) if m else None
    if not m or month is None:
        raise ParseError("Bad date")
    try:
        return date(int(m.group(3)), month, int(m.group(1)))
    except ValueError as exc:
        raise ParseError("Bad date") from exc


def date_time(reader: Reader) -> datetime:
    """date-time: "dd-Mon-yyyy hh:mm:ss +zzzz" (APPEND's INTERNALDATE)."""
    if reader.peek() != 0x22:
        raise ParseError("Expected a quoted date-time")
    m = _DATE_TIME.match(reader.quoted())
    month = _MONTHS.get(m.group(2).decode().upper()) if m else None
    if not m or month is None:
        raise ParseError("Bad date-time")
    hours, minutes = int(m.group(8)), int(m.group(9))
    if minutes > 59 or hours > 23:
        raise ParseError("Bad date-time zone")
    offset = timedelta(hours=hours, minutes=minutes) * (-1 if m.group(7) == b"-" else 1)
    try:
        return datetime(int(m.group(3)), month, int(m.group(1).strip()), int(m.group(4)),
                        int(m.group(5)), int(m.group(6)), tzinfo=timezone(offset))
    except ValueError as exc:
        raise ParseError("Bad date-time") from exc


def flag(reader: Reader) -> str:
    """flag: a system flag (canonical case), "\\" atom (flag-extension) or a keyword atom."""
    if reader.skip(b"\\"):
        name = "\\" + reader.atom("a flag").decode("ascii")
        return SYSTEM_FLAGS.get(name.upper(), name)
    return reader.atom("a flag").decode("ascii")


def flag_list(reader: Reader) -> tuple[str, ...]:
    """flag-list: "(" [flag *(SP flag)] ")"."""
    reader.expect(b"(")
    flags: list[str] = []
    if not reader.skip(b")"):
        flags.append(flag(reader))
        while reader.skip(b" "):
            flags.append(flag(reader))
        reader.expect(b")")
    return tuple(flags)


def store_flags(reader: Reader) -> tuple[str, ...]:
    """STORE's flags: a flag-list, or flags separated by SP without parentheses."""
    if reader.peek() == 0x28:
        return flag_list(reader)
    flags = [flag(reader)]
    while reader.skip(b" "):
        flags.append(flag(reader))
    return tuple(flags)
