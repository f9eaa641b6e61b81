"""The structure parser on the RFC examples and on tricky messages: types, parameters, offsets,
line counts and section ranges."""

from __future__ import annotations

import pytest

from mailhouse.message.structure import (
    MessageStructure,
    Part,
    find_part,
    parse_message,
    section_range,
)
from tests.message.structure_checks import check_nesting, parse_in_pieces


def parse(data: bytes) -> MessageStructure:
    structure = parse_message(data)
    check_nesting(structure, data)
    for sizes in ([1], [7, 3], [4096]):
        assert parse_in_pieces(data, sizes) == structure
    return structure


def section(data: bytes, structure: MessageStructure, path: tuple[int, ...],
            text: str = "") -> bytes | None:
    span = section_range(structure.root, path, text)
    return None if span is None else data[span[0]:span[1]]


# RFC 2046 §5.1.1, with CRLF line ends.
RFC2046_EXAMPLE = (
    b"From: Nathaniel Borenstein <nsb@bellcore.com>\r\n"
    b"To: Ned Freed <ned@innosoft.com>\r\n"
    b"Date: Sun, 21 Mar 1993 23:56:48 -0800 (PST)\r\n"
    b"Subject: Sample message\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-type: multipart/mixed; boundary="simple boundary"\r\n'
    b"\r\n"
    b"This is the preamble.  It is to be ignored, though it\r\n"
    b"is a handy place for composition agents to include an\r\n"
    b"explanatory note to non-MIME conformant readers.\r\n"
    b"\r\n"
    b"--simple boundary\r\n"
    b"\r\n"
    b"This is implicitly typed plain US-ASCII text.\r\n"
    b"It does NOT end with a linebreak.\r\n"
    b"--simple boundary\r\n"
    b"Content-type: text/plain; charset=us-ascii\r\n"
    b"\r\n"
    b"This is explicitly typed plain US-ASCII text.\r\n"
    b"It DOES end with a linebreak.\r\n"
    b"\r\n"
    b"--simple boundary--\r\n"
    b"\r\n"
    b"This is the epilogue.  It is also to be ignored.\r\n")


def test_rfc2046_example() -> None:
    s = parse(RFC2046_EXAMPLE)
    root = s.root
    assert root.content.mime_type == "multipart/mixed"
    assert root.content.params == [("boundary", "simple boundary")]
    one, two = root.children
    assert one.content.mime_type == "text/plain"
    assert one.content.defaulted and one.content.params == [("charset", "us-ascii")]
    assert RFC2046_EXAMPLE[one.body_start:one.body_end] == (
        b"This is implicitly typed plain US-ASCII text.\r\nIt does NOT end with a linebreak.")
    assert one.lines == 2
    assert RFC2046_EXAMPLE[two.body_start:two.body_end] == (
        b"This is explicitly typed plain US-ASCII text.\r\nIt DOES end with a linebreak.\r\n")
    assert two.lines == 2
    assert section(RFC2046_EXAMPLE, s, (2,), "MIME") == (
        b"Content-type: text/plain; charset=us-ascii\r\n\r\n")
    assert section(RFC2046_EXAMPLE, s, (1,), "MIME") == b"\r\n"
    assert (section(RFC2046_EXAMPLE, s, (), "TEXT") or b"").startswith(b"This is the preamble.")
    assert (section(RFC2046_EXAMPLE, s, (), "HEADER") or b"").endswith(
        b'"simple boundary"\r\n\r\n')
    assert section(RFC2046_EXAMPLE, s, ()) == RFC2046_EXAMPLE
    env = root.envelope
    assert env is not None
    assert env.date == "Sun, 21 Mar 1993 23:56:48 -0800 (PST)"
    assert env.subject == "Sample message"
    assert s.search.sent_date == 732787008


def leaf(ctype: str, body: bytes, extra: bytes = b"") -> bytes:
    return b"Content-Type: " + ctype.encode() + b"\r\n" + extra + b"\r\n" + body


def multipart(boundary: str, *parts: bytes, subtype: str = "mixed") -> bytes:
    out = f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\n'.encode()
    for part in parts:
        out += f"--{boundary}\r\n".encode() + part + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def message(headers: bytes, body_part: bytes) -> bytes:
    return b"Content-Type: message/rfc822\r\n\r\n" + headers + body_part


# The part layout of RFC 9051 §6.4.5's example.
RFC9051_SECTIONS = b"From: a@b.test\r\nSubject: outer\r\n" + multipart(
    "o",
    leaf("text/plain", b"part 1"),
    leaf("application/octet-stream", b"part 2", b"Content-Transfer-Encoding: base64\r\n"),
    message(b"Subject: three\r\n", multipart(
        "t", leaf("text/plain", b"part 3.1"), leaf("application/octet-stream", b"part 3.2"))),
    multipart(
        "f",
        leaf("image/gif", b"part 4.1"),
        message(b"Subject: four-two\r\n", multipart(
            "ft",
            leaf("text/plain", b"part 4.2.1"),
            multipart("alt", leaf("text/plain", b"part 4.2.2.1"),
                      leaf("text/richtext", b"part 4.2.2.2"), subtype="alternative")))))


@pytest.mark.parametrize(("path", "text", "expected"), [
    ((1,), "", b"part 1"),
    ((2,), "", b"part 2"),
    ((3, 1), "", b"part 3.1"),
    ((3, 2), "", b"part 3.2"),
    ((4, 1), "", b"part 4.1"),
    ((4, 1), "MIME", b"Content-Type: image/gif\r\n\r\n"),
    ((4, 2, 1), "", b"part 4.2.1"),
    ((4, 2, 2, 1), "", b"part 4.2.2.1"),
    ((4, 2, 2, 2), "", b"part 4.2.2.2"),
    ((3,), "HEADER", b"Subject: three\r\nContent-Type: multipart/mixed; boundary=\"t\"\r\n\r\n"),
    ((4, 2), "HEADER",
     b"Subject: four-two\r\nContent-Type: multipart/mixed; boundary=\"ft\"\r\n\r\n"),
    ((3,), "MIME", b"Content-Type: message/rfc822\r\n\r\n"),
    ((5,), "", None),
    ((1, 1), "", None),
    ((4, 3), "", None),
    ((1,), "HEADER", None),
    ((), "MIME", None),
])
def test_rfc9051_section_numbers(path: tuple[int, ...], text: str,
                                 expected: bytes | None) -> None:
    s = parse(RFC9051_SECTIONS)
    assert section(RFC9051_SECTIONS, s, path, text) == expected


def test_rfc9051_types_and_encapsulated_text() -> None:
    data = RFC9051_SECTIONS
    s = parse(data)
    part3 = find_part(s.root, (3,))
    assert part3 is not None and part3.message is not None
    assert part3.content.mime_type == "message/rfc822"
    assert part3.message.envelope is not None and part3.message.envelope.subject == "three"
    text = section(data, s, (3,), "TEXT")
    assert text is not None and text.startswith(b"--t\r\n") and text.endswith(b"--t--\r\n")
    assert section(data, s, (3,)) == section(data, s, (3,), "HEADER") + text  # type: ignore
    assert part3.lines == (section(data, s, (3,)) or b"").count(b"\n")
    assert find_part(s.root, (2,)).content.encoding == "base64"  # type: ignore[union-attr]
    alt = find_part(s.root, (4, 2, 2))
    assert alt is not None and alt.content.mime_type == "multipart/alternative"


def test_single_part_message_has_part_one() -> None:
    data = b"Subject: x\r\n\r\nhello\r\n"
    s = parse(data)
    assert section(data, s, (1,)) == b"hello\r\n"
    assert section(data, s, (1,), "MIME") == b"Subject: x\r\n\r\n"
    assert section(data, s, (2,)) is None
    assert s.root.lines == 1
    assert s.root.content.mime_type == "text/plain"


def test_digest_parts_default_to_message_rfc822() -> None:
    data = multipart("d", b"\r\nSubject: one\r\n\r\nbody one",
                     leaf("text/plain", b"not a message"), subtype="digest")
    s = parse(data)
    first, second = s.root.children
    assert first.content.mime_type == "message/rfc822"
    assert first.content.params == []
    assert first.message is not None and first.message.envelope is not None
    assert first.message.envelope.subject == "one"
    assert data[first.message.body_start:first.message.body_end] == b"body one"
    assert second.content.mime_type == "text/plain"


def test_rfc2231_parameters_are_decoded() -> None:
    # RFC 2231 §3 and §4 examples, as continuations of Content-Type and Content-Disposition.
    data = (b"Content-Type: application/x-stuff;\r\n"
            b" title*0*=us-ascii'en'This%20is%20even%20more%20;\r\n"
            b" title*1*=%2A%2A%2Afun%2A%2A%2A%20;\r\n"
            b' title*2="isn\'t it!"\r\n'
            b"Content-Disposition: attachment;\r\n"
            b" filename*=utf-8''caf%C3%A9.txt; size=12\r\n"
            b"Content-Language: en, de\r\nContent-ID: <id@x>\r\n"
            b"Content-Description: a file\r\nContent-Location: http://x.test/a\r\n"
            b"Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==\r\n\r\nbody")
    info = parse(data).root.content
    assert info.mime_type == "application/x-stuff"
    assert info.params == [("title", "This is even more ***fun*** isn't it!")]
    assert info.disposition == "attachment"
    # The stdlib lists RFC 2231 parameters after the plain ones.
    assert sorted(info.disposition_params) == [("filename", "café.txt"), ("size", "12")]
    assert info.language == ["en", "de"]
    assert (info.id, info.description, info.location, info.md5) == (
        "<id@x>", "a file", "http://x.test/a", "Q2hlY2sgSW50ZWdyaXR5IQ==")


def test_folded_headers_are_unfolded() -> None:
    data = (b"Subject: a long\r\n\tsubject\r\n  folded\r\nContent-Type: text/html;\r\n"
            b"  charset=\"UTF-8\"\r\n\r\n<p>")
    s = parse(data)
    assert s.root.envelope is not None
    assert s.root.envelope.subject == "a long\tsubject  folded"
    assert s.root.content.mime_type == "text/html"
    assert s.root.content.params == [("charset", "UTF-8")]


def test_boundary_prefix_of_another_and_padding() -> None:
    inner = multipart("ab-c", leaf("text/plain", b"x"), leaf("text/plain", b"y"))
    data = (b'Content-Type: multipart/mixed; boundary="ab"\r\n\r\n'
            b"--ab \t\r\n" + inner + b"\r\n--ab--\r\n")
    s = parse(data)
    (child,) = s.root.children
    assert child.content.mime_type == "multipart/mixed"
    assert [data[p.body_start:p.body_end] for p in child.children] == [b"x", b"y"]


def test_boundary_with_trailing_text_is_no_delimiter() -> None:
    data = (b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n\r\n'
            b"--bx\r\n--b--trailing\r\n--b--\r\n")
    s = parse(data)
    (one,) = s.root.children
    assert data[one.body_start:one.body_end] == b"--bx\r\n--b--trailing"


def test_missing_final_boundary_ends_at_end_of_message() -> None:
    data = b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n\r\nlast\r\n'
    s = parse(data)
    (one,) = s.root.children
    assert data[one.body_start:one.body_end] == b"last\r\n"
    assert one.lines == 1


def test_outer_boundary_closes_inner_multipart() -> None:
    data = (b'Content-Type: multipart/mixed; boundary="o"\r\n\r\n--o\r\n'
            b'Content-Type: multipart/mixed; boundary="i"\r\n\r\n--i\r\n\r\ninner\r\n'
            b"--o\r\n\r\nsecond\r\n--o--\r\n")
    s = parse(data)
    inner, second = s.root.children
    assert [data[p.body_start:p.body_end] for p in inner.children] == [b"inner"]
    assert data[second.body_start:second.body_end] == b"second"
    assert data[inner.body_start:inner.body_end] == b"--i\r\n\r\ninner"


def test_empty_parts_and_headers_ended_by_a_boundary() -> None:
    data = (b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
            b"--b\r\n--b\r\nContent-Type: text/html\r\n--b\r\n"
            b"Content-Type: text/plain\r\n\r\n--b--")
    s = parse(data)
    empty, headonly, nobody = s.root.children
    for part in (empty, headonly, nobody):
        assert part.body_size == 0 and part.lines == 0
    assert headonly.content.mime_type == "text/html"
    assert data[headonly.header_start:headonly.body_start] == b"Content-Type: text/html"
    assert data[nobody.header_start:nobody.body_start] == b"Content-Type: text/plain\r\n\r\n"


def test_message_without_separator_is_all_header() -> None:
    data = b"Subject: no body\r\nFrom: a@b.test"
    s = parse(data)
    assert s.root.body_start == s.root.body_end == len(data)
    assert s.root.envelope is not None and s.root.envelope.subject == "no body"


def test_empty_message_and_no_header() -> None:
    s = parse(b"")
    assert (s.root.header_start, s.root.body_start, s.root.body_end) == (0, 0, 0)
    data = b"\r\nbody only\r\n"
    s = parse(data)
    assert s.root.body_start == 2 and s.root.lines == 1
    assert s.root.envelope is not None and s.root.envelope.subject is None


def test_bare_lf_line_ends() -> None:
    data = (b'Content-Type: multipart/mixed; boundary="b"\n\n--b\nContent-Type: text/plain\n\n'
            b"one\ntwo\n--b\n\nthree\n--b--\n")
    s = parse(data)
    one, two = s.root.children
    assert data[one.body_start:one.body_end] == b"one\ntwo"
    assert one.lines == 2
    assert data[two.body_start:two.body_end] == b"three"


def test_eight_bit_headers_and_invalid_encoded_words() -> None:
    data = ("Subject: caf\u00e9 =?bogus?q?x?= =?utf-8?b?!!!?=\r\n".encode()
            + b"From: \xff\xfe <a@b.test>\r\n\r\nx")
    s = parse(data)
    env = s.root.envelope
    assert env is not None and env.subject is not None and env.subject.startswith("café")
    assert env.from_ is not None and env.from_[0].mailbox == "a"
    assert s.search.subject_text.startswith("café")


def test_message_rfc822_with_base64_is_a_leaf() -> None:
    data = multipart("b", leaf("message/rfc822", b"U3ViamVjdDogeA==",
                               b"Content-Transfer-Encoding: base64\r\n"))
    (part,) = parse(data).root.children
    assert part.message is None
    assert part.lines == 1


def test_text_line_count_with_long_lines() -> None:
    body = b"a" * 5000 + b"\r\n" + b"b" * 3000
    data = multipart("b", leaf("text/plain", body))
    (part,) = parse(data).root.children
    assert data[part.body_start:part.body_end] == body
    assert part.lines == 2


def test_walk_visits_every_part_once() -> None:
    parts: list[Part] = parse(RFC9051_SECTIONS).root.walk()
    assert len(parts) == len({id(p) for p in parts}) == 15


def test_innermost_multipart_wins_when_a_line_fits_two_boundaries() -> None:
    # "--b--" closes the outer multipart (boundary "b") but opens a part of the inner one
    # (boundary "b--"); the inner one is asked first.
    data = (b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
            b'Content-Type: multipart/mixed; boundary="b--"\r\n\r\n--b--\r\n\r\none\r\n'
            b"--b--\r\n\r\ntwo\r\n--b----\r\n--b--\r\n")
    s = parse(data)
    (inner,) = s.root.children
    assert [data[p.body_start:p.body_end] for p in inner.children] == [b"one", b"two"]
    assert s.root.body_end == len(data)


def test_same_boundary_nested_is_innermost_first() -> None:
    data = (b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
            b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n\r\nin\r\n--b--\r\n'
            b"--b\r\n\r\nout\r\n--b--\r\n")
    s = parse(data)
    inner, second = s.root.children
    assert [data[p.body_start:p.body_end] for p in inner.children] == [b"in"]
    assert data[second.body_start:second.body_end] == b"out"
