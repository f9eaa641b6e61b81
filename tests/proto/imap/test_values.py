"""Modified UTF-7, mailbox-name rules, sequence sets and response encoding."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailhouse.proto.imap import mailbox, mutf7, responses
from mailhouse.proto.imap.lexer import ParseError, PolicyError
from mailhouse.proto.imap.sequence import STAR, SequenceSet


@pytest.mark.parametrize(("text", "wire"), [
    ("~peter/mail/台北/日本語", b"~peter/mail/&U,BTFw-/&ZeVnLIqe-"),  # RFC 3501 §5.1.3
    ("台北日本語", b"&U,BTF2XlZyyKng-"), ("&", b"&-"), ("a&b", b"a&-b"), ("", b""),
    ("Entwürfe", b"Entw&APw-rfe"),
    ("😀", b"&2D3eAA-"), ("\x00", b"&AAA-"),
])
def test_mutf7_examples(text: str, wire: bytes) -> None:
    assert mutf7.encode(text) == wire
    assert mutf7.decode(wire) == text


@pytest.mark.parametrize("wire", [
    b"&Jjo!", b"&U,BTFw-&ZeVnLIqe-", b"&AGE-", b"&AP-", b"&AP1-",
    b"&2D0-", b"&*-", b"\xe9", b"a\x7fb", b"&A-", b"&U,BTFw",
])
def test_mutf7_refuses(wire: bytes) -> None:
    # Unterminated, two runs back to back, printable ASCII shifted, padding bits set, odd
    # UTF-16, lone surrogate, alphabet, 8-bit, DEL, short base64.
    with pytest.raises(mutf7.MUTF7Error):
        mutf7.decode(wire)


@given(st.text())
def test_mutf7_round_trip(text: str) -> None:
    text = "".join(ch for ch in text if not 0xD800 <= ord(ch) <= 0xDFFF)
    assert mutf7.decode(mutf7.encode(text)) == text


@given(st.binary(max_size=40))
def test_mutf7_decode_raises_only_its_error_and_is_canonical(data: bytes) -> None:
    try:
        text = mutf7.decode(data)
    except mutf7.MUTF7Error:
        return
    assert mutf7.encode(text) == data  # one name, one spelling


def test_inbox_normalisation() -> None:
    assert mailbox.normalise_inbox("inbox") == "INBOX"
    assert mailbox.normalise_inbox("iNbOx/Sub") == "INBOX/Sub"
    assert mailbox.normalise_inbox("inboxes") == "inboxes"
    assert mailbox.mailbox(b"InBox", utf8=False) == "INBOX"


def test_mailbox_refusals() -> None:
    with pytest.raises(ParseError):
        mailbox.decode_name(b"a\x00b", utf8=True)
    with pytest.raises(ParseError):
        mailbox.decode_name(b"\xff", utf8=True)
    for name in ("", "a/../b", "x" * 1001, "a\x85", "./a"):
        with pytest.raises(PolicyError):
            mailbox.check_name(name)
    mailbox.check_name("a.b/c..d/..e")


def test_sequence_set_resolution() -> None:
    seq = SequenceSet(((5, 2), (STAR, STAR), (9, 9), (20, 30)))
    assert seq.resolve(12) == [(2, 5), (9, 9), (12, 12)]
    assert list(seq.iter(6)) == [2, 3, 4, 5, 6]
    assert seq.contains(12, 12) and not seq.contains(7, 12)
    assert SequenceSet(((STAR, 3),)).resolve(10) == [(3, 10)]
    assert SequenceSet(((1, STAR),)).resolve(0) == []
    assert str(SequenceSet(((1, STAR), (4, 4)))) == "1:*,4"
    assert str(SequenceSet(saved=True)) == "$"
    with pytest.raises(ValueError):
        SequenceSet(saved=True).resolve(5)


def test_sequence_set_iteration_is_lazy() -> None:
    members = SequenceSet(((1, 4_294_967_295),)).iter(4_294_967_295)
    assert next(members) == 1


def test_responses_strings() -> None:
    assert responses.string("hello") == b'"hello"'
    assert responses.string('a"b\\c') == b'"a\\"b\\\\c"'
    assert responses.string("a\r\nb") == b"{4}\r\na\r\nb"
    assert responses.string("caf\u00e9") == b"{5}\r\ncaf\xc3\xa9"
    assert responses.string("caf\u00e9", utf8=True) == b'"caf\xc3\xa9"'
    assert responses.string("x" * 2000).startswith(b"{2000}\r\n")
    assert responses.literal(b"\x00a", binary=True) == b"~{2}\r\n\x00a"
    with pytest.raises(ValueError):
        responses.literal(b"\x00")
    with pytest.raises(ValueError):
        responses.quoted("a\nb")
    assert responses.astring("INBOX") == b"INBOX"
    assert responses.astring("nil") == b'"nil"'
    assert responses.astring("a b") == b'"a b"'
    assert responses.nstring(None) == b"NIL"


def test_responses_values_and_lists() -> None:
    value: responses.Value = [responses.Atom("\\Seen"), 5, None, "x y", [b"a", ()]]
    assert responses.encode(value) == b'(\\Seen 5 NIL "x y" ("a" ()))'
    with pytest.raises(ValueError):
        responses.Atom("a b")
    with pytest.raises(ValueError):
        responses.encode(-1)
    with pytest.raises(TypeError):
        responses.encode(True)


def test_compact() -> None:
    assert responses.compact([1, 2, 3, 5]) == "1:3,5"
    assert responses.compact([9, 1, 2, 2, 10, 11, 4]) == "1:2,4,9:11"
    assert responses.compact([]) == ""
    with pytest.raises(ValueError):
        responses.compact([0])


@given(st.sets(st.integers(min_value=1, max_value=200)))
def test_compact_round_trip(numbers: set[int]) -> None:
    from mailhouse.proto.imap.lexer import Reader
    from mailhouse.proto.imap.values import sequence_set

    text = responses.compact(numbers)
    if numbers:
        parsed = sequence_set(Reader([text.encode()]), 10_000)
        assert set(parsed.iter(200)) == numbers


@given(st.one_of(st.binary(max_size=300), st.text(max_size=300)), st.booleans())
def test_encoded_strings_never_break_the_line(value: bytes | str, utf8: bool) -> None:
    # What a value turns into either has no CR/LF/NUL or is a literal with an exact count;
    # NUL is refused (only literal8 carries it).
    raw = value.encode() if isinstance(value, str) else value
    if b"\x00" in raw:
        with pytest.raises(ValueError):
            responses.string(value, utf8=utf8)
        return
    out = responses.string(value, utf8=utf8)
    if out.startswith(b"{"):
        assert out == b"{%d}\r\n" % len(raw) + raw
    else:
        assert not set(out) & {0, 10, 13}
        from mailhouse.proto.imap.lexer import Reader

        assert Reader([out]).string() == raw
