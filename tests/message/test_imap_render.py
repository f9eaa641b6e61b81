"""ENVELOPE / BODY / BODYSTRUCTURE text: quoting, literals, UTF-8, RFC 2231 re-encoding, and a
reader of IMAP values that takes every rendered structure back."""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailhouse.message import imap_render as render
from mailhouse.message.envelope import Address, Envelope
from mailhouse.message.structure import parse_message
from mailhouse.proto.imap.responses import nstring
from tests.message.test_structure import RFC2046_EXAMPLE, RFC9051_SECTIONS
from tests.message.test_structure_properties import junk

Value = str | int | None | list["Value"]
_ATOM = re.compile(rb"[^\s()\"{]+")


def read(data: bytes) -> Value:
    """One IMAP value (NIL, number, quoted, literal, list); the whole input must be used."""
    value, end = _read(data, 0)
    assert end == len(data), data[end:]
    return value


def _read(data: bytes, i: int) -> tuple[Value, int]:
    c = data[i:i + 1]
    if c == b"(":
        items: list[Value] = []
        i += 1
        while data[i:i + 1] != b")":
            if data[i:i + 1] == b" ":
                i += 1
            item, i = _read(data, i)
            items.append(item)
        return items, i + 1
    if c == b'"':
        out = bytearray()
        i += 1
        while data[i:i + 1] != b'"':
            if data[i:i + 1] == b"\\":
                i += 1
            assert data[i:i + 1] not in (b"\r", b"\n", b"\x00")
            out += data[i:i + 1]
            i += 1
        return out.decode(), i + 1
    if c == b"{":
        close = data.index(b"}\r\n", i)
        size = int(data[i + 1:close])
        start = close + 3
        assert b"\x00" not in data[start:start + size]
        return data[start:start + size].decode(), start + size
    match = _ATOM.match(data, i)
    assert match, data[i:]
    atom = match.group()
    return (None if atom == b"NIL" else int(atom)), match.end()


def test_rfc2046_bodystructure_and_envelope() -> None:
    s = parse_message(RFC2046_EXAMPLE)
    assert render.body(s.root) == (
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 80 2 NIL NIL NIL NIL)'
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 78 2 NIL NIL NIL NIL)'
        b' "mixed" ("boundary" "simple boundary") NIL NIL NIL)')
    assert render.envelope(s.root.envelope) == (
        b'("Sun, 21 Mar 1993 23:56:48 -0800 (PST)" "Sample message"'
        b' (("Nathaniel Borenstein" NIL "nsb" "bellcore.com"))'
        b' (("Nathaniel Borenstein" NIL "nsb" "bellcore.com"))'
        b' (("Nathaniel Borenstein" NIL "nsb" "bellcore.com"))'
        b' (("Ned Freed" NIL "ned" "innosoft.com")) NIL NIL NIL NIL)')


def test_message_rfc822_carries_envelope_body_and_lines() -> None:
    s = parse_message(RFC9051_SECTIONS)
    tree = read(render.body(s.root, extensible=False))
    assert isinstance(tree, list)
    part3 = tree[2]
    assert isinstance(part3, list) and part3[:2] == ["message", "rfc822"]
    envelope, inner, lines = part3[7:10]
    assert isinstance(envelope, list) and envelope[1] == "three"
    assert isinstance(inner, list) and inner[-1] == "mixed"
    assert lines == 12


def test_strings_quoted_or_literal() -> None:
    assert render.istring(None) == b"NIL"
    assert render.istring('a "b" \\c') == b'"a \\"b\\" \\\\c"'
    assert render.istring("caf\u00e9") == b"{5}\r\ncaf\xc3\xa9"
    assert render.istring("caf\u00e9", utf8=True) == b'"caf\xc3\xa9"'
    assert render.istring("a\rb") == b"{3}\r\na\rb"
    assert render.istring("a\x00b") == b'"ab"'
    assert render.istring("x" * 2000).startswith(b"{2000}\r\n")


def test_groups_and_empty_envelope() -> None:
    env = Envelope(to=[Address(None, None, "g", None), Address("n", None, "m", "h"),
                       Address(None, None, None, None)])
    assert render.envelope(env) == (
        b'(NIL NIL NIL NIL NIL ((NIL NIL "g" NIL)("n" NIL "m" "h")(NIL NIL NIL NIL))'
        b" NIL NIL NIL NIL)")
    assert render.envelope(None) == b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"


def test_parameters_disposition_language() -> None:
    data = (b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Disposition: attachment; filename*=utf-8''caf%C3%A9.txt\r\n"
            b"Content-Language: en, de\r\nContent-Location: loc\r\n\r\nx")
    root = parse_message(data).root
    assert render.body(root) == (
        b'("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 1 1 NIL'
        b' ("attachment" ("filename*" "utf-8\'\'caf%C3%A9.txt")) ("en" "de") "loc")')
    assert b'("filename" "caf\xc3\xa9.txt")' in render.body(root, utf8=True)


def test_empty_multipart_and_unparsed_message() -> None:
    data = b"Content-Type: multipart/mixed\r\n\r\nno boundary\r\n"
    assert render.body(parse_message(data).root, extensible=False) == (
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0) "mixed")')
    data = b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\nAAAA"
    assert render.body(parse_message(data).root, extensible=False) == (
        b'("message" "rfc822" NIL NIL NIL "base64" 4)')


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=junk, utf8=st.booleans(), extensible=st.booleans())
def test_every_rendering_reads_back(data: bytes, utf8: bool, extensible: bool) -> None:
    s = parse_message(data)
    assert isinstance(read(render.body(s.root, extensible, utf8)), list)
    env = read(render.envelope(s.root.envelope, utf8))
    assert isinstance(env, list) and len(env) == 10
    assert s.root.envelope is not None
    subject = s.root.envelope.subject
    assert env[1] == (None if subject is None else subject.replace("\x00", ""))


@given(st.text(max_size=1100), st.booleans())
def test_istring_fast_path_says_what_nstring_says(value: str, utf8: bool) -> None:
    # A plain value skips the general path: the bytes must be the same either way.
    assert render.istring(value, utf8) == nstring(
        value.replace("\x00", "").encode("utf-8", errors="replace"), utf8=utf8)
