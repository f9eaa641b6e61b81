"""Fuzz target: the SMTP command grammar (split_command, parse_path, parse_params, parse_bdat,
parse_auth) on any text (tests/proto/grammar_checks.py).

Input: which function (1 byte), how the rest becomes text (1 byte: UTF-8 with replacement, or
Latin-1, which reaches every code point below 256: C1 controls, NBSP, "²"), then the text."""

from __future__ import annotations

from collections.abc import Callable

from fuzz.input import FuzzInput, header
from tests.proto import grammar_checks as check

CHECKS: tuple[Callable[[str], None], ...] = (
    check.check_split_command,
    lambda t: check.check_parse_path(t, "FROM:", allow_null=True, utf8=None),
    lambda t: check.check_parse_path(t, "FROM:", allow_null=True, utf8=False),
    lambda t: check.check_parse_path(t, "TO:", allow_null=False, utf8=True),
    lambda t: check.check_parse_path(t, "TO:", allow_null=False, utf8=False),
    lambda t: check.check_parse_params(t, utf8=True),
    lambda t: check.check_parse_params(t, utf8=False),
    check.check_parse_bdat,
    check.check_parse_auth,
)


def text_of(source: FuzzInput) -> str:
    latin1 = source.flag()
    payload = source.rest()
    return payload.decode("latin-1") if latin1 else payload.decode("utf-8", "replace")


def test_one_input(data: bytes) -> None:
    source = FuzzInput(data)
    chosen = CHECKS[source.choice(len(CHECKS))]
    chosen(text_of(source))


SAMPLES = (
    (1, "FROM:<a@sender.test> SIZE=100 BODY=8BITMIME SMTPUTF8"),
    (1, "FROM:<>"), (2, 'FROM:<"quoted local"@example.test>'),
    (3, "TO:<@route.test,@r2.test:j\u00f6rg@example.test>"), (4, "TO:<Postmaster>"),
    (3, "TO:<x@[IPv6:2001:db8::1]>"), (5, "AUTH=<> RET=HDRS ENVID=x"),
    (7, "1000 LAST"), (7, "\u00b2"), (8, "PLAIN AGFsaWNlAHB3"), (8, "LOGIN ="),
    (0, "ehlo client.test"),
)


def seeds() -> list[bytes]:
    return [header(index, 0) + text.encode() for index, text in SAMPLES]
