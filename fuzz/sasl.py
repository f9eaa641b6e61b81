"""Fuzz target: the SASL mechanisms (mailhouse.proto.sasl) on any client responses
(tests/proto/grammar_checks.py: a step or a SaslError, credentials never empty or twice).

Input: mechanism (1 byte), flags (1 byte: bit 0 with an initial response), then the responses,
one per line."""

from __future__ import annotations

from fuzz.input import FuzzInput, header
from tests.proto.grammar_checks import check_sasl_decode, check_sasl_exchange

NAMES = ("PLAIN", "LOGIN", "plain", "Login", "CRAM-MD5", "")


def test_one_input(data: bytes) -> None:
    source = FuzzInput(data)
    name = NAMES[source.choice(len(NAMES))]
    with_initial = source.flag()
    lines = source.rest().split(b"\n")
    for line in lines:
        check_sasl_decode(line, initial=with_initial)
    initial = lines[0] if with_initial else None
    check_sasl_exchange(name, initial, lines[1:] if with_initial else lines)


SAMPLES = ((0, 1, b"AGFsaWNlAHB3"), (0, 0, b"YWxpY2UAYWxpY2UAcHc="), (1, 0, b"YWxpY2U=\ncHc="),
           (1, 1, b"YWxpY2U=\ncHc="), (0, 1, b"="), (1, 0, b"*"), (0, 0, b"!!!"),
           (4, 0, b""))


def seeds() -> list[bytes]:
    return [header(name, flags) + payload for name, flags, payload in SAMPLES]
