"""The junk-command limit (issue 7, finding 3), as transcripts through the cores.

SMTP follows Postfix's `smtpd_junk_command_limit`: HELO, EHLO, RSET, NOOP, VRFY (and our HELP)
are free up to the limit; past it each one also counts as an error, so the session ends with 421
at `max_errors`. A delivered message forgives the junk count, so a client sending many messages
with RSET between them is never cut off. POP3 does the same for CAPA, NOOP, RSET, STAT and the
argument-less LIST/UIDL/AUTH, forgiven by a retrieved or deleted message.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.proto.pop3_driver import Driver as Pop3Driver
from tests.proto.smtp_driver import Driver, codes

ENVELOPE = b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<bob@example.test>\r\n"
MESSAGE = ENVELOPE + b"DATA\r\nSubject: s\r\n\r\nbody\r\n.\r\n"


def smtp(**config: object) -> Driver:
    d = Driver.new(**config)
    d.core.data_to_send()
    return d


# --- SMTP ------------------------------------------------------------------------------------
def test_noop_flood_closes_at_the_error_limit() -> None:
    d = smtp(junk_command_limit=10, max_errors=3)
    out = d.feed(b"NOOP\r\n" * 50)
    # 10 free, then each NOOP is answered and counted: the third counted one ends the session.
    assert codes(out) == [250] * 13 + [421]
    assert out.endswith(b"421 4.7.0 Too many errors, closing connection\r\n")
    assert d.closed


def test_default_limit_is_postfix_s_100() -> None:
    d = smtp()
    assert d.core.config.junk_command_limit == 100
    out = d.feed(b"NOOP\r\n" * 1000)
    assert codes(out) == [250] * 120 + [421]  # 100 free + max_errors (20)


@pytest.mark.parametrize("junk", [b"NOOP", b"RSET", b"VRFY bob", b"HELP", b"EHLO client.test",
                                  b"HELO client.test"])
def test_each_junk_verb_counts(junk: bytes) -> None:
    d = smtp(junk_command_limit=2, max_errors=1)
    out = d.feed((junk + b"\r\n") * 5)
    assert len(codes(out)) == 4 and codes(out)[-1] == 421
    assert d.closed


def test_transaction_commands_and_quit_are_not_junk() -> None:
    d = smtp(junk_command_limit=1, max_errors=1)
    out = d.feed(b"EHLO client.test\r\n" + ENVELOPE + b"RCPT TO:<carol@example.test>\r\nQUIT\r\n")
    assert codes(out) == [250, 250, 250, 250, 221]
    assert d.core.junk_commands == 1 and d.core.errors == 0


def test_errors_and_junk_add_up() -> None:
    # A junk command that is itself an error (VRFY without argument) counts twice past the limit,
    # as in Postfix; errors made before keep counting.
    d = smtp(junk_command_limit=1, max_errors=4)
    assert codes(d.feed(b"BOGUS\r\nNOOP\r\n")) == [500, 250]  # 1 error, 1 junk
    assert codes(d.feed(b"VRFY\r\n")) == [501]  # 2 junk: errors 2 (syntax) and 3 (junk)
    assert d.core.errors == 3
    assert codes(d.feed(b"NOOP\r\n")) == [250, 421]
    assert d.closed


def test_a_delivered_message_forgives_the_junk() -> None:
    # A long multi-message session with RSET/NOOP around every message is never cut off.
    d = smtp(junk_command_limit=5, max_errors=2)
    d.feed(b"EHLO client.test\r\n")
    for _ in range(50):
        out = d.feed(b"RSET\r\nNOOP\r\n" + MESSAGE + b"RSET\r\nNOOP\r\n")
        assert 421 not in codes(out)
    assert len(d.messages) == 50 and not d.closed


def test_a_refused_message_forgives_nothing() -> None:
    d = smtp(junk_command_limit=3, max_errors=10)
    d.feed(b"EHLO client.test\r\nNOOP\r\nNOOP\r\nNOOP\r\n")  # 4 junk: 1 error
    assert d.core.errors == 1
    d.feed(ENVELOPE + b"DATA\r\n" + b"x" * 2000 + b"\r\n.\r\n")  # line too long: refused (554)
    assert d.core.errors == 2 and d.core.junk_commands == 4
    d.feed(b"NOOP\r\n")
    assert d.core.errors == 3


def test_errors_are_not_forgiven_by_delivery() -> None:
    # Unlike Postfix, the error budget stays per session: it bounds address harvesting (RCPT
    # rejections), which a delivered message should not refill. Only the junk count resets.
    d = smtp(junk_command_limit=100, max_errors=3)
    d.feed(b"EHLO client.test\r\nBOGUS\r\nBOGUS\r\n")
    d.feed(MESSAGE)
    assert len(d.messages) == 1 and d.core.errors == 2
    assert codes(d.feed(b"BOGUS\r\n")) == [500, 421]


# --- POP3 ------------------------------------------------------------------------------------
LOGIN = b"USER alice@example.test\r\nPASS secret\r\n"


def pop3(**config: Any) -> Pop3Driver:
    d = Pop3Driver.new([b"Subject: one\r\n\r\nx\r\n"] * 3, **config)
    assert d.log_in().endswith(b"+OK maildrop has 3 messages (57 octets)\r\n")
    return d


def test_pop3_noop_flood_closes_at_the_error_limit() -> None:
    d = pop3(junk_command_limit=10, max_errors=3)
    out = d.feed(b"NOOP\r\n" * 50).split(b"\r\n")[:-1]
    assert out == [b"+OK"] * 13 + [b"-ERR Too many errors, closing connection"]
    assert d.closed and d.commits == []  # closed without UPDATE: nothing deleted


def test_pop3_default_limit() -> None:
    d = pop3()
    assert d.core.config.junk_command_limit == 100
    out = d.feed(b"NOOP\r\n" * 1000).split(b"\r\n")[:-1]
    assert len(out) == 121 and d.closed


@pytest.mark.parametrize("junk", [b"NOOP", b"RSET", b"STAT", b"CAPA", b"LIST", b"UIDL"])
def test_pop3_each_junk_command_counts(junk: bytes) -> None:
    d = pop3(junk_command_limit=2, max_errors=1)
    out = d.feed((junk + b"\r\n") * 5)
    assert out.endswith(b"-ERR Too many errors, closing connection\r\n") and d.closed


def test_pop3_per_message_commands_are_not_junk() -> None:
    # Clients ask LIST n / UIDL n / TOP n 0 once per message; a big maildrop means many.
    d = pop3(junk_command_limit=0, max_errors=1)
    out = d.feed(b"LIST 1\r\nUIDL 2\r\nTOP 3 0\r\nLIST 2\r\nUIDL 1\r\n" * 20)
    assert not d.closed and b"-ERR" not in out


def test_pop3_auth_discovery_before_login_counts() -> None:
    d = Pop3Driver.new(junk_command_limit=3, max_errors=1)
    out = d.feed(b"CAPA\r\nAUTH\r\nCAPA\r\nAUTH\r\n")
    assert out.endswith(b"-ERR Too many errors, closing connection\r\n") and d.closed


def test_pop3_retrieving_or_deleting_forgives_the_junk() -> None:
    d = pop3(junk_command_limit=3, max_errors=1)
    for command in (b"RETR 1", b"DELE 1", b"TOP 2 0", b"DELE 2"):
        out = d.feed(b"STAT\r\nLIST\r\nNOOP\r\n" + command + b"\r\n")
        assert b"-ERR" not in out
    assert not d.closed
    d.feed(b"QUIT\r\n")
    assert d.commits == [(0, 1)]
