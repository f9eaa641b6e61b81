"""FETCH responses rendered straight from a message's row and, for header items, its header's
octets: the two shapes that make most FETCH traffic (flag syncs; the header download of
Thunderbird, mutt and the others), without the general machinery of `imap_fetch` (a coroutine
per item, a structure, segments). Each renders exactly what `imap_fetch.fetch_response` says
for the same items; tests/service/imap/test_row_fetch.py holds the two side by side.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta, timezone

from mailhouse.proto.imap.fetch import FetchAttribute
from mailhouse.proto.imap.responses import date_time
from mailhouse.service.imap_fetch import MessageFacts, header_fields, section_name
from mailhouse.service.imap_fetch import flag_list as fetch_flag_list
from mailhouse.store.base import MessageFlags, MessageInfo

# Items answered from the row alone.
ROW_ITEMS = frozenset({"UID", "FLAGS", "RFC822.SIZE", "INTERNALDATE", "MODSEQ"})

# One item of a planned FETCH: (row, the header's octets) -> the item's bytes.
Render = Callable[[MessageInfo, bytes], bytes]


def facts(row: MessageInfo) -> MessageFacts:
    return MessageFacts(row.uid, row.flags, internal_date(row), row.size, row.modseq)


def internal_date(row: MessageInfo) -> datetime:
    """INTERNALDATE in the zone it was given with (RFC 9051 §2.3.3)."""
    zone = timezone(timedelta(minutes=row.internal_zone)) if row.internal_zone else UTC
    return datetime.fromtimestamp(row.internal_date, zone)


def _row_item(name: str) -> Render:
    if name == "UID":
        return lambda row, _: b"UID %d" % row.uid
    if name == "FLAGS":
        return lambda row, _: b"FLAGS " + fetch_flag_list(row.flags)
    if name == "RFC822.SIZE":
        return lambda row, _: b"RFC822.SIZE %d" % row.size
    if name == "MODSEQ":
        return lambda row, _: b"MODSEQ (%d)" % row.modseq  # RFC 7162 §3.1.4.1
    return lambda row, _: b"INTERNALDATE " + date_time(internal_date(row))


# Items a message's flags row (Store.list_flags) answers.
FLAG_ITEMS = frozenset({"UID", "FLAGS", "MODSEQ"})


def flag_renderer(names: Sequence[str], uid: bool) -> Callable[[int, MessageFlags], bytes]:
    """The response for FLAG_ITEMS, as one format made once per command."""
    parts: list[bytes] = []
    getters: list[Callable[[MessageFlags], int | bytes]] = []
    for name in (["UID"] if uid and "UID" not in names else []) + list(names):
        if name == "UID":
            parts.append(b"UID %d")
            getters.append(lambda row: row.uid)
        elif name == "FLAGS":
            parts.append(b"FLAGS %s")
            getters.append(lambda row: fetch_flag_list(row.flags))
        else:
            parts.append(b"MODSEQ (%d)")  # RFC 7162 §3.1.4.1
            getters.append(lambda row: row.modseq)
    fmt = b"%d FETCH (" + b" ".join(parts) + b")"
    if parts == [b"UID %d", b"FLAGS %s"]:  # UID FETCH 1:* (FLAGS): most of them
        return lambda seq, row: fmt % (seq, row.uid, fetch_flag_list(row.flags))
    return lambda seq, row: fmt % (seq, *[get(row) for get in getters])


def row_fetch(seq: int, names: Sequence[str], row: MessageInfo, uid: bool) -> bytes:
    """The response for items of the row alone: one message costs a few microseconds."""
    items = [b"UID %d" % row.uid] if uid and "UID" not in names else []
    for name in names:
        if name == "UID":
            items.append(b"UID %d" % row.uid)
        elif name == "FLAGS":
            items.append(b"FLAGS " + fetch_flag_list(row.flags))
        elif name == "RFC822.SIZE":
            items.append(b"RFC822.SIZE %d" % row.size)
        elif name == "MODSEQ":
            items.append(b"MODSEQ (%d)" % row.modseq)
        else:
            items.append(b"INTERNALDATE " + date_time(internal_date(row)))
    return b"%d FETCH (" % seq + b" ".join(items) + b")"


def _literal(label: bytes, data: bytes, partial: tuple[int, int] | None) -> bytes:
    if partial is not None:
        origin, length = partial
        label += b"<%d>" % origin
        data = data[origin:origin + length]
    return label + b" {%d}\r\n" % len(data) + data


def _header_item(attribute: FetchAttribute) -> Render | None:
    """RFC822.HEADER, BODY.PEEK[HEADER] and BODY.PEEK[HEADER.FIELDS[.NOT] (...)] of the top
    level; None for anything else (a part's header, an item that sets \\Seen)."""
    if attribute.name == "RFC822.HEADER":  # never sets \Seen (RFC 9051 §6.4.5)
        return lambda _, header: b"RFC822.HEADER {%d}\r\n" % len(header) + header
    section = attribute.section
    if attribute.name != "BODY" or not attribute.peek or section is None or section.part:
        return None
    label = b"BODY[" + section_name(section) + b"]"
    partial = attribute.partial
    if section.text == "HEADER":
        return lambda _, header: _literal(label, header, partial)
    if section.text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        fields, exclude = section.fields, section.text.endswith(".NOT")
        return lambda _, header: _literal(
            label, header_fields(header, fields, exclude=exclude), partial)
    return None


class HeaderPlan:
    """A FETCH of row items and top-level header items only, planned once per command."""

    __slots__ = ("_items",)

    def __init__(self, items: list[Render]) -> None:
        self._items = items

    @classmethod
    def of(cls, attributes: Sequence[FetchAttribute], uid: bool) -> HeaderPlan | None:
        names = {a.name for a in attributes}
        items: list[Render] = [_row_item("UID")] if uid and "UID" not in names else []
        for attribute in attributes:
            item = (_row_item(attribute.name) if attribute.name in ROW_ITEMS
                    else _header_item(attribute))
            if item is None:
                return None
            items.append(item)
        return cls(items)

    def render(self, seq: int, row: MessageInfo, header: bytes) -> bytes:
        """`header`: the message's header, through the blank line that ends it."""
        return b"%d FETCH (" % seq + b" ".join([item(row, header) for item in self._items]) + b")"
