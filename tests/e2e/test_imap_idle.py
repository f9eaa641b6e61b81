"""IDLE across processes on the real server: a message delivered by SMTP (main process) and a
flag set by another IMAP session (in another worker) reach a session idling in an IMAP worker
within a second (RFC 2177; the store's wake-ups, store/wakeup.py), with `[imap] workers = 2`."""

from __future__ import annotations

import smtplib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.mailhouse_imap import MailhouseImap, start_mailhouse_imap

DEADLINE = 1.0  # the bound for a delivery to reach IDLE


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MailhouseImap]:
    instance = start_mailhouse_imap(tmp_path, workers=2)
    try:
        yield instance
    finally:
        print(instance.server.log_tail(60))
        instance.close()


class Raw:
    """A bare IMAP session over TLS, to read untagged responses as they come."""

    def __init__(self, instance: MailhouseImap) -> None:
        raw = socket.create_connection((instance.host, instance.ports["implicit"]), timeout=10)
        self.sock = instance.ssl_context().wrap_socket(raw, server_hostname=instance.host)
        self.buffer = b""
        self.line()  # greeting
        self.command(b"a LOGIN %s %s" % (instance.user.encode(), instance.password.encode()))
        self.command(b"b SELECT INBOX")

    def line(self, timeout: float = 10.0) -> bytes:
        self.sock.settimeout(timeout)
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed"
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def command(self, text: bytes) -> list[bytes]:
        self.sock.sendall(text + b"\r\n")
        tag = text.split(b" ", 1)[0] + b" "
        lines = []
        while not (line := self.line()).startswith(tag):
            lines.append(line)
        assert line.startswith(tag + b"OK"), (line, lines)
        return lines


def test_idle_hears_an_smtp_delivery_and_another_session_within_a_second(
        server: MailhouseImap) -> None:
    idler, other = Raw(server), Raw(server)
    idler.sock.sendall(b"i IDLE\r\n")
    assert idler.line().startswith(b"+ ")
    started = time.monotonic()
    with smtplib.SMTP(server.host, server.server.port("smtp"), timeout=10) as smtp:
        smtp.sendmail("someone@example.net", [server.user],
                      b"Subject: push\r\nMessage-ID: <push@test>\r\n\r\nhello\r\n")
    delivered = time.monotonic()
    assert idler.line(timeout=5) == b"* 1 EXISTS"
    assert time.monotonic() - delivered < DEADLINE, time.monotonic() - started
    other.command(b"c STORE 1 +FLAGS (\\Flagged)")
    changed = time.monotonic()
    line = idler.line(timeout=5)
    assert line.startswith(b"* 1 FETCH (") and b"\\Flagged" in line, line
    assert time.monotonic() - changed < DEADLINE
    idler.sock.sendall(b"DONE\r\n")
    assert idler.line().startswith(b"i OK")
    for session in (idler, other):
        session.sock.close()
