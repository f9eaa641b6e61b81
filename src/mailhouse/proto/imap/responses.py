"""Encoding values into server responses (RFC 9051 §4 and §9), so that no value can end a
line or smuggle a response: text with CR, LF, NUL or 8-bit octets, or anything long, goes out
as a literal, whose length the client counts instead of looking for CRLF."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime

from mailhouse.proto.imap.sequence import SequenceSet
from mailhouse.proto.imap.values import MONTHS

# Longer strings are sent as literals: quoted ones must be scanned for escapes by the client,
# and a long value is usually message data anyway.
QUOTED_MAX = 1024

Value = bytes | str | int | None | list["Value"] | tuple["Value", ...]

_ATOM = re.compile(rb'[^(){ \x00-\x1f\x7f-\xff%*"\\\]]+\Z')
_QUOTABLE = re.compile(rb"[\x01-\x09\x0b\x0c\x0e-\x7f]*\Z")  # TEXT-CHAR, 7-bit


class Atom(str):
    """A string sent as-is (a flag, a keyword, NIL-free tokens): checked on construction."""

    __slots__ = ()

    def __new__(cls, text: str) -> Atom:
        raw = text[1:] if text.startswith("\\") else text
        if not _ATOM.match(raw.encode("utf-8", "surrogateescape")):
            raise ValueError(f"not an atom: {text!r}")
        return super().__new__(cls, text)


def _bytes(value: bytes | str) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def quoted(value: bytes | str) -> bytes:
    """A quoted string; ValueError when the value cannot be one (use string())."""
    data = _bytes(value)
    if not _QUOTABLE.match(data):
        raise ValueError("value needs a literal")
    return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def literal(value: bytes | str, *, binary: bool = False) -> bytes:
    """{n}CRLF octets, or ~{n} (literal8, RFC 3516) for content that may hold NUL."""
    data = _bytes(value)
    if b"\x00" in data and not binary:
        raise ValueError("NUL needs literal8")
    return b"%s{%d}\r\n%s" % (b"~" if binary else b"", len(data), data)


def string(value: bytes | str, *, utf8: bool = False) -> bytes:
    """Quoted when that is safe and short, a literal otherwise. `utf8`: the client accepts UTF-8
    in quoted strings (IMAP4rev2, RFC 9051 §4.3; UTF8=ACCEPT)."""
    data = _bytes(value)
    if len(data) <= QUOTED_MAX:
        if _QUOTABLE.match(data):
            return quoted(data)
        if utf8 and b"\r" not in data and b"\n" not in data and b"\x00" not in data:
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                pass
            else:
                return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return literal(data)


def astring(value: bytes | str, *, utf8: bool = False) -> bytes:
    """An atom when the value is one (and not "NIL"), a string otherwise."""
    data = _bytes(value)
    if _ATOM.match(data) and data.upper() != b"NIL":
        return data
    return string(data, utf8=utf8)


def nstring(value: bytes | str | None, *, utf8: bool = False) -> bytes:
    return b"NIL" if value is None else string(value, utf8=utf8)


def encode(value: Value, *, utf8: bool = False) -> bytes:
    """Any value: None is NIL, int a number, Atom as-is, str/bytes a string, a list or tuple a
    parenthesised list of encoded values."""
    if value is None:
        return b"NIL"
    if isinstance(value, bool):
        raise TypeError("a bool is not an IMAP value")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("IMAP numbers are unsigned")
        return str(value).encode("ascii")
    if isinstance(value, Atom):
        return value.encode("ascii")
    if isinstance(value, str | bytes):
        return string(value, utf8=utf8)
    return paren(value, utf8=utf8)


def paren(items: Iterable[Value], *, utf8: bool = False) -> bytes:
    return b"(" + b" ".join(encode(item, utf8=utf8) for item in items) + b")"


def date_time(value: datetime) -> bytes:
    """date-time of RFC 9051 §9, quoted: "dd-Mon-yyyy hh:mm:ss +zzzz" (the value's own zone;
    UTC when it has none). The inverse of values.date_time."""
    offset = value.utcoffset()
    minutes = int(offset.total_seconds() // 60) if offset is not None else 0
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    return (f'"{value.day:2d}-{MONTHS[value.month - 1]}-{value.year:04d} '
            f'{value.hour:02d}:{value.minute:02d}:{value.second:02d} '
            f'{sign}{minutes // 60:02d}{minutes % 60:02d}"').encode("ascii")


def compact(numbers: Iterable[int]) -> str:
    """1,2,3,5 -> "1:3,5" (sorted, duplicates dropped); "" for none."""
    ordered = sorted(set(numbers))
    if ordered and ordered[0] < 1:
        raise ValueError("sequence numbers and UIDs start at 1")
    ranges: list[tuple[int, int]] = []
    for n in ordered:
        if ranges and n == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], n)
        else:
            ranges.append((n, n))
    return str(SequenceSet(tuple(ranges)))
