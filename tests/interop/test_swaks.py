"""swaks (and, where swaks cannot, smtplib or a raw socket) → mailhouse's MX port → export.

Every test sends a message carrying a unique id, exports the recipient's Maildir with the CLI
and checks the stored copy: exactly one, the server's Return-Path and Received prepended, and
then the bytes exactly as sent (after dot-unstuffing; the exported Maildir stores LF line ends,
which the comparison converts back to CRLF).
"""

from __future__ import annotations

import hashlib
import random
import smtplib
import socket
import uuid
from pathlib import Path

import pytest

from tests.helpers.maildir import StoredMessage
from tests.helpers.mailhouse import MailhouseServer
from tests.helpers.swaks import crlf, swaks, write_data_file

pytestmark = pytest.mark.interop

ALICE = "alice@example.test"
SENDER = "sender@remote.test"


def unique_id(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex}"


def stored_with(server: MailhouseServer, address: str, token: str) -> list[StoredMessage]:
    """The exported messages of `address` that contain `token`."""
    needle = token.encode()
    return [m for m in server.export(address) if needle in m.data]


def the_one(server: MailhouseServer, address: str, token: str) -> StoredMessage:
    found = stored_with(server, address, token)
    assert len(found) == 1, f"expected exactly one message with {token}, found {len(found)}"
    return found[0]


def assert_server_trace(msg: StoredMessage, sender: str) -> None:
    """Return-Path first, then the server's Received (the contract), nothing else in between."""
    trace = msg.trace
    assert len(trace) >= 2, msg.data[:400]
    assert trace[0].startswith(f"Return-Path: <{sender}>".encode()), trace[0]
    assert trace[1].lower().startswith(b"received: "), trace[1]


def sample_message(token: str, body: bytes, *, transfer_encoding: str = "7bit") -> bytes:
    """A small RFC 5322 message (CRLF) whose Subject and Message-ID carry `token`."""
    head = (
        f"From: Sender <{SENDER}>\n"
        f"To: Alice <{ALICE}>\n"
        f"Subject: interop {token}\n"
        f"Message-ID: <{token}@remote.test>\n"
        "MIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=utf-8\n"
        f"Content-Transfer-Encoding: {transfer_encoding}\n"
        "X-Folded: first part\n"
        "\tsecond part of a folded header\n"
        "\n"
    )
    return crlf(head.encode() + body)


def test_swaks_plain(swaks_tool: str, mailhouse: MailhouseServer) -> None:
    token = unique_id("plain")
    result = swaks(
        mailhouse.smtp_port,
        "--h-Subject",
        f"plain {token}",
        "--add-header",
        f"X-Interop-Id: {token}",
        to=ALICE,
        sender=SENDER,
    ).check()
    assert "EHLO client.remote.test" in result.transcript
    msg = the_one(mailhouse, ALICE, token)
    assert_server_trace(msg, SENDER)
    assert msg.header("Subject") == f"plain {token}"
    assert msg.header("X-Interop-Id") == token
    assert b"This is a test mailing" in msg.content


def test_swaks_bytes_arrive_exactly(
    swaks_tool: str, mailhouse: MailhouseServer, tmp_path: Path
) -> None:
    """Dot-stuffed lines, a 998-octet line, folded headers: the client's bytes, unchanged."""
    token = unique_id("exact")
    body = crlf(
        b"first line\n"
        b".a line that starts with a dot\n"
        b"..two dots\n"
        b".\n"  # not the terminator: a lone dot inside the body, stuffed on the wire
        b" leading space, trailing space \n" + b"x" * 998 + b"\n\nlast line\n"
    )
    message = sample_message(token, body)
    data = write_data_file(tmp_path / "message.eml", message)
    swaks(
        mailhouse.smtp_port, "--no-data-fixup", "--data", f"@{data}", to=ALICE, sender=SENDER
    ).check()
    msg = the_one(mailhouse, ALICE, token)
    assert_server_trace(msg, SENDER)
    assert msg.content_crlf == message


def test_swaks_starttls(swaks_tool: str, mailhouse: MailhouseServer, tmp_path: Path) -> None:
    token = unique_id("tls")
    message = sample_message(token, b"sent inside TLS\r\n")
    data = write_data_file(tmp_path / "message.eml", message)
    result = swaks(
        mailhouse.smtp_port,
        "--tls",  # STARTTLS is required: swaks fails if it is not offered or fails
        "--no-data-fixup",
        "--data",
        f"@{data}",
        to=ALICE,
        sender=SENDER,
    ).check()
    assert "STARTTLS" in result.transcript
    assert "TLS started" in result.transcript, result.transcript
    msg = the_one(mailhouse, ALICE, token)
    assert_server_trace(msg, SENDER)
    assert msg.content_crlf == message


def test_swaks_raw_8bit_body(swaks_tool: str, mailhouse: MailhouseServer, tmp_path: Path) -> None:
    """An undeclared 8-bit body (as most clients send it): UTF-8 and Latin-1 octets kept."""
    token = unique_id("8bit")
    body = crlf(
        "UTF-8: Grüße aus Köln, naïve café, ☃, 日本語\n".encode()
        + b"Latin-1: \xe9t\xe9 \xe0 la plage\n"
        + bytes(range(0x80, 0x100))
        + b"\n"
    )
    message = sample_message(token, body, transfer_encoding="8bit")
    data = write_data_file(tmp_path / "message.eml", message)
    swaks(
        mailhouse.smtp_port, "--no-data-fixup", "--data", f"@{data}", to=ALICE, sender=SENDER
    ).check()
    msg = the_one(mailhouse, ALICE, token)
    assert msg.content_crlf == message


def test_declared_8bitmime_with_smtplib(mailhouse: MailhouseServer) -> None:
    """swaks cannot add BODY=8BITMIME to MAIL FROM; smtplib can (RFC 6152)."""
    token = unique_id("8bitmime")
    message = sample_message(
        token, "Déclaré en 8 bits: ça marche.\n".encode(), transfer_encoding="8bit"
    )
    with smtplib.SMTP("127.0.0.1", mailhouse.smtp_port, timeout=30) as smtp:
        smtp.ehlo("client.remote.test")
        assert smtp.has_extn("8bitmime")
        refused = smtp.sendmail(SENDER, [ALICE], message, mail_options=["BODY=8BITMIME"])
        assert refused == {}
    msg = the_one(mailhouse, ALICE, token)
    assert msg.content_crlf == message


def test_smtputf8_sender_and_headers(mailhouse: MailhouseServer) -> None:
    """SMTPUTF8 (RFC 6531): UTF-8 envelope sender and raw UTF-8 headers, via smtplib.

    swaks 20201014 has no way to add the SMTPUTF8 parameter to MAIL FROM.
    """
    token = unique_id("utf8")
    sender = "jörg.müller@bücher.test"
    message = crlf(
        f"From: Jörg Müller <{sender}>\n"
        f"To: Alice <{ALICE}>\n"
        f"Subject: Grüße {token} ✉\n"
        f"Message-ID: <{token}@bücher.test>\n"
        "MIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=utf-8\n"
        "Content-Transfer-Encoding: 8bit\n"
        "\n"
        "Unicode in the envelope, the headers and the body: 你好, привет.\n".encode()
    )
    with smtplib.SMTP("127.0.0.1", mailhouse.smtp_port, timeout=30) as smtp:
        smtp.ehlo("client.remote.test")
        assert smtp.has_extn("smtputf8")
        refused = smtp.sendmail(
            sender, [ALICE], message, mail_options=["SMTPUTF8", "BODY=8BITMIME"]
        )
        assert refused == {}
    msg = the_one(mailhouse, ALICE, token)
    # The UTF-8 local part is kept; the domain may be written as U-label or A-label (RFC 5890).
    forms = (sender, "jörg.müller@" + "bücher.test".encode("idna").decode())
    assert any(msg.trace[0].startswith(f"Return-Path: <{f}>".encode()) for f in forms), msg.trace
    assert msg.content_crlf == message
    assert msg.header("Subject") == f"Grüße {token} ✉"


def test_utf8_address_without_smtputf8_is_refused(mailhouse: MailhouseServer) -> None:
    """RFC 6531 §3.4: a UTF-8 address without the SMTPUTF8 parameter gets a 5xx, not stored."""
    with socket.create_connection(("127.0.0.1", mailhouse.smtp_port), timeout=10) as sock:
        reader = sock.makefile("rb")

        def reply() -> bytes:
            lines = []
            for _ in range(50):
                line = reader.readline()
                lines.append(line)
                if len(line) < 4 or line[3:4] != b"-":
                    break
            return b"".join(lines)

        assert reply().startswith(b"220")
        sock.sendall(b"EHLO client.remote.test\r\n")
        assert reply().startswith(b"250")
        sock.sendall("MAIL FROM:<jörg@bücher.test>\r\n".encode())
        mail = reply()
        if mail.startswith(b"250"):
            sock.sendall(f"RCPT TO:<{ALICE}>\r\n".encode())
            rcpt = reply()
            if rcpt.startswith(b"250"):
                sock.sendall(b"DATA\r\n")
                pytest.fail(f"UTF-8 sender without SMTPUTF8 accepted: {mail!r} {rcpt!r}")
            assert rcpt[:1] == b"5", rcpt
        else:
            assert mail[:1] == b"5", mail
        sock.sendall(b"QUIT\r\n")


def test_swaks_20mb_attachment(swaks_tool: str, mailhouse: MailhouseServer, tmp_path: Path) -> None:
    token = unique_id("big")
    payload = random.Random(token).randbytes(20 * 1024 * 1024)
    attachment = tmp_path / "payload.bin"
    attachment.write_bytes(payload)
    swaks(
        mailhouse.smtp_port,
        "--h-Subject",
        f"big {token}",
        "--attach-type",
        "application/octet-stream",
        "--attach-name",
        "payload.bin",
        "--attach",
        f"@{attachment}",
        "--suppress-data",
        to=ALICE,
        sender=SENDER,
    ).check()
    msg = the_one(mailhouse, ALICE, token)
    assert_server_trace(msg, SENDER)
    assert len(msg.data) > 27_000_000  # base64 of 20 MiB plus headers
    parts = [p for p in msg.parsed.walk() if p.get_filename() == "payload.bin"]
    assert len(parts) == 1
    decoded = parts[0].get_payload(decode=True)
    assert isinstance(decoded, bytes)
    assert hashlib.sha256(decoded).hexdigest() == hashlib.sha256(payload).hexdigest()
