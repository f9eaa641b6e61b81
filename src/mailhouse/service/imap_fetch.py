"""FETCH responses from what was stored at delivery (issue 8, RFC 9051 §6.4.5 and §7.5.2).

Everything a FETCH asks for comes from the message's row (UID, flags, dates, size, MODSEQ),
its structure parsed once at delivery (ENVELOPE, BODYSTRUCTURE, the octet range of every
section), and byte ranges of the stored file: nothing re-parses the message, and a body is
named by its range (`ByteRange`) so the writer can stream it rather than hold it.
"""

from __future__ import annotations

import binascii
import functools
import quopri
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from mailhouse.message import imap_render
from mailhouse.message.structure import MessageStructure, find_part, section_range
from mailhouse.proto.imap.fetch import FetchAttribute, Section
from mailhouse.proto.imap.responses import date_time

_FIELD_START = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")
SEEN = "\\Seen"
# Items that set \Seen unless the mailbox is read-only (RFC 9051 §6.4.5, RFC 3501 §6.4.5).
_SETS_SEEN = frozenset({"RFC822", "RFC822.TEXT"})


@dataclass(frozen=True, slots=True)
class MessageFacts:
    """A message's row, as FETCH needs it."""

    uid: int
    flags: frozenset[str]
    internal_date: datetime  # aware: its zone is the one APPEND gave (or the server's)
    size: int
    modseq: int


@dataclass(frozen=True, slots=True)
class ByteRange:
    """Octets [start, end) of the stored message, to be written as they are read."""

    start: int
    end: int


Segment = bytes | ByteRange
ReadRange = Callable[[int, int], Awaitable[bytes]]


@dataclass(frozen=True, slots=True)
class FetchResponse:
    """One "* n FETCH (...)" response without its "* " and CRLF, as segments; `sets_seen`:
    the request implies \\Seen and the message does not have it yet."""

    segments: tuple[Segment, ...]
    sets_seen: bool


@functools.lru_cache(maxsize=4096)
def flag_list(flags: frozenset[str]) -> bytes:
    return b"(" + " ".join(sorted(flags)).encode("utf-8") + b")"


def section_name(section: Section) -> bytes:
    """The section as it is echoed in the response (RFC 9051 §7.5.2: the client's section,
    field names included)."""
    parts = [".".join(str(n) for n in section.part)] if section.part else []
    if section.text:
        parts.append(section.text)
    name = ".".join(parts)
    if section.fields:
        name += " (" + " ".join(section.fields) + ")"
    return name.encode("ascii")


def header_fields(header: bytes, fields: Sequence[str], *, exclude: bool) -> bytes:
    """The header lines (with their continuations) whose names are in `fields` (or not, with
    `exclude`), then the blank line that ends a header (RFC 9051 §6.4.5: HEADER.FIELDS)."""
    if exclude or (b"\r" in header and header.count(b"\r") != header.count(b"\r\n")):
        return header_fields_by_line(header, fields, exclude=exclude)  # .NOT, or a bare CR
    if header.startswith((b"\r\n", b"\n")):
        return b"\r\n"
    ends = [i for i in (header.find(b"\n\r\n"), header.find(b"\n\n")) if i >= 0]
    if ends:
        header = header[:min(ends) + 1]
    pattern = _fields_pattern(tuple(fields))
    if pattern is None:
        return b"\r\n"
    return b"".join(pattern.findall(header)) + b"\r\n"


_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+")
_LINE_END = rb"(?:\r\n|\n|\Z)"


@functools.lru_cache(maxsize=256)
def _fields_pattern(fields: tuple[str, ...]) -> re.Pattern[bytes] | None:
    """One expression that finds every wanted field with its continuation lines, for a
    header whose lines end in CRLF or LF (so `^` of MULTILINE starts every line): the C
    regex engine walks the header once instead of a Python loop over its lines. A name that
    no header field could have (not printable ASCII, with a colon) matches nothing."""
    names = set()
    for field in fields:
        try:
            name = field.upper().encode("ascii")
        except UnicodeEncodeError:
            continue
        if _FIELD_NAME.fullmatch(name):
            names.add(re.escape(name))
    if not names:
        return None
    return re.compile(
        rb"^(?:" + b"|".join(sorted(names)) + rb")[ \t]*:[^\r\n]*" + _LINE_END
        + rb"(?:[ \t][^\r\n]*" + _LINE_END + rb")*",
        re.IGNORECASE | re.MULTILINE)


def header_fields_by_line(header: bytes, fields: Sequence[str], *, exclude: bool) -> bytes:
    """header_fields as a walk over the lines: HEADER.FIELDS.NOT, and the reference the
    expression above is tested against."""
    wanted = {f.upper() for f in fields}
    out = bytearray()
    keep = False
    for line in header.splitlines(keepends=True):
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t"):
            if keep:
                out += line
            continue
        match = _FIELD_START.match(line)
        name = match.group(1).decode("ascii").upper() if match else ""
        keep = bool(match) and ((name in wanted) != exclude)
        if keep:
            out += line
    out += b"\r\n"
    return bytes(out)


async def fetch_response(seq: int, attributes: Sequence[FetchAttribute], facts: MessageFacts,
                         structure: MessageStructure, read: ReadRange, *, uid: bool = False,
                         utf8: bool = False, read_only: bool = False) -> FetchResponse:
    """`uid`: a UID FETCH (UID is always returned, RFC 9051 §6.4.9). `read_only`: EXAMINE,
    or a mailbox where this session may not set flags: nothing sets \\Seen."""
    items: list[list[Segment]] = []
    names = {a.name for a in attributes}
    sets_seen = not read_only and SEEN not in facts.flags and any(
        (a.name in ("BODY", "BINARY") and a.section is not None and not a.peek)
        or a.name in _SETS_SEEN for a in attributes)
    if uid and "UID" not in names:
        items.append([b"UID %d" % facts.uid])
    flags = facts.flags | {SEEN} if sets_seen else facts.flags
    for attribute in attributes:
        items.append(await _item(attribute, facts, flags, structure, read, utf8))
    if sets_seen and "FLAGS" not in names:
        items.append([b"FLAGS " + flag_list(flags)])  # RFC 9051 §6.4.5: tell the new flags
    segments: list[Segment] = [b"%d FETCH (" % seq]
    for i, item in enumerate(items):
        if i:
            segments.append(b" ")
        segments.extend(item)
    segments.append(b")")
    return FetchResponse(tuple(_joined(segments)), sets_seen)


async def _item(attribute: FetchAttribute, facts: MessageFacts, flags: frozenset[str],
                structure: MessageStructure, read: ReadRange, utf8: bool) -> list[Segment]:
    name = attribute.name
    if name == "UID":
        return [b"UID %d" % facts.uid]
    if name == "FLAGS":
        return [b"FLAGS " + flag_list(flags)]
    if name == "INTERNALDATE":
        return [b"INTERNALDATE " + date_time(facts.internal_date)]
    if name == "RFC822.SIZE":
        return [b"RFC822.SIZE %d" % facts.size]
    if name == "MODSEQ":
        return [b"MODSEQ (%d)" % facts.modseq]  # RFC 7162 §3.1.4.1
    if name == "ENVELOPE":
        return [b"ENVELOPE " + imap_render.envelope(structure.root.envelope, utf8)]
    if name == "BODYSTRUCTURE":
        return [b"BODYSTRUCTURE " + imap_render.body(structure.root, True, utf8)]
    if name == "BODY" and attribute.section is None:
        return [b"BODY " + imap_render.body(structure.root, False, utf8)]
    if name == "RFC822":
        return _range(b"RFC822", (0, structure.size), None)
    if name == "RFC822.HEADER":
        return _range(b"RFC822.HEADER", section_range(structure.root, (), "HEADER"), None)
    if name == "RFC822.TEXT":
        return _range(b"RFC822.TEXT", section_range(structure.root, (), "TEXT"), None)
    if name == "BODY":
        section = attribute.section
        assert section is not None
        label = b"BODY[" + section_name(section) + b"]"
        text = section.text or ""
        if text.startswith("HEADER.FIELDS"):
            span = section_range(structure.root, section.part, "HEADER")
            header = await read(*span) if span is not None else b""
            data = header_fields(header, section.fields, exclude=text.endswith(".NOT"))
            return _literal(label, data, attribute.partial)
        return _range(label, section_range(structure.root, section.part, text),
                      attribute.partial)
    if name in ("BINARY", "BINARY.SIZE"):
        section = attribute.section or Section()
        decoded = await binary_content(structure, section.part, read)
        if name == "BINARY.SIZE":
            return [b"BINARY.SIZE[" + section_name(section) + b"] %d" % len(decoded)]
        label = b"BINARY[" + section_name(section) + b"]"
        if attribute.partial is not None:
            origin, length = attribute.partial
            label += b"<%d>" % origin
            decoded = decoded[origin:origin + length]
        # RFC 3516 §4.3: literal8 when the content holds NUL.
        return [label + (b" ~{%d}\r\n" if b"\x00" in decoded else b" {%d}\r\n") % len(decoded)
                + decoded]
    raise ValueError(f"FETCH {name} is not served here")


class UnknownEncoding(ValueError):
    """BINARY of a part whose Content-Transfer-Encoding cannot be undone: NO [UNKNOWN-CTE]
    (RFC 3516 §4.3)."""


async def binary_content(structure: MessageStructure, path: tuple[int, ...],
                         read: ReadRange) -> bytes:
    """The decoded content of a part (RFC 3516 §4.2): its body with the transfer encoding
    removed. A missing part is empty (as BODY[] of one)."""
    part = find_part(structure.root, path) if path else structure.root
    if part is None:
        return b""
    raw = await read(part.body_start, part.body_end)
    encoding = (part.content.encoding or "7bit").lower()
    if encoding in ("7bit", "8bit", "binary") or part.is_multipart:
        return raw
    if encoding == "base64":
        return binascii.a2b_base64(b"".join(raw.split()) + b"==")
    if encoding == "quoted-printable":
        return quopri.decodestring(raw)
    raise UnknownEncoding(encoding)


def _range(label: bytes, span: tuple[int, int] | None,
           partial: tuple[int, int] | None) -> list[Segment]:
    if span is None:
        # RFC 9051 §6.4.5: a section that does not exist is an empty string.
        return [label + (b"<%d>" % partial[0] if partial else b"") + b' ""']
    start, end = span
    if partial is not None:
        origin, length = partial
        label += b"<%d>" % origin
        start, end = min(start + origin, end), min(start + origin + length, end)
    return [label + b" {%d}\r\n" % (end - start), ByteRange(start, end)]


def _literal(label: bytes, data: bytes, partial: tuple[int, int] | None) -> list[Segment]:
    if partial is not None:
        origin, length = partial
        label += b"<%d>" % origin
        data = data[origin:origin + length]
    return [label + b" {%d}\r\n" % len(data) + data]


def _joined(segments: list[Segment]) -> list[Segment]:
    """Adjacent bytes merged: fewer writes."""
    out: list[Segment] = []
    for segment in segments:
        if isinstance(segment, bytes) and out and isinstance(out[-1], bytes):
            out[-1] = out[-1] + segment
        else:
            out.append(segment)
    return out


async def materialize(response: FetchResponse, read: ReadRange) -> bytes:
    """The whole response in memory (small messages, tests); large bodies should be streamed
    range by range instead."""
    out = bytearray()
    for segment in response.segments:
        out += segment if isinstance(segment, bytes) else await read(segment.start, segment.end)
    return bytes(out)
