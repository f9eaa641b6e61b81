"""Fuzz target: the address grammar (mailhouse.model.Address.parse) on any text
(tests/proto/grammar_checks.py: AddressError, or an Address that writes back to itself).

Input: flags (1 byte: bit 0 SMTPUTF8, bit 1 Latin-1 instead of UTF-8 with replacement), text."""

from __future__ import annotations

from fuzz.input import FuzzInput, header
from tests.proto.grammar_checks import check_address


def test_one_input(data: bytes) -> None:
    source = FuzzInput(data)
    flags = source.byte()
    payload = source.rest()
    text = payload.decode("latin-1") if flags & 2 else payload.decode("utf-8", "replace")
    check_address(text, utf8=bool(flags & 1))


SAMPLES = ("alice@example.test", "a.b+tag@sub.example.test", '"quoted @ local"@example.test',
           "j\u00f6rg@b\u00fccher.example", "x@[192.0.2.1]", "x@[IPv6:2001:db8::1]",
           "\u7528\u6237@\u4f8b\u5b50.\u6d4b\u8bd5", "a@xn--bcher-kva.example", "postmaster@x")


def seeds() -> list[bytes]:
    return [header(flags) + text.encode() for text in SAMPLES for flags in (0, 1)]
