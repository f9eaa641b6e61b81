"""Finding 7 of the hardening issue: peer-chosen values cannot forge log fields or lines.

The server runs as a subprocess with its real logging set-up; a peer sends addresses built to
add a `key=value` field or start a new line (quoted local parts, SMTPUTF8 with U+0085, U+2028,
C1 controls), and the log must hold each one as a single escaped value.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.mailhouse import MailhouseServer
from tests.helpers.net import LOOPBACK

DOMAIN = "example.test"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MailhouseServer]:
    srv = MailhouseServer(tmp_path / "mh", protocols=("smtp",))
    srv.add_domain(DOMAIN)
    srv.add_user(f"alice@{DOMAIN}")
    with srv:
        yield srv


def _send(port: int, lines: list[bytes]) -> list[bytes]:
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        f = sock.makefile("rb")
        assert f.readline().startswith(b"220")
        replies = []
        for line in lines:
            sock.sendall(line + b"\r\n")
            reply = f.readline()
            while reply[3:4] == b"-":
                reply = f.readline()
            replies.append(reply)
        return replies


FORGED = [
    # A quoted local part with a space and `=`: would add a field `user=admin`.
    b'RCPT TO:<"x user=admin"@example.test>',
    # SMTPUTF8 local parts with Unicode line breaks and a C1 control: would start new lines.
    "RCPT TO:<a\u2028FAKE@example.test>".encode(),
    "RCPT TO:<b\x85FAKE@example.test>".encode(),
    "RCPT TO:<c\x9bFAKE@example.test>".encode(),
    # A bidi override (a format character, not a control): the address grammar lets it
    # through, so it reaches the log and must be escaped there.
    "RCPT TO:<d\u202eFAKE@example.test>".encode(),
]


def test_peer_values_are_escaped_in_the_log(server: MailhouseServer) -> None:
    replies = _send(server.port("smtp"), [
        b"EHLO client.example", b"MAIL FROM:<s@example.org> SMTPUTF8", *FORGED, b"QUIT"])
    # Each forged address was refused as an unknown user, or as bad syntax (controls and
    # Unicode line breaks are not address characters): none is ours.
    assert all(r[:1] in (b"5", b"2") for r in replies), replies
    rejected = sum(r.startswith(b"550") for r in replies)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = server.log_path.read_text(encoding="utf-8", errors="replace")
        if text.count("rcpt_rejected") >= rejected:
            break
        time.sleep(0.1)
    text = server.log_path.read_text(encoding="utf-8", errors="strict")
    assert rejected >= 2, replies
    for forbidden in ("\u2028", "\x85", "\x9b", "\u202e", "\r"):
        assert forbidden not in text
    lines = [line for line in text.splitlines() if "rcpt_rejected" in line]
    assert len(lines) == rejected
    # One quoted or plain token per value: `user=admin` can never stand as a field of its own.
    record = re.compile(r'.* event=smtp\.rcpt_rejected peer=\S+ '
                        r'rcpt=<("(?:[^"\\]|\\.)*"|[^ "]*)> reason=unknown')
    for line in lines:
        assert record.fullmatch(line), line
    # The forged text sits inside the records' values, never on a line of its own.
    assert all("rcpt_rejected" in line for line in text.splitlines() if "FAKE" in line)
    assert 'rcpt=<"\\"x user=admin\\"@example.test">' in text
    assert "\\u202eFAKE" in text
