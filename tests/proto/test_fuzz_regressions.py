"""Inputs that property tests or fuzzing found to break a core or a grammar, each kept as a
regression test (docs/fuzzing.md lists how each was found)."""

from __future__ import annotations

import pytest

from mailhouse.model import Address, AddressError
from mailhouse.proto.smtp import events as ev
from mailhouse.proto.smtp.grammar import ParseError, parse_bdat
from mailhouse.proto.smtp.replies import Capabilities
from tests.proto.smtp_driver import Driver, codes


def session() -> Driver:
    d = Driver.new()
    d.core.data_to_send()
    d.feed(b"EHLO client.test\r\n")
    return d


# str.isdigit() is true of "²", "٣" (Arabic-Indic three) and other Unicode digits that int()
# refuses: the check passed, then int() raised ValueError out of the core (a crashed session).
@pytest.mark.parametrize("number", ["\u00b2", "\u0663", "1\u00b2"])
def test_unicode_digits_in_bdat_size(number: str) -> None:
    with pytest.raises(ParseError):
        parse_bdat(number)
    d = session()
    out = d.feed(b"BDAT " + number.encode() + b"\r\n")
    assert codes(out) == [501] and d.closed  # the octet count is unknown: the stream is lost


@pytest.mark.parametrize("number", ["\u00b2", "\u0663"])
def test_unicode_digits_in_mail_size(number: str) -> None:
    d = session()
    out = d.feed(b"MAIL FROM:<a@sender.test> SIZE=" + number.encode() + b"\r\n")
    assert out == b"501 5.5.4 Bad SIZE parameter\r\n" and not d.closed


def test_unicode_digits_in_a_remote_size_announcement() -> None:
    assert Capabilities.from_ehlo(["mx", "SIZE \u00b2"]).size == 0


# Address literals were not checked at all: "a@[x y]" (a space) and "a@[\u2028]" were
# addresses. Now RFC 5321 §4.1.3's syntax; and no control or line-separator character anywhere.
@pytest.mark.parametrize("text", ["a@[x y]", "a@[\u2028]", "a@[]", "a@[1.2.3]", "a@[:x]",
                                  "a\u0085b@example.test", "a@example.test\u2028",
                                  "a@example.test\x1f", '"a\x7fb"@example.test',
                                  "x@ [\ufffd]"])  # atheris: a literal behind a space
def test_addresses_refused(text: str) -> None:
    with pytest.raises(AddressError):
        Address.parse(text, utf8=True)


@pytest.mark.parametrize("text", ["a@[192.0.2.1]", "a@[IPv6:2001:db8::1]", "a@[x-tag:abc]"])
def test_address_literals_accepted(text: str) -> None:
    assert str(Address.parse(text)) == text.lower()


ENVELOPE = b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<bob@example.test>\r\n"


def test_bdat_content_ending_in_a_bare_cr_is_refused() -> None:
    # atheris (smtp_server): "BDAT 1 LAST" with the octet CR was stored as a message. A CR
    # waiting for its LF at the end of content is a bare CR, like any other (SMTP smuggling).
    d = session()
    out = d.feed(ENVELOPE + b"BDAT 4\r\nab\r\nBDAT 1 LAST\r\n\r")
    assert codes(out)[-1] == 521 and d.closed and d.messages == []
    d = session()  # the same CR followed by its LF in the next chunk is a line ending
    out = d.feed(ENVELOPE + b"BDAT 3\r\nab\rBDAT 1 LAST\r\n\n")
    assert codes(out)[-1] == 250 and d.messages == [b"ab\r\n"]


def test_one_data_aborted_per_message() -> None:
    # atheris (smtp_server): a message over the size limit, then a bare LF in it, got two
    # DataAborted notices (the size one, then the bare-newline one).
    d = Driver.new(max_message_size=10)
    d.core.data_to_send()
    d.feed(b"EHLO c\r\n" + ENVELOPE + b"DATA\r\n")
    d.feed(b"x" * 20 + b"\r\n")
    out = d.feed(b"a\nb\r\n")
    assert codes(out) == [521] and d.closed
    assert sum(isinstance(e, ev.DataAborted) for e in d.events) == 1
