"""Inputs that property tests or fuzzing found to break a core or a grammar, each kept as a
regression test (docs/fuzzing.md lists how each was found)."""

from __future__ import annotations

import pytest

from mailhouse.model import Address, AddressError
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
                                  "a@example.test\x1f", '"a\x7fb"@example.test'])
def test_addresses_refused(text: str) -> None:
    with pytest.raises(AddressError):
        Address.parse(text, utf8=True)


@pytest.mark.parametrize("text", ["a@[192.0.2.1]", "a@[IPv6:2001:db8::1]", "a@[x-tag:abc]"])
def test_address_literals_accepted(text: str) -> None:
    assert str(Address.parse(text)) == text.lower()
