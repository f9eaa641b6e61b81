"""FETCH attributes (RFC 9051 §6.4.5 and §9 fetch-att; RFC 3516 BINARY; RFC 7162 MODSEQ)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailhouse.proto.imap.lexer import ParseError, Reader

_NAME = re.compile(rb"[A-Za-z0-9.]+")
_HEADER_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+\Z")  # RFC 5322 ftext
SIMPLE = frozenset({"ENVELOPE", "FLAGS", "INTERNALDATE", "RFC822", "RFC822.HEADER",
                    "RFC822.SIZE", "RFC822.TEXT", "BODY", "BODYSTRUCTURE", "UID", "MODSEQ"})
MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
_SECTION_TEXT = ("HEADER.FIELDS.NOT", "HEADER.FIELDS", "HEADER", "TEXT", "MIME")


@dataclass(frozen=True, slots=True)
class Section:
    """BODY[1.2.HEADER.FIELDS (From To)]: part (1, 2), text "HEADER.FIELDS", fields
    ("FROM", "TO") upper-cased. BODY[] is Section(); BINARY sections have only a part."""

    part: tuple[int, ...] = ()
    text: str | None = None
    fields: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FetchAttribute:
    """`name` is ENVELOPE, FLAGS, ..., or BODY/BINARY/BINARY.SIZE with a `section`. `peek` is
    BODY.PEEK / BINARY.PEEK. `partial` is <origin.length>."""

    name: str
    section: Section | None = None
    partial: tuple[int, int] | None = None
    peek: bool = False


def attributes(reader: Reader) -> tuple[FetchAttribute, ...]:
    """A macro, one fetch-att, or "(" fetch-att *(SP fetch-att) ")"."""
    if reader.skip(b"("):
        atts = [attribute(reader)]
        while reader.skip(b" "):
            atts.append(attribute(reader))
        reader.expect(b")")
        return tuple(atts)
    name = reader.match(_NAME, "fetch attributes").decode("ascii").upper()
    if name in MACROS and reader.peek() != 0x5B:
        return tuple(FetchAttribute(n) for n in MACROS[name])
    return (_attribute_named(reader, name),)


def attribute(reader: Reader) -> FetchAttribute:
    name = reader.match(_NAME, "a fetch attribute").decode("ascii").upper()
    return _attribute_named(reader, name)


def _attribute_named(reader: Reader, name: str) -> FetchAttribute:
    if reader.peek() != 0x5B:  # "["
        if name in SIMPLE:
            return FetchAttribute(name)
        raise ParseError(f"Unknown fetch attribute {name}")
    if name in ("BODY", "BODY.PEEK"):
        section = _section(reader)
        return FetchAttribute("BODY", section, _partial(reader), name == "BODY.PEEK")
    if name in ("BINARY", "BINARY.PEEK", "BINARY.SIZE"):
        reader.expect(b"[")
        part = _part(reader) if reader.peek() != 0x5D else ()
        reader.expect(b"]")
        section = Section(part)
        if name == "BINARY.SIZE":
            return FetchAttribute(name, section)
        return FetchAttribute("BINARY", section, _partial(reader), name == "BINARY.PEEK")
    raise ParseError(f"Unknown fetch attribute {name}")


def _part(reader: Reader) -> tuple[int, ...]:
    numbers = [reader.number(nonzero=True)]
    while reader.peek() == 0x2E and _digit_after_dot(reader):
        reader.expect(b".")
        numbers.append(reader.number(nonzero=True))
    return tuple(numbers)


def _digit_after_dot(reader: Reader) -> bool:
    return any(reader.peek_ci(b"." + bytes([d])) for d in b"0123456789")


def _section(reader: Reader) -> Section:
    reader.expect(b"[")
    if reader.skip(b"]"):
        return Section()
    part: tuple[int, ...] = ()
    if 0x30 <= reader.peek() <= 0x39:
        part = _part(reader)
        if reader.skip(b"]"):
            return Section(part)
        reader.expect(b".")
    text = next((t for t in _SECTION_TEXT if reader.peek_ci(t.encode())), None)
    if text is None or (text == "MIME" and not part):
        raise ParseError("Bad section")
    reader.expect(text.encode())
    fields: tuple[str, ...] = ()
    if text.startswith("HEADER.FIELDS"):
        reader.sp()
        reader.expect(b"(")
        names = [_field_name(reader)]
        while reader.skip(b" "):
            names.append(_field_name(reader))
        reader.expect(b")")
        fields = tuple(names)
    reader.expect(b"]")
    return Section(part, text, fields)


def _field_name(reader: Reader) -> str:
    name = reader.astring()
    if not _HEADER_NAME.match(name):
        raise ParseError("Bad header field name")
    return name.decode("ascii").upper()


def _partial(reader: Reader) -> tuple[int, int] | None:
    if not reader.skip(b"<"):
        return None
    origin = reader.number(wide=True)
    reader.expect(b".")
    length = reader.number(nonzero=True, wide=True)
    reader.expect(b">")
    return origin, length
