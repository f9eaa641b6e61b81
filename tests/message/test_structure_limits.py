"""Every limit of the structure parser crossed: the structure stays valid, `truncated` says a
limit applied, memory and the stored blob stay bounded."""

from __future__ import annotations

import pytest

from mailhouse.message import structure as st
from mailhouse.message.envelope import MAX_ADDRESSES, parse_addresses
from mailhouse.message.mime_headers import (
    MAX_CONTENT_VALUE_CHARS,
    MAX_ENVELOPE_VALUE_CHARS,
    MAX_PARAMS,
)
from mailhouse.message.structure import StructureParser, parse_message
from mailhouse.message.structure_codec import (
    FORMAT_VERSION,
    StructureFormatError,
    from_bytes,
    to_bytes,
)
from tests.message.structure_checks import check_nesting

MIXED = b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'


def many_parts(count: int, description: bytes = b"") -> bytes:
    part = b"--b\r\nContent-Type: text/plain\r\n" + description + b"\r\nx\r\n"
    return MIXED + part * count + b"--b--\r\n"


def test_parts_past_the_limit_are_the_body_of_the_last_part() -> None:
    data = many_parts(st.MAX_PARTS + 10)
    s = parse_message(data)
    check_nesting(s, data)
    assert s.truncated
    assert len(s.root.children) == st.MAX_PARTS - 1  # the root is a part too
    last = s.root.children[-1]
    assert data[last.body_start:].startswith(b"x\r\n--b\r\n")
    assert last.body_end == len(data)


def test_parts_up_to_the_limit_are_kept() -> None:
    data = many_parts(st.MAX_PARTS - 1)
    s = parse_message(data)
    assert not s.truncated and len(s.root.children) == st.MAX_PARTS - 1


def nested(depth: int) -> bytes:
    head = b"".join(f'--b{i}\r\nContent-Type: multipart/mixed; boundary="b{i + 1}"\r\n\r\n'
                    .encode() for i in range(depth))
    tail = b"".join(f"\r\n--b{i}--".encode() for i in reversed(range(1, depth + 1)))
    return (b'Content-Type: multipart/mixed; boundary="b0"\r\n\r\n' + head
            + b"--b%d\r\n\r\nleaf" % depth + tail + b"\r\n--b0\r\n\r\nsibling\r\n--b0--\r\n")


def depth_of(part: st.Part) -> int:
    return 1 + max((depth_of(c) for c in part.children), default=0)


def test_nesting_past_the_limit_is_a_leaf_and_outer_boundaries_still_work() -> None:
    data = nested(st.MAX_DEPTH + 5)
    s = parse_message(data)
    check_nesting(s, data)
    assert s.truncated
    assert depth_of(s.root) == st.MAX_DEPTH + 1
    assert data[s.root.children[-1].body_start:s.root.children[-1].body_end] == b"sibling"
    shallow = parse_message(nested(st.MAX_DEPTH - 1))
    assert not shallow.truncated and depth_of(shallow.root) == st.MAX_DEPTH + 1


def test_message_rfc822_nesting_is_bounded() -> None:
    data = b"Content-Type: message/rfc822\r\n\r\n" * (st.MAX_DEPTH + 20) + b"\r\nend"
    s = parse_message(data)
    check_nesting(s, data)
    assert s.truncated
    count, part = 0, s.root
    while part.message is not None:
        count, part = count + 1, part.message
    assert count == st.MAX_DEPTH


def test_huge_header_counts_in_offsets_but_is_not_parsed() -> None:
    junk = b"X-Junk: " + b"y" * 100 + b"\r\n"
    data = b"From: a@b.test\r\n" + junk * 20000 + b"Subject: late\r\n\r\nbody"
    parser = StructureParser()
    biggest = 0
    for i in range(0, len(data), 65536):
        parser.feed(data[i:i + 65536])
        biggest = max(biggest, parser.buffered)
    s = parser.finish()
    assert biggest <= st.MAX_HEADER_KEEP + 65536
    assert s.truncated
    assert data[s.root.body_start:] == b"body"
    env = s.root.envelope
    assert env is not None and env.from_ is not None and env.subject is None


def test_one_huge_header_line() -> None:
    data = b"Subject: " + b"z" * (3 * st.MAX_HEADER_KEEP) + b"\r\nTo: a@b.test\r\n\r\nbody"
    s = parse_message(data)
    check_nesting(s, data)
    assert data[s.root.body_start:] == b"body"
    assert s.root.envelope is not None
    assert s.root.envelope.subject == "z" * MAX_ENVELOPE_VALUE_CHARS


def test_long_body_lines_are_never_held() -> None:
    parser = StructureParser()
    parser.feed(MIXED + b"--b\r\n\r\n")
    for _ in range(200):
        parser.feed(b"-" * 10000)
        assert parser.buffered <= st.MAX_BOUNDARY_LINE + 10000
    parser.feed(b"\r\n--b--\r\n")
    s = parser.finish()
    (part,) = s.root.children
    assert part.body_size == 2_000_000 and part.lines == 1


def test_stored_text_budget() -> None:
    description = b"Content-Description: " + b"d" * 1000 + b"\r\n"
    data = many_parts(600, description)
    s = parse_message(data)
    assert s.truncated
    kept = [p.content.description for p in s.root.children]
    assert kept[0] == "d" * 1000 and kept[-1] is None
    assert sum(len(d or "") for d in kept) <= st.MAX_STORED_CHARS
    assert all(p.content.mime_type == "text/plain" for p in s.root.children)


def test_overlong_boundary_is_ignored() -> None:
    boundary = b"q" * (st.MAX_BOUNDARY + 1)
    data = (b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n\r\n--'
            + boundary + b"\r\n\r\nx\r\n--" + boundary + b"--\r\n")
    s = parse_message(data)
    assert s.root.children == [] and s.root.body_end == len(data)


def test_field_and_list_limits() -> None:
    params = "".join(f"; p{i}=v" for i in range(MAX_PARAMS + 5))
    data = (f"Content-Type: text/plain{params}\r\nContent-ID: <{'i' * 5000}>\r\n\r\n").encode()
    info = parse_message(data).root.content
    assert len(info.params) == MAX_PARAMS
    assert info.id is not None and len(info.id) == MAX_CONTENT_VALUE_CHARS
    many = ", ".join(f"u{i}@x.test" for i in range(MAX_ADDRESSES + 10))
    assert len(parse_addresses(many) or []) == MAX_ADDRESSES
    grouped = "g: " + many + ";"
    out = parse_addresses(grouped) or []
    assert len(out) == MAX_ADDRESSES and out[-1].is_group_end


def test_blob_is_bounded_for_hostile_messages() -> None:
    description = b"Content-Description: " + b"d" * 1000 + b"\r\n"
    s = parse_message(many_parts(10_000, description))
    blob = to_bytes(s)
    assert len(blob) < 512 * 1024
    assert from_bytes(blob) == s


@pytest.mark.parametrize("blob", [
    b"", b"not json", b"[]", b'{"v": 0}', b'{"v": %d}' % FORMAT_VERSION,
    b'{"v": %d, "r": {}, "s": [], "z": 0, "t": 0}' % FORMAT_VERSION, b"\xff",
])
def test_other_versions_and_damage_ask_for_a_reparse(blob: bytes) -> None:
    with pytest.raises(StructureFormatError):
        from_bytes(blob)
