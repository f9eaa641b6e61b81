"""RFC 3464 delivery status notifications: structure, fields, and the wire rules (CRLF only,
lines <= 998, 7-bit parts) whatever the original looked like."""

from __future__ import annotations

import email
import email.policy
import re
from email.message import EmailMessage, Message

import pytest

from mailhouse.queue.contracts import FailedRecipient
from mailhouse.queue.dsn import (
    MAX_LINE,
    MAX_RETURNED_HEADERS,
    SUBJECT_DELAYED,
    SUBJECT_FAILED,
    build_dsn,
    original_header_section,
)

ARRIVAL = 1_700_000_000.0
NOW = ARRIVAL + 3600
ORIGINAL = (b"Received: from client.example.org by mx.example.org\r\n"
            b"From: Alice <alice@example.org>\r\n"
            b"To: bob@example.net, carol@example.net\r\n"
            b"Subject: =?utf-8?q?Caf=C3=A9?= plans\r\n"
            b"Message-ID: <plans.1@example.org>\r\n"
            b"\r\n"
            b"SECRET BODY TEXT\r\n")
BOB = FailedRecipient("bob@example.net", "failed", "5.1.1",
                      "smtp; 550 5.1.1 <bob@example.net>: Recipient address rejected: "
                      "User unknown in virtual mailbox table", "mx.example.net [192.0.2.1]")
CAROL = FailedRecipient("carol@example.net", "failed", "5.4.4",
                        "Host or domain name not found", None)


def dsn(recipients: list[FailedRecipient] | None = None, *, original: bytes = ORIGINAL,
        delayed: bool = False, sender: str = "alice@example.org") -> bytes:
    return build_dsn(reporting_mta="mx.example.org", original_sender=sender,
                     recipients=[BOB] if recipients is None else recipients,
                     original=original, arrival=ARRIVAL, now=NOW, queue_id=42, delayed=delayed)


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert message.defects == []
    return message


def assert_wire_safe(raw: bytes, *, seven_bit_body: bool = True) -> None:
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"\r" not in raw.replace(b"\r\n", b"")
    assert all(len(line) <= MAX_LINE for line in raw.split(b"\r\n"))
    if seven_bit_body:
        body = raw.split(b"\r\n\r\n", 1)[1]
        assert all(c < 128 and c != 0 for c in body)


def parts(message: EmailMessage) -> list[EmailMessage]:
    return list(message.iter_parts())  # type: ignore[arg-type]


def status_blocks(message: EmailMessage) -> list[Message]:
    payload = parts(message)[1].get_payload()
    assert isinstance(payload, list)
    return payload


def test_structure() -> None:
    raw = dsn()
    assert_wire_safe(raw)
    message = parse(raw)
    assert message["From"] == "Mail Delivery System <MAILER-DAEMON@mx.example.org>"
    assert b"\r\nTo: <alice@example.org>\r\n" in raw
    assert message["Subject"] == SUBJECT_FAILED
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["Date"].datetime.timestamp() == NOW
    assert re.fullmatch(r"<dsn\.42\.\d+\.[0-9a-f]+@mx\.example\.org>", message["Message-ID"])
    assert message["In-Reply-To"] == "<plans.1@example.org>"
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert [p.get_content_type() for p in parts(message)] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers"]
    # Two DSNs for one message are two messages.
    assert parse(dsn())["Message-ID"] != message["Message-ID"]


def test_human_readable_part_names_recipient_and_reason() -> None:
    text = parts(parse(dsn([BOB, CAROL])))[0].get_content()
    assert "mx.example.org" in text
    assert "could not be delivered" in text
    assert "Subject: Café plans" in text  # RFC 2047 decoded for the reader
    flat = " ".join(text.split())
    assert ("<bob@example.net>: host mx.example.net [192.0.2.1] said: 550 5.1.1 "
            "<bob@example.net>: Recipient address rejected") in flat
    assert "<carol@example.net>: Host or domain name not found" in flat


def test_per_message_and_per_recipient_fields() -> None:
    blocks = status_blocks(parse(dsn([BOB, CAROL])))
    assert len(blocks) == 3
    per_message, bob, carol = blocks
    assert per_message["Reporting-MTA"] == "dns; mx.example.org"
    assert per_message["Arrival-Date"] == "Tue, 14 Nov 2023 22:13:20 +0000"
    assert bob["Final-Recipient"] == "rfc822; bob@example.net"
    assert bob["Action"] == "failed"
    assert bob["Status"] == "5.1.1"
    assert bob["Remote-MTA"] == "dns; mx.example.net"
    assert bob["Diagnostic-Code"] == (
        "smtp; 550 5.1.1 <bob@example.net>: Recipient address rejected: User unknown in "
        "virtual mailbox table")
    assert bob["Last-Attempt-Date"] == "Tue, 14 Nov 2023 23:13:20 +0000"
    # A local problem (no SMTP reply) is typed as ours, and has no Remote-MTA.
    assert carol["Diagnostic-Code"] == "X-Mailhouse; Host or domain name not found"
    assert carol["Remote-MTA"] is None


def test_fields_are_sanitised() -> None:
    evil = FailedRecipient("dave@example.net", "exploded", "five",
                           "smtp; 550 bad\r\nInjected: yes \u00e9" + " x" * 600,
                           "not a host name!")
    raw = dsn([evil])
    assert_wire_safe(raw)
    (_, block) = status_blocks(parse(raw))
    assert block["Action"] == "failed"
    assert block["Status"] == "5.0.0"
    assert block["Remote-MTA"] is None
    assert block["Injected"] is None
    assert block["Diagnostic-Code"].startswith("smtp; 550 bad Injected: yes ?")


def test_reason_from_the_status_when_nothing_was_said() -> None:
    expired = FailedRecipient("erin@example.net", "failed", "4.4.7", None, None)
    message = parse(dsn([expired]))
    text = " ".join(parts(message)[0].get_content().split())
    assert "<erin@example.net>: the message could not be delivered within the allowed " \
           "time (4.4.7)" in text
    (_, block) = status_blocks(message)
    assert block["Status"] == "4.4.7" and block["Action"] == "failed"
    assert block["Diagnostic-Code"] is None and block["Remote-MTA"] is None


def test_headers_only_are_returned() -> None:
    raw = dsn()
    assert b"SECRET BODY TEXT" not in raw
    returned = parts(parse(raw))[2].get_content()
    assert returned.startswith("Received: from client.example.org")
    assert "Message-ID: <plans.1@example.org>" in returned


def test_non_ascii_recipient_uses_utf8_address_type() -> None:
    rcpt = FailedRecipient("用户+tag@例子.广告", "failed", "5.1.1", "smtp; 550 5.1.1 no", None)
    raw = dsn([rcpt])
    assert_wire_safe(raw)
    message = parse(raw)
    (_, block) = status_blocks(message)
    # RFC 6533 §3 utf-8-addr-xtext: '+' is escaped too.
    assert block["Final-Recipient"] == (
        "utf-8; \\x{7528}\\x{6237}\\x{2B}tag@\\x{4F8B}\\x{5B50}.\\x{5E7F}\\x{544A}")
    assert "<用户+tag@例子.广告>" in parts(message)[0].get_content()


def test_non_ascii_sender_and_original_headers() -> None:
    original = "From: José <josé@exämple.org>\r\nSubject: Grüße\r\n\r\nbody".encode()
    raw = dsn(original=original, sender="josé@exämple.org")
    # Only the To field carries raw UTF-8 (RFC 6532): the bounce to such a sender needs
    # SMTPUTF8 anyway. Every body part stays 7-bit.
    assert_wire_safe(raw)
    message = parse(raw)
    assert "\r\nTo: <josé@exämple.org>\r\n".encode() in raw
    headers = parts(message)[2]
    assert headers["Content-Transfer-Encoding"] == "quoted-printable"
    assert headers.get_content() == "From: José <josé@exämple.org>\r\nSubject: Grüße\r\n"


def test_original_without_header_body_separator() -> None:
    original = b"From: a@example.org\r\nSubject: no body at all\r\n"
    message = parse(dsn(original=original))
    assert parts(message)[2].get_content() == (
        "From: a@example.org\r\nSubject: no body at all\r\n")
    # Truncated mid-line (the queue reads only the beginning): the fragment is kept.
    lines, truncated = original_header_section(b"From: a@example.org\r\nSubj")
    assert lines == [b"From: a@example.org", b"Subj"] and not truncated
    # LF-only originals, and an empty one.
    assert original_header_section(b"A: 1\nB: 2\n\nbody")[0] == [b"A: 1", b"B: 2"]
    assert original_header_section(b"") == ([], False)
    assert_wire_safe(dsn(original=b""))
    assert parts(parse(dsn(original=b"\r\nbody only")))[2].get_content() == ""


def test_huge_headers_are_capped_at_a_field_boundary() -> None:
    fields = [f"X-Filler-{i}: {'y' * 200}\r\n".encode() for i in range(400)]
    original = b"From: a@example.org\r\n" + b"".join(fields) + b"\r\nbody\r\n"
    raw = dsn(original=original)
    assert_wire_safe(raw)
    returned = parts(parse(raw))[2].get_content()
    assert len(returned) <= MAX_RETURNED_HEADERS
    assert returned.startswith("From: a@example.org\r\n")
    assert returned.endswith("y\r\n")  # whole fields only
    assert "shortened" in parts(parse(raw))[0].get_content()
    # A folded field is kept or dropped whole.
    folded = b"A: 1\r\nB: 2\r\n  more\r\n\tand more\r\nC: 3\r\n"
    assert original_header_section(folded, limit=12) == ([b"A: 1"], True)
    assert original_header_section(folded, limit=35) == (
        [b"A: 1", b"B: 2", b"  more", b"\tand more"], True)


def test_overlong_and_binary_original_lines_are_encoded() -> None:
    original = b"X-Long: " + b"z" * 3000 + b"\r\nX-Bin: a\x00b\rc\xff\r\n\r\n"
    raw = dsn(original=original)
    assert_wire_safe(raw)
    headers = parts(parse(raw))[2]
    assert headers["Content-Transfer-Encoding"] == "quoted-printable"
    assert headers.get_content_charset() == "unknown-8bit"
    decoded = headers.get_payload(decode=True)
    assert decoded == b"X-Long: " + b"z" * 3000 + b"\r\nX-Bin: a\x00b\rc\xff\r\n"


def test_delayed_variant() -> None:
    later = FailedRecipient("bob@example.net", "delayed", "4.4.1",
                            "smtp; 421 4.4.1 try later", "mx.example.net [192.0.2.1]")
    message = parse(dsn([later], delayed=True))
    assert message["Subject"] == SUBJECT_DELAYED
    text = parts(message)[0].get_content()
    assert "not been delivered yet" in text and "keeps trying" in text
    (_, block) = status_blocks(message)
    assert block["Action"] == "delayed"
    assert block["Status"] == "4.4.1"
    assert "delayed message" in parts(message)[2]["Content-Description"]


def test_needs_a_recipient() -> None:
    with pytest.raises(ValueError):
        dsn([])
