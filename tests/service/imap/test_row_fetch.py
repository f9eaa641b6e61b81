"""The planned FETCH paths (service/imap/row_fetch.py) say exactly what the general one
(service/imap_fetch.fetch_response) says, and the header-field expression finds exactly the
lines the line walk finds."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from mailhouse.message.searchfields import build_search_fields
from mailhouse.message.structure import MessageStructure, Part
from mailhouse.proto.imap.fetch import FetchAttribute, Section
from mailhouse.service.imap.messages import header_end
from mailhouse.service.imap.row_fetch import HeaderPlan, facts, flag_renderer, row_fetch
from mailhouse.service.imap_fetch import (
    fetch_response,
    header_fields,
    header_fields_by_line,
    materialize,
)
from mailhouse.store.base import MessageFlags, MessageInfo

NAMES = ["From", "To", "Subject", "X-A", "x-a", "Cc", "Date", "Message-ID", "a b", "Ünï", "X:Y"]
line_piece = st.sampled_from([
    b"From: a\r\n", b"to:b\r\n", b"Subject : s\r\n", b" cont\r\n", b"\tcont\r\n", b"X-A: 1\n",
    b"X-A:2\r", b"Cc: c", b"\r\n", b"\n", b"\r", b"garbage\r\n", b" \r\n", b"Date: d\r\n",
    b"From x\r\n", b"X-From: no\r\n", b"Message-ID: <m>\r\n", b"\x00\r\n",
])


@settings(max_examples=400, deadline=None)
@given(st.lists(line_piece, max_size=14).map(b"".join), st.lists(st.sampled_from(NAMES)))
def test_the_field_expression_finds_what_the_line_walk_finds(
        header: bytes, fields: list[str]) -> None:
    assert header_fields(header, fields, exclude=False) == header_fields_by_line(
        header, fields, exclude=False)


@given(st.binary(max_size=200), st.lists(st.sampled_from(NAMES), min_size=1))
def test_the_field_expression_on_any_octets(header: bytes, fields: list[str]) -> None:
    assert header_fields(header, fields, exclude=False) == header_fields_by_line(
        header, fields, exclude=False)


def test_header_fields_not_still_walks_lines() -> None:
    header = b"From: a\r\nX-A: 1\r\n  more\r\nTo: b\r\n\r\nFrom: body\r\n"
    assert header_fields(header, ["X-A"], exclude=True) == b"From: a\r\nTo: b\r\n\r\n"


MESSAGE = (b"From: Alice <a@example.test>\r\nTo: b@example.test\r\nSubject: Hi\r\n"
           b"X-Long: one\r\n two\r\n\r\nBody text\r\n")
ROW = MessageInfo(7, 1, 42, frozenset({"\\Seen", "$Junk"}), 1_767_225_600.0, len(MESSAGE), 9,
                  "b", 120)
HEADERS = Section(text="HEADER.FIELDS", fields=("FROM", "SUBJECT", "X-LONG"))
PLANS: list[tuple[FetchAttribute, ...]] = [
    (FetchAttribute("UID"), FetchAttribute("BODY", HEADERS, peek=True)),
    (FetchAttribute("FLAGS"), FetchAttribute("RFC822.SIZE"), FetchAttribute("INTERNALDATE"),
     FetchAttribute("MODSEQ"), FetchAttribute("BODY", Section(text="HEADER"), peek=True)),
    (FetchAttribute("RFC822.HEADER"),),
    (FetchAttribute("BODY", Section(text="HEADER.FIELDS.NOT", fields=("TO",)), (3, 20),
                    peek=True),),
    (FetchAttribute("BODY", Section(text="HEADER"), (5, 1000), peek=True), FetchAttribute("UID")),
]


def test_a_header_plan_says_what_fetch_response_says() -> None:
    end = header_end(MESSAGE)
    assert end is not None
    structure = MessageStructure(Part(0, end, ROW.size), build_search_fields({}), ROW.size)

    async def read(start: int, stop: int) -> bytes:
        return MESSAGE[start:stop]

    for attributes in PLANS:
        for uid in (False, True):
            plan = HeaderPlan.of(attributes, uid)
            assert plan is not None, attributes
            general = asyncio.run(fetch_response(3, attributes, facts(ROW), structure, read,
                                                 uid=uid))
            assert not general.sets_seen
            assert plan.render(3, ROW, MESSAGE[:end]) == asyncio.run(
                materialize(general, read)), attributes


def test_items_outside_a_plan_take_the_general_path() -> None:
    for attributes in [
        (FetchAttribute("BODY", Section(text="HEADER")),),  # not PEEK: sets \Seen
        (FetchAttribute("BODY", Section(part=(1,), text="HEADER"), peek=True),),
        (FetchAttribute("ENVELOPE"),),
        (FetchAttribute("BODY", Section(), peek=True),),
        (FetchAttribute("BODY", Section(text="TEXT"), peek=True),),
    ]:
        assert HeaderPlan.of(attributes, True) is None


def test_the_flag_renderer_says_what_row_fetch_says() -> None:
    flags = MessageFlags(ROW.uid, ROW.flags, ROW.modseq)
    for names in (["FLAGS"], ["UID", "FLAGS"], ["FLAGS", "UID"], ["MODSEQ"],
                  ["FLAGS", "MODSEQ"], ["UID"], ["MODSEQ", "FLAGS", "UID"]):
        for uid in (False, True):
            assert flag_renderer(names, uid)(5, flags) == row_fetch(5, names, ROW, uid)
