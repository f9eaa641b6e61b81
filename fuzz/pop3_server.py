"""Fuzz target: the POP3 server core on any byte stream, cut anywhere (tests/proto/harness.py).

Input: config (1 byte), flags (1 byte: bit 0 TLS active, bit 1 token mode), the cuts, then the
stream."""

from __future__ import annotations

from fuzz.input import FuzzInput, expand, header
from tests.proto.harness import POP3_CONFIGS, POP3_WORDS, pop3_cut_invariant


def test_one_input(data: bytes) -> None:
    source = FuzzInput(data)
    config = POP3_CONFIGS[source.choice(len(POP3_CONFIGS))]
    flags = source.byte()
    sizes = source.sizes()
    stream = source.rest()
    if flags & 2:
        stream = expand(stream, POP3_WORDS)
    pop3_cut_invariant(config, stream, sizes, tls_active=bool(flags & 1))


SESSIONS = (
    b"CAPA\r\nUSER alice\r\nPASS secret\r\nSTAT\r\nLIST\r\nUIDL\r\nRETR 1\r\nTOP 3 2\r\n"
    b"DELE 1\r\nRSET\r\nDELE 2\r\nQUIT\r\n",
    b"AUTH\r\nAUTH PLAIN\r\nAGFsaWNlAHNlY3JldA==\r\nLIST 1\r\nUIDL 9\r\nNOOP\r\nQUIT\r\n",
    b"AUTH LOGIN\r\nYWxpY2U=\r\nc2VjcmV0\r\nRETR 2\r\nQUIT\r\n",
    b"USER alice\r\nPASS wrong\r\nAUTH PLAIN *\r\nSTLS\r\nUSER alice\r\n",
    b"USER alice\nPASS secret\nTOP 1 0\nBOGUS\n\x00\r\n" + b"y" * 300 + b"\r\nQUIT\n",
)


def seeds() -> list[bytes]:
    out = [header(config, flags, 0, 1) + session for session in SESSIONS
           for config, flags in ((0, 1), (1, 0), (1, 1))]
    out.append(header(0, 3, 1, 5, 9) + bytes(range(len(POP3_WORDS))))
    return out
