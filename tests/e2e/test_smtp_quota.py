"""Quota over a real socket (smtplib against the MX listener on loopback): 452 4.2.2 at RCPT
for a full mailbox, at RCPT with SIZE=, after DATA when every target is over, and a mixed
transaction where nobody is dropped behind the 250."""

from __future__ import annotations

import smtplib

import pytest

from tests.e2e.conftest import Running

MESSAGE = (b"From: a@sender.test\r\nTo: alice@example.test\r\nSubject: hi\r\n\r\n"
           + b"x" * 300 + b"\r\n")


def set_quota(server: Running, address: str, limit: int | None) -> None:
    assert server.call(server.app.store.set_quota(address, limit)) is True
    server.refresh_directory()


def connect(server: Running) -> smtplib.SMTP:
    smtp = smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=10)
    smtp.ehlo("client.test")
    return smtp


def test_full_mailbox_is_refused_at_rcpt(server: Running) -> None:
    set_quota(server, "alice@example.test", 0)
    with connect(server) as smtp:
        smtp.mail("a@sender.test")
        assert smtp.rcpt("alice@example.test") == (452, b"4.2.2 Mailbox full")
        assert smtp.rcpt("bob@example.test")[0] == 250
        assert smtp.data(MESSAGE)[0] == 250
        # sendmail declares SIZE= (RFC 1870): one octet more than bob has left is refused.
        bob = server.call(server.app.store.get_account("bob@example.test"))
        used = server.call(server.app.store.get_quota(bob.id)).used  # type: ignore[attr-defined]
        set_quota(server, "bob@example.test", used + len(MESSAGE) - 1)
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            smtp.sendmail("a@sender.test", ["bob@example.test", "team@example.test"], MESSAGE)
        assert refused.value.recipients == {"bob@example.test": (452, b"4.2.2 Mailbox full"),
                                            "team@example.test": (452, b"4.2.2 Mailbox full")}
    assert server.messages("alice@example.test") == []
    assert len(server.messages("bob@example.test")) == 1


def test_after_data_all_over_is_452_and_mixed_drops_nobody(server: Running) -> None:
    set_quota(server, "alice@example.test", 100)  # empty, but smaller than the message
    with connect(server) as smtp:
        smtp.mail("a@sender.test")  # no SIZE=: RCPT cannot know
        assert smtp.rcpt("alice@example.test")[0] == 250
        assert smtp.data(MESSAGE) == (452, b"4.2.2 Mailbox full")
        assert server.messages("alice@example.test") == []

        smtp.mail("a@sender.test")
        assert smtp.rcpt("alice@example.test")[0] == 250
        assert smtp.rcpt("bob@example.test")[0] == 250
        code, text = smtp.data(MESSAGE)
        assert code == 250 and text.startswith(b"2.0.0 Ok: queued as ")
        assert len(server.messages("alice@example.test")) == 1  # the grace of one message
        assert len(server.messages("bob@example.test")) == 1

        smtp.mail("a@sender.test")  # and now alice is full
        assert smtp.rcpt("alice@example.test") == (452, b"4.2.2 Mailbox full")
