"""Fuzz target: the SMTP server core on any byte stream, cut anywhere (tests/proto/harness.py).

Input: config (1 byte), flags (1 byte: bit 0 implicit TLS, bit 1 token mode), the cuts, then
the stream."""

from __future__ import annotations

from fuzz.input import FuzzInput, expand, header
from tests.proto.harness import SMTP_CONFIGS, SMTP_WORDS, smtp_cut_invariant


def test_one_input(data: bytes) -> None:
    source = FuzzInput(data)
    config = SMTP_CONFIGS[source.choice(len(SMTP_CONFIGS))]
    flags = source.byte()
    sizes = source.sizes()
    stream = source.rest()
    if flags & 2:
        stream = expand(stream, SMTP_WORDS)
    smtp_cut_invariant(config, stream, sizes, tls_active=bool(flags & 1))


SESSIONS = (
    b"EHLO client.test\r\nMAIL FROM:<a@sender.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
    b"Received: by x\r\nSubject: hi\r\n\r\n..dot\r\nbody\r\n.\r\nQUIT\r\n",
    b"EHLO client.test\r\nMAIL FROM:<> BODY=8BITMIME SIZE=100\r\nRCPT TO:<bob@example.test>\r\n"
    b"BDAT 10\r\nSubject: \r\nBDAT 2 LAST\r\n\r\n",
    b"EHLO client.test\r\nAUTH PLAIN AGFsaWNlAHB3\r\nMAIL FROM:<alice@example.test>\r\n"
    b"RCPT TO:<Postmaster>\r\nDATA\r\nx\r\n.\r\n",
    b"EHLO client.test\r\nAUTH LOGIN\r\nYWxpY2U=\r\ncHc=\r\nAUTH PLAIN\r\n*\r\n",
    b"HELO c\r\nNOOP\r\nRSET\r\nVRFY x\r\nHELP\r\nEXPN y\r\nSTARTTLS\r\nEHLO after\r\n",
    b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nbare\nlf\r\n.\r\n",
    b"EHLO c\r\nMAIL FROM:<j\xc3\xb6rg@b.test> SMTPUTF8\r\nRCPT TO:<x@[192.0.2.1]>\r\n"
    + b"x" * 600,
)


def seeds() -> list[bytes]:
    out = [header(config, flags, 0, 1) + session for session in SESSIONS
           for config, flags in ((0, 0), (2, 1), (1, 0))]
    out.append(header(0, 2, 1, 5, 9) + bytes(range(len(SMTP_WORDS))))
    return out
