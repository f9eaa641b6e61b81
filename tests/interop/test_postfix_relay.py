"""Postfix (Debian 3.7) as the sending MTA: mail submitted to Postfix, relayed to mailhouse.

Postfix's transport map points example.test at mailhouse's MX port, its smtp(8) client uses
STARTTLS when offered (``smtp_tls_security_level = may``), and the tests check that every
message arrives exactly once, carrying Postfix's Received header below mailhouse's own.
"""

from __future__ import annotations

import re
import smtplib
import subprocess
import uuid
from collections import Counter

import pytest

from tests.helpers.maildir import StoredMessage
from tests.helpers.mailhouse import MailhouseServer
from tests.helpers.net import LOOPBACK
from tests.helpers.postfix import PostfixInstance
from tests.helpers.swaks import crlf, swaks

pytestmark = pytest.mark.interop

ALICE = "alice@example.test"
BOB = "bob@example.test"
SENDER = "sender@remote.test"

_QUEUED_AS = re.compile(r"queued as ([0-9A-F]+)")
_POSTFIX_RECEIVED = re.compile(
    rb"by postfix\.interop\.test \(Postfix\) with E?SMTP\w* id ([0-9A-F]+)", re.IGNORECASE
)


def queue_id(reply: str) -> str:
    match = _QUEUED_AS.search(reply)
    assert match is not None, f"no 'queued as' in Postfix's reply: {reply[-2000:]}"
    return match.group(1)


def postfix_queue_ids(msg: StoredMessage) -> list[str]:
    """Queue ids named in Postfix's Received headers (unfolded) of a stored message."""
    head = msg.data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    unfolded = re.sub(rb"\r?\n[ \t]+", b" ", head)
    return [m.decode() for m in _POSTFIX_RECEIVED.findall(unfolded)]


def received_headers(msg: StoredMessage) -> list[str]:
    return [str(v) for v in msg.parsed.get_all("Received", [])]


def test_swaks_to_postfix_relayed_once_with_postfix_received(
    swaks_tool: str, postfix_instance: PostfixInstance, mailhouse: MailhouseServer
) -> None:
    token = f"relay-{uuid.uuid4().hex}"
    result = swaks(
        postfix_instance.port,
        "--h-Subject",
        f"relayed {token}",
        "--add-header",
        f"X-Interop-Id: {token}",
        to=ALICE,
        sender=SENDER,
    ).check()
    qid = queue_id(result.transcript)
    postfix_instance.wait_for_queue_ids([qid], timeout=60)

    found = [m for m in mailhouse.export(ALICE) if token.encode() in m.data]
    assert len(found) == 1, f"{len(found)} copies of {token}"
    msg = found[0]
    assert msg.trace[0].startswith(f"Return-Path: <{SENDER}>".encode()), msg.trace[0]
    received = received_headers(msg)
    assert len(received) >= 2, received
    # mailhouse's Received is on top; Postfix's (with its queue id) directly below it.
    assert "postfix.interop.test" in received[0], received[0]  # mailhouse names its peer
    assert postfix_queue_ids(msg) == [qid], received
    assert msg.header("X-Interop-Id") == token

    delivery = next(d for d in postfix_instance.sent() if d.queue_id == qid)
    assert delivery.relay == f"{LOOPBACK}[{LOOPBACK}]:{mailhouse.smtp_port}", delivery
    assert delivery.text.startswith("250"), delivery
    # Postfix's client negotiated STARTTLS with mailhouse's self-signed certificate.
    assert postfix_instance.tls_used(mailhouse.smtp_port), postfix_instance.maillog()[-3000:]


def test_smtp_source_batch_relayed_exactly_once(
    postfix_tools: dict[str, str], postfix_instance: PostfixInstance, mailhouse: MailhouseServer
) -> None:
    """40 messages over 4 sessions into Postfix; each one lands in bob's INBOX exactly once."""
    count = 40
    before = {d.queue_id for d in postfix_instance.sent() if d.to == BOB}
    subprocess.run(
        [
            postfix_tools["smtp-source"],
            "-s", "4",
            "-m", str(count),
            "-l", "2048",
            "-f", SENDER,
            "-t", BOB,
            f"{LOOPBACK}:{postfix_instance.port}",
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
        check=True,
    )  # fmt: skip

    sent = postfix_instance.wait_for_deliveries(len(before) + count, timeout=60, to=BOB)
    queue_ids = {d.queue_id for d in sent} - before
    assert len(queue_ids) == count, sorted(queue_ids)

    stored = Counter(qid for m in mailhouse.export(BOB) for qid in postfix_queue_ids(m))
    missing = queue_ids - set(stored)
    duplicated = {qid: n for qid, n in stored.items() if n > 1}
    assert not missing, f"relayed by Postfix but not stored: {sorted(missing)}"
    assert not duplicated, f"stored more than once: {duplicated}"


def test_postfix_relays_smtputf8_and_8bit(
    postfix_instance: PostfixInstance, mailhouse: MailhouseServer
) -> None:
    """SMTPUTF8 + 8-bit body into Postfix; Postfix's client must relay it with SMTPUTF8."""
    token = f"utf8relay-{uuid.uuid4().hex}"
    sender = "zoë@bücher.test"
    body = "Grüße über Postfix: ☃ 日本語\n".encode()
    message = crlf(
        f"From: Zoë <{sender}>\n"
        f"To: {ALICE}\n"
        f"Subject: über {token}\n"
        "MIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=utf-8\n"
        "Content-Transfer-Encoding: 8bit\n"
        "\n".encode()
        + body
    )
    with smtplib.SMTP(LOOPBACK, postfix_instance.port, timeout=30) as smtp:
        smtp.ehlo("client.remote.test")
        assert smtp.has_extn("smtputf8")
        smtp.mail(sender, ["SMTPUTF8", "BODY=8BITMIME"])
        code, _ = smtp.rcpt(ALICE)
        assert code == 250
        code, reply = smtp.data(message)
        assert code == 250, reply
    qid = queue_id(reply.decode())
    postfix_instance.wait_for_queue_ids([qid], timeout=60)

    found = [m for m in mailhouse.export(ALICE) if token.encode() in m.data]
    assert len(found) == 1
    msg = found[0]
    forms = (sender, "zoë@" + "bücher.test".encode("idna").decode())  # U-label or A-label
    assert any(msg.trace[0].startswith(f"Return-Path: <{f}>".encode()) for f in forms), msg.trace
    assert msg.header("Subject") == f"über {token}"
    assert msg.content_crlf.endswith(b"\r\n\r\n" + crlf(body))
