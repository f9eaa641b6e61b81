"""FETCH responses from the stored structure (service/imap_fetch.py), checked with a real
client library's parser (imapclient) as well as by hand."""

from __future__ import annotations

import asyncio
import re
from datetime import datetime, timedelta, timezone

import pytest
from imapclient.response_parser import parse_fetch_response

from mailhouse.message.structure import parse_message
from mailhouse.proto.imap.fetch import FetchAttribute, Section
from mailhouse.proto.imap.responses import date_time
from mailhouse.service.imap_fetch import (
    ByteRange,
    MessageFacts,
    UnknownEncoding,
    fetch_response,
    header_fields,
    materialize,
)

MESSAGE = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: bob@example.test\r\n"
    b"Subject: Report\r\n"
    b"X-Long: one\r\n two\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b1"\r\n'
    b"\r\n"
    b"preamble\r\n"
    b"--b1\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Hello Bob\r\n"
    b"--b1\r\n"
    b"Content-Type: application/octet-stream\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"AAECAwQ=\r\n"
    b"--b1--\r\n"
)
FACTS = MessageFacts(uid=42, flags=frozenset({"\\Answered"}),
                     internal_date=datetime(2026, 12, 4, 9, 5, 7,
                                            tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
                     size=len(MESSAGE), modseq=17)


async def read(start: int, end: int) -> bytes:
    return MESSAGE[start:end]


def fetch(*attributes: FetchAttribute, uid: bool = False, read_only: bool = False,
          facts: MessageFacts = FACTS) -> tuple[bytes, bool]:
    async def run() -> tuple[bytes, bool]:
        response = await fetch_response(3, attributes, facts, parse_message(MESSAGE), read,
                                        uid=uid, read_only=read_only)
        return await materialize(response, read), response.sets_seen

    return asyncio.run(run())


def parsed(line: bytes) -> dict[bytes, object]:
    """What imapclient makes of the response. Its parser takes what imaplib returns: the
    response without "* " and "FETCH", with each literal split out as (text up to it, octets)."""
    seq, rest = line.split(b" FETCH ", 1)
    text = seq + b" " + rest
    pieces: list[bytes | tuple[bytes, bytes]] = []
    while (match := re.search(rb"\{(\d+)\}\r\n", text)) is not None:
        size = int(match.group(1))
        pieces.append((text[:match.end() - 2], text[match.end():match.end() + size]))
        text = text[match.end() + size:]
    pieces.append(text)
    result = parse_fetch_response(pieces)
    ((_, data),) = result.items()
    return data  # type: ignore[no-any-return]


WHOLE = Section()


def body(section: Section = WHOLE, *, peek: bool = False,
         partial: tuple[int, int] | None = None) -> FetchAttribute:
    return FetchAttribute("BODY", section, partial, peek)


def test_internal_date_keeps_its_zone() -> None:
    assert date_time(FACTS.internal_date) == b'" 4-Dec-2026 09:05:07 -0530"'


def test_simple_items() -> None:
    line, seen = fetch(FetchAttribute("UID"), FetchAttribute("FLAGS"),
                       FetchAttribute("INTERNALDATE"), FetchAttribute("RFC822.SIZE"),
                       FetchAttribute("MODSEQ"))
    assert line == (b'3 FETCH (UID 42 FLAGS (\\Answered) INTERNALDATE " 4-Dec-2026 09:05:07 '
                    b'-0530" RFC822.SIZE %d MODSEQ (17))' % len(MESSAGE))
    assert not seen
    data = parsed(line)  # imapclient keys the result by the UID and drops it from the data
    assert data[b"RFC822.SIZE"] == len(MESSAGE) and data[b"MODSEQ"] == (17,)


def test_body_sets_seen_and_reports_the_flags_peek_does_not() -> None:
    line, seen = fetch(body())
    assert seen
    data = parsed(line)
    assert data[b"BODY[]"] == MESSAGE
    assert set(data[b"FLAGS"]) == {b"\\Answered", b"\\Seen"}  # type: ignore[call-overload]
    line, seen = fetch(body(peek=True))
    assert not seen and b"FLAGS" not in line
    _, seen = fetch(body(), read_only=True)  # EXAMINE: nothing changes
    assert not seen
    _, seen = fetch(body(), facts=MessageFacts(1, frozenset({"\\Seen"}),
                                               FACTS.internal_date, 1, 1))
    assert not seen  # already seen: no write needed


def test_uid_fetch_always_returns_the_uid() -> None:
    line, _ = fetch(FetchAttribute("FLAGS"), uid=True)
    assert line.startswith(b"3 FETCH (UID 42 FLAGS")


def test_sections_and_partials() -> None:
    line, _ = fetch(body(Section((1,)), peek=True), body(Section((2,), "MIME"), peek=True),
                    body(Section((), "TEXT"), peek=True, partial=(0, 8)),
                    body(Section((9,)), peek=True))
    data = parsed(line)
    assert data[b"BODY[1]"] == b"Hello Bob"
    assert data[b"BODY[2.MIME]"] == (b"Content-Type: application/octet-stream\r\n"
                                     b"Content-Transfer-Encoding: base64\r\n\r\n")
    assert data[b"BODY[TEXT]<0>"] == b"preamble"
    assert data[b"BODY[9]"] == b""  # no such part: an empty string


def test_header_fields_with_continuations() -> None:
    line, _ = fetch(body(Section((), "HEADER.FIELDS", ("SUBJECT", "X-LONG")), peek=True),
                    body(Section((), "HEADER.FIELDS.NOT", ("FROM", "TO", "X-LONG",
                                                           "MIME-VERSION", "CONTENT-TYPE")),
                         peek=True))
    assert b"BODY[HEADER.FIELDS (SUBJECT X-LONG)] {" in line
    data = parsed(line)
    assert data[b"BODY[HEADER.FIELDS (SUBJECT X-LONG)]"] == (
        b"Subject: Report\r\nX-Long: one\r\n two\r\n\r\n")
    assert data[b"BODY[HEADER.FIELDS.NOT (FROM TO X-LONG MIME-VERSION CONTENT-TYPE)]"] == (
        b"Subject: Report\r\n\r\n")


def test_header_fields_stops_at_the_blank_line() -> None:
    assert header_fields(b"A: 1\r\nB: 2\r\n\r\nA: body\r\n", ["A"], exclude=False) == (
        b"A: 1\r\n\r\n")


def test_envelope_and_bodystructure_parse_in_a_real_client() -> None:
    line, _ = fetch(FetchAttribute("ENVELOPE"), FetchAttribute("BODYSTRUCTURE"),
                    FetchAttribute("BODY"))
    data = parsed(line)
    envelope = data[b"ENVELOPE"]
    assert envelope.subject == b"Report"  # type: ignore[attr-defined]
    assert envelope.from_[0].mailbox == b"alice"  # type: ignore[attr-defined]
    structure = data[b"BODYSTRUCTURE"]
    assert structure.is_multipart  # type: ignore[attr-defined]
    parts, subtype = structure[0], structure[1]  # type: ignore[index]
    assert subtype == b"mixed" or subtype == b"MIXED"
    assert parts[0][0].lower() == b"text" and parts[1][0].lower() == b"application"


def test_bodies_are_ranges_to_stream() -> None:
    async def run() -> None:
        response = await fetch_response(1, [body(peek=True)], FACTS, parse_message(MESSAGE),
                                        read)
        ranges = [s for s in response.segments if isinstance(s, ByteRange)]
        assert ranges == [ByteRange(0, len(MESSAGE))]

    asyncio.run(run())


def test_binary_decodes_the_transfer_encoding() -> None:
    # RFC 3516 §4.2: the part's content with its Content-Transfer-Encoding undone; literal8
    # when it holds NUL (§4.3); BINARY sets \Seen unless .PEEK; BINARY.SIZE is the decoded size.
    out, seen = fetch(FetchAttribute("BINARY", Section((2,))))
    assert out == b"3 FETCH (BINARY[2] ~{5}\r\n\x00\x01\x02\x03\x04 FLAGS (\\Answered \\Seen))"
    assert seen
    out, seen = fetch(FetchAttribute("BINARY.SIZE", Section((2,))),
                      FetchAttribute("BINARY", Section((1,)), (6, 3), peek=True))
    assert out == b"3 FETCH (BINARY.SIZE[2] 5 BINARY[1]<6> {3}\r\nBob)"
    assert not seen


def test_binary_of_an_unknown_encoding_is_refused() -> None:
    message = (b"Content-Type: text/plain\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\n"
               b"begin 644 x\r\n")

    async def run() -> None:
        async def read_it(start: int, end: int) -> bytes:
            return message[start:end]

        with pytest.raises(UnknownEncoding):
            await fetch_response(1, (FetchAttribute("BINARY", Section((1,))),), FACTS,
                                 parse_message(message), read_it)

    asyncio.run(run())
