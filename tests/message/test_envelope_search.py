"""ENVELOPE addresses (groups, routes, comments, RFC 5322 Appendix A examples) and the
SEARCH/SORT/THREAD fields: RFC 2047 decoding, sent date, msg-ids, RFC 5256 base subject,
sort and display keys."""

from __future__ import annotations

import pytest

from mailhouse.message.envelope import MISSING_HOST, Address, build_envelope, parse_addresses
from mailhouse.message.searchfields import (
    MAX_REFERENCES,
    ascii_casemap,
    base_subject,
    build_search_fields,
    decode_words,
)
from mailhouse.message.structure import parse_message

GROUP_END = Address(None, None, None, None)


def test_rfc5322_a13_group_addresses() -> None:
    assert parse_addresses(
        "A Group:Ed Jones <c@a.test>,joe@where.test,John <jdoe@one.test>;") == [
        Address(None, None, "A Group", None),
        Address("Ed Jones", None, "c", "a.test"),
        Address(None, None, "joe", "where.test"),
        Address("John", None, "jdoe", "one.test"),
        GROUP_END]
    assert parse_addresses("Undisclosed recipients:;") == [
        Address(None, None, "Undisclosed recipients", None), GROUP_END]


def test_rfc5322_a12_and_a5_names_quotes_and_comments() -> None:
    assert parse_addresses('"Joe Q. Public" <john.q.public@example.com>') == [
        Address("Joe Q. Public", None, "john.q.public", "example.com")]
    assert parse_addresses("Mary Smith <mary@x.test>, jdoe@example.org, Who? <one@y.test>") == [
        Address("Mary Smith", None, "mary", "x.test"),
        Address(None, None, "jdoe", "example.org"),
        Address("Who?", None, "one", "y.test")]
    assert parse_addresses("Pete(A nice \\) chap) <pete(his account)@silly.test(his host)>") == [
        Address("Pete", None, "pete", "silly.test")]
    assert parse_addresses("john@example.test (John Doe)") == [
        Address("John Doe", None, "john", "example.test")]


def test_raw_encoded_words_route_literal_and_missing_host() -> None:
    assert parse_addresses("=?utf-8?q?Andr=C3=A9?= <a@b.test>") == [
        Address("=?utf-8?q?Andr=C3=A9?=", None, "a", "b.test")]
    assert parse_addresses("<@r1.test,@r2.test:x@y.test>") == [
        Address(None, "@r1.test,@r2.test", "x", "y.test")]
    assert parse_addresses("x@[192.0.2.1]") == [Address(None, None, "x", "[192.0.2.1]")]
    assert parse_addresses("bob") == [Address(None, None, "bob", MISSING_HOST)]
    assert parse_addresses('"a b"@c.test') == [Address(None, None, "a b", "c.test")]
    assert parse_addresses("") is None
    assert parse_addresses(" , ,") is None
    assert parse_addresses("<>") is None
    assert parse_addresses("g: a@b.test") == [
        Address(None, None, "g", None), Address(None, None, "a", "b.test"), GROUP_END]


def test_envelope_defaults_sender_and_reply_to_to_from() -> None:
    env = build_envelope({"from": "a@b.test", "reply-to": " "})
    assert env.sender == env.reply_to == env.from_ == [Address(None, None, "a", "b.test")]
    env = build_envelope({"from": "a@b.test", "sender": "s@b.test"})
    assert env.sender == [Address(None, None, "s", "b.test")]
    empty = build_envelope({})
    assert empty.from_ is None and empty.sender is None and empty.subject is None


def test_envelope_of_parsed_message_keeps_raw_text() -> None:
    data = (b"Date: Fri, 4 Dec 2026 10:00:00 +0100\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n"
            b"From: Al <al@x.test>\r\nTo: b@y.test,\r\n c@z.test\r\nCc: d@w.test\r\n"
            b"Bcc: e@v.test\r\nIn-Reply-To: <p@x.test>\r\nMessage-ID: <m@x.test>\r\n\r\n")
    env = parse_message(data).root.envelope
    assert env is not None
    assert env.subject == "=?utf-8?q?caf=C3=A9?="
    assert env.date == "Fri, 4 Dec 2026 10:00:00 +0100"
    assert env.to == [Address(None, None, "b", "y.test"), Address(None, None, "c", "z.test")]
    assert env.cc == [Address(None, None, "d", "w.test")]
    assert env.bcc == [Address(None, None, "e", "v.test")]
    assert (env.in_reply_to, env.message_id) == ("<p@x.test>", "<m@x.test>")


@pytest.mark.parametrize(("subject", "base"), [
    ("Re: hello", "hello"),
    ("RE: Re: re: hello", "hello"),
    ("Fwd: Fw: FW: hello", "hello"),
    ("[list] Re: hello", "hello"),
    ("Re [list]: hello", "hello"),
    ("[a][b] Re: [c] hello", "hello"),
    ("hello (fwd)", "hello"),
    ("hello (fwd) (FWD)  ", "hello"),
    ("[Fwd: Re: hello]", "hello"),
    ("Re: [Fwd: hello (fwd)]", "hello"),
    ("[only a blob]", "[only a blob]"),
    ("Re:", ""),
    ("  spaced \t out  ", "spaced out"),
    ("Reply: hello", "Reply: hello"),
    ("", ""),
])
def test_rfc5256_base_subject(subject: str, base: str) -> None:
    assert base_subject(subject) == base


def test_decode_words() -> None:
    assert decode_words("=?utf-8?q?caf=C3=A9?= =?utf-8?q?_au_lait?=") == "café au lait"
    assert decode_words("=?iso-8859-1?q?caf=E9?= ok") == "café ok"
    assert decode_words("=?x-unknown?q?abc?=") == "abc"
    assert decode_words("=?utf-8?b?////?=") == "\ufffd\ufffd\ufffd"
    assert decode_words("plain") == "plain"


def test_search_fields() -> None:
    fields = build_search_fields({
        "from": "=?utf-8?q?Andr=C3=A9?= <Andre@X.test>", "to": "Zed <zed@y.test>, a@b.test",
        "cc": "g:;, carol@c.test", "subject": "=?utf-8?q?Re=3A_Caf=C3=A9?= [x] (fwd)",
        "date": "Fri, 4 Dec 2026 10:00:00 +0100", "message-id": " <m@x.test> ",
        "in-reply-to": "<p@x.test> (comment)", "references": "<a@x> <b@x>\r\n <c@x>"})
    assert fields.from_text == "andré <andre@x.test>"
    assert fields.subject_text == "re: café [x] (fwd)"
    assert fields.sent_date == 1796374800
    assert fields.message_id == "<m@x.test>"
    assert fields.in_reply_to == ["<p@x.test>"]
    assert fields.references == ["<a@x>", "<b@x>", "<c@x>"]
    assert fields.base_subject == "CAFé [X]"
    assert (fields.sort_from, fields.sort_to, fields.sort_cc) == ("ANDRE", "ZED", "CAROL")
    assert (fields.display_from, fields.display_to) == ("ANDRé", "ZED")
    no_name = build_search_fields({"from": "bob@x.test"})
    assert no_name.display_from == "BOB@X.TEST"
    assert no_name.sent_date is None and no_name.references == []


@pytest.mark.parametrize(("date", "expected"), [
    ("Thu, 01 Jan 1970 00:00:00 +0000", 0),
    ("Thu, 01 Jan 1970 01:00:00 +0100", 0),
    ("1 Jan 1970 00:00:10 -0000", 10),
    ("not a date", None),
    ("Mon, 99 Foo 2020 99:99:99 +9999", None),
    ("Fri, 31 Dec 99999 23:59:59 +0000", None),
])
def test_sent_date(date: str, expected: int | None) -> None:
    assert build_search_fields({"date": date}).sent_date == expected


def test_references_are_bounded() -> None:
    refs = " ".join(f"<r{i}@x>" for i in range(MAX_REFERENCES + 50))
    kept = build_search_fields({"references": refs}).references
    assert len(kept) == MAX_REFERENCES
    assert kept[0] == "<r0@x>" and kept[-1] == f"<r{MAX_REFERENCES + 49}@x>"


def test_ascii_casemap_touches_only_ascii() -> None:
    assert ascii_casemap("abzé[]") == "ABZé[]"
