"""Properties of the streaming structure parser: any cut gives the same structure, any bytes
parse without raising into a properly nested structure, generated well-formed messages agree
with the stdlib email parser and every leaf's offsets select exactly the body written."""

from __future__ import annotations

import email
import email.policy
import itertools
import os
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailhouse.message.structure import Part, parse_message
from mailhouse.message.structure_codec import from_bytes, to_bytes
from tests.message.structure_checks import check_nesting, parse_in_pieces

SETTINGS = settings(max_examples=int(os.environ.get("MIME_EXAMPLES", "200")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

MIME_WORDS = [
    b"\r\n", b"\n", b"\r", b"\r\n\r\n", b"--b", b"--b--", b"--bb", b"--c", b"--c--", b"  ",
    b"Content-Type: multipart/mixed; boundary=b\r\n",
    b"Content-Type: multipart/digest; boundary=c\r\n",
    b"Content-Type: message/rfc822\r\n", b"Content-Type: text/plain; charset=utf-8\r\n",
    b"Subject: =?utf-8?q?caf=C3=A9?=\r\n", b"From: a <b@c>, g: d@e;\r\n", b" folded\r\n",
    b"Date: Fri, 4 Dec 2026 10:00:00 +0100\r\n", b"Date: 31 Feb 99999 99:99 -9999\r\n",
    b"Content-Disposition: attachment; filename*0*=utf-8''%C3; filename*1*=%A9\r\n",
    b"Content-Type: text/plain; a*=x-unknown'en'%FF%\r\n", b"=?zlib?b?eJwDAAAAAAE=?=",
    b"=?utf-8*en?q?x?=", b"=?unicode_escape?q?\\x?=", b"References: <a@b> <c@d\r\n",
    b"\xff\xfe", b"x", b"\x00", b'"', b"(", b"<", b"@", b":", b";", b",",
]
junk = st.lists(st.one_of(st.sampled_from(MIME_WORDS), st.binary(max_size=16)),
                max_size=60).map(b"".join)
sizes = st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=6)


@SETTINGS
@given(data=junk, sizes=sizes)
def test_any_bytes_any_cut(data: bytes, sizes: list[int]) -> None:
    whole = parse_message(data)
    check_nesting(whole, data)
    assert parse_in_pieces(data, sizes) == whole
    assert parse_in_pieces(data, [1]) == whole
    assert from_bytes(to_bytes(whole)) == whole


@SETTINGS
@given(data=st.binary(max_size=3000), sizes=sizes)
def test_random_bytes(data: bytes, sizes: list[int]) -> None:
    whole = parse_message(data)
    check_nesting(whole, data)
    assert parse_in_pieces(data, sizes) == whole


# -- generated well-formed messages ---------------------------------------------------------

@dataclass
class Node:
    mime_type: str
    body: bytes = b""
    children: list[Node] = field(default_factory=list)


text_lines = st.lists(st.text(alphabet="abc xyz", max_size=12), max_size=4)
leaves = st.builds(lambda lines, sub: Node(f"text/{sub}", "\r\n".join(lines).encode()),
                   text_lines, st.sampled_from(["plain", "html"]))
trees = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.builds(lambda kids: Node("multipart/mixed", children=kids),
                  st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda kid: Node("message/rfc822", children=[kid]), inner)),
    max_leaves=8)


def render(node: Node, counter: itertools.count[int], leaves_out: list[bytes],
           preamble: bool) -> bytes:
    if node.mime_type.startswith("multipart/"):
        boundary = f"=_b{next(counter)}"
        head = f'Content-Type: {node.mime_type}; boundary="{boundary}"\r\n\r\n'.encode()
        body = b"preamble text\r\n" if preamble else b""
        for child in node.children:
            body += f"--{boundary}\r\n".encode() + render(child, counter, leaves_out, preamble)
            body += b"\r\n"
        body += f"--{boundary}--\r\n".encode() + (b"epilogue\r\n" if preamble else b"")
        return head + body
    if node.mime_type == "message/rfc822":
        inner = render(node.children[0], counter, leaves_out, preamble)
        return b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n" + inner
    leaves_out.append(node.body)
    return f"Content-Type: {node.mime_type}\r\n\r\n".encode() + node.body


def type_tree(part: Part) -> tuple[object, ...]:
    if part.message is not None:
        return (part.content.mime_type, type_tree(part.message))
    return (part.content.mime_type, *[type_tree(c) for c in part.children])


def stdlib_tree(msg: email.message.Message) -> tuple[object, ...]:
    payload = msg.get_payload()
    kids = [k for k in payload if isinstance(k, email.message.Message)] \
        if isinstance(payload, list) else []
    if msg.get_content_type() == "message/rfc822":
        return (msg.get_content_type(), stdlib_tree(kids[0]))
    return (msg.get_content_type(), *[stdlib_tree(k) for k in kids])


def leaf_bodies(part: Part, data: bytes) -> list[bytes]:
    if part.message is not None:
        return leaf_bodies(part.message, data)
    if part.children:
        return [b for c in part.children for b in leaf_bodies(c, data)]
    return [data[part.body_start:part.body_end]]


@SETTINGS
@given(tree=trees, preamble=st.booleans(), sizes=sizes)
def test_well_formed_messages_match_stdlib(tree: Node, preamble: bool, sizes: list[int]) -> None:
    written: list[bytes] = []
    data = b"Subject: s\r\n" + render(tree, itertools.count(), written, preamble)
    structure = parse_in_pieces(data, sizes)
    check_nesting(structure, data)
    assert not structure.truncated
    stdlib = email.message_from_bytes(data, policy=email.policy.compat32)
    assert type_tree(structure.root) == stdlib_tree(stdlib)
    assert leaf_bodies(structure.root, data) == written
    for part in structure.root.walk():
        if part.content.type == "text":
            body = data[part.body_start:part.body_end]
            assert part.lines == body.count(b"\n") + (1 if body and body[-1:] != b"\n" else 0)
