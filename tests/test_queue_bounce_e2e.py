"""`mailhouse queue bounce` over real sockets: a message submitted to a remote server that
defers one recipient is bounced by the operator, with the server running and with it stopped;
the sender finds one DSN for that recipient in the mailbox (none for the one delivered), and
the trace tells the operator's request, the bounce and the DSN."""

from __future__ import annotations

import json
import smtplib
import ssl
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.fake_smtp import Script, Servers
from tests.helpers.mailhouse import MailhouseServer
from tests.helpers.net import wait_until
from tests.helpers.relay import PASSWORD, relaying_server, remote_mx


def _rcpt(address: str, count: int) -> str | None:
    return "451 4.7.1 Greylisted, try again later" if "later" in address else None


@pytest.fixture
def remote() -> Iterator[Servers]:
    with remote_mx(Script(rcpt=_rcpt)) as servers:
        yield servers


@pytest.fixture
def server(tmp_path: Path, remote: Servers) -> Iterator[MailhouseServer]:
    with relaying_server(tmp_path / "mh", remote) as instance:
        yield instance


def _submit(server: MailhouseServer, message_id: str, rcpts: list[str]) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    body = (f"From: <alice@example.test>\r\nTo: <{rcpts[0]}>\r\nMessage-ID: {message_id}\r\n"
            "Subject: bounce me\r\n\r\nHello.\r\n").encode()
    with smtplib.SMTP_SSL("127.0.0.1", server.port("submissions"), context=ctx,
                          timeout=30) as smtp:
        smtp.login("alice@example.test", PASSWORD)
        assert not smtp.sendmail("alice@example.test", rcpts, body)


def _steps(server: MailhouseServer, query: str) -> list[dict[str, Any]]:
    result = server.cli("trace", query, "--json", check=False)
    if result.returncode != 0:
        return []
    traces = json.loads(result.stdout)["traces"]
    return [step for trace in traces for step in trace["steps"]]


def _kinds(server: MailhouseServer, query: str) -> list[tuple[str, str]]:
    return [(s["kind"], s["recipient"]) for s in _steps(server, query)]


def _queue_id_once_deferred(server: MailhouseServer, message_id: str) -> int:
    assert wait_until(lambda: ("deferred", "later@remote.test") in _kinds(server, message_id),
                      timeout=30, interval=0.3), server.log_tail()
    [queue_id] = {s["queue_id"] for s in _steps(server, message_id) if s["kind"] == "deferred"}
    assert isinstance(queue_id, int)
    return queue_id


def _dsns(server: MailhouseServer) -> list[EmailMessage]:
    return [m.parsed for m in server.export("alice@example.test")
            if m.parsed.get_content_type() == "multipart/report"]


def _failed_recipients(dsn: EmailMessage) -> list[tuple[str, str]]:
    """(Final-Recipient, Status) of each per-recipient block of the message/delivery-status."""
    [status] = [p for p in dsn.walk() if p.get_content_type() == "message/delivery-status"]
    text = b"".join(part.as_bytes() for part in status.iter_parts()).decode()
    blocks = [b for b in text.replace("\r\n", "\n").split("\n\n") if "Final-Recipient" in b]
    out = []
    for block in blocks:
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        out.append((fields["Final-Recipient"], fields["Status"]))
    return out


def test_an_operator_bounces_a_deferred_message(server: MailhouseServer) -> None:
    # Running server: the bounce is carried out by its queue worker within a second or so.
    _submit(server, "<bounce-1@example.test>", ["bob@remote.test", "later@remote.test"])
    queue_id = _queue_id_once_deferred(server, "<bounce-1@example.test>")
    assert _dsns(server) == []
    done = server.cli("queue", "bounce", str(queue_id))
    assert f"message {queue_id}: 1 pending recipient to bounce".encode() in done.stdout
    assert wait_until(lambda: len(_dsns(server)) == 1, timeout=15, interval=0.3), \
        server.log_tail()
    [dsn] = _dsns(server)
    assert dsn["Subject"] == "Undelivered Mail Returned to Sender"
    assert _failed_recipients(dsn) == [("rfc822; later@remote.test", "5.0.0")]
    kinds = _kinds(server, "<bounce-1@example.test>")
    assert ("bounce", "") in kinds
    assert kinds.index(("bounce", "")) < kinds.index(("bounced", "later@remote.test"))
    assert ("dsn", "alice@example.test") in kinds
    assert ("bounced", "bob@remote.test") not in kinds
    bounced = next(s for s in _steps(server, "<bounce-1@example.test>")
                   if s["kind"] == "bounced")
    assert "5.0.0 Delivery cancelled by the postmaster" in bounced["description"]
    assert server.cli("queue", "show", str(queue_id), check=False).returncode == 1  # gone

    # Stopped server: the CLI only asks; the DSN goes when the server next starts.
    _submit(server, "<bounce-2@example.test>", ["later@remote.test"])
    second = _queue_id_once_deferred(server, "<bounce-2@example.test>")
    server.stop()
    server.cli("queue", "bounce", str(second))
    assert len(_dsns(server)) == 1
    server.start()
    assert wait_until(lambda: len(_dsns(server)) == 2, timeout=15, interval=0.3), \
        server.log_tail()
    assert server.cli("queue", "show", str(second), check=False).returncode == 1
    assert ("dsn", "alice@example.test") in _kinds(server, "<bounce-2@example.test>")
