"""SMTP server core, as transcripts: client bytes in, server replies out (no sockets, no loop)."""

from __future__ import annotations

import pytest

from mailhouse.proto.smtp import events as ev
from tests.proto.smtp_driver import Driver, codes

ENVELOPE = b"EHLO client.test\r\nMAIL FROM:<a@sender.test>\r\nRCPT TO:<bob@example.test>\r\n"


def session(**config: object) -> Driver:
    d = Driver.new(**config)
    assert d.core.data_to_send().startswith(b"220 mx.example.test ")
    return d


def test_greeting_and_ehlo_announces_exactly_what_works() -> None:
    d = session()
    out = d.feed(b"EHLO client.test\r\n")
    assert out == (
        b"250-mx.example.test\r\n250-PIPELINING\r\n250-SIZE 52428800\r\n250-8BITMIME\r\n"
        b"250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250 STARTTLS\r\n"
    )


def test_one_message_through_data_with_dot_unstuffing() -> None:
    d = session()
    out = d.feed(ENVELOPE + b"DATA\r\n")
    assert codes(out) == [250, 250, 250, 354]
    out = d.feed(b"Subject: x\r\n\r\n..leading dot\r\n.\r\n")
    assert codes(out) == [250]
    assert d.messages == [b"Subject: x\r\n\r\n.leading dot\r\n"]


def test_pipelined_transactions_do_not_leak_state() -> None:
    # Checklist 3: two transactions in one write; replies in order.
    d = session()
    one = b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
    out = d.feed(b"EHLO c\r\n" + one + b"hello\r\n.\r\n" + one + b"second\r\n.\r\nQUIT\r\n")
    assert codes(out) == [250, 250, 250, 354, 250, 250, 250, 354, 250, 221]
    assert d.messages == [b"hello\r\n", b"second\r\n"]
    assert d.closed


def test_data_split_across_every_byte_boundary() -> None:
    body = b"Subject: s\r\n\r\nline\r\n..dot\r\n.\r\n"
    for cut in range(1, len(body)):
        d = session()
        d.feed(ENVELOPE + b"DATA\r\n")
        d.feed(body[:cut])
        out = d.feed(body[cut:])
        assert codes(out)[-1] == 250, cut
        assert d.messages == [b"Subject: s\r\n\r\nline\r\n.dot\r\n"], cut


@pytest.mark.parametrize(
    "ending",
    [b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r.\n", b"\r\n.\n", b"\r.\r\n", b"\r\n\x00.\r\n",
     b"\r\r\n.\r\n", b"\n"],
)
def test_smuggling_endings_never_make_a_second_message(ending: bytes) -> None:
    # Checklist 1-2 (smtpsmug variants): the session is refused; nothing is stored.
    d = session()
    d.feed(ENVELOPE + b"DATA\r\n")
    smuggled = (b"MAIL FROM:<evil@sender.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
                b"Subject: smuggled\r\n\r\nx\r\n")
    out = d.feed(b"Subject: hi\r\n\r\nbody" + ending + smuggled + b".\r\n")
    if b"\x00" in ending:
        # NUL is data, not a line ending: one message, smuggled text inside it.
        assert len(d.messages) == 1 and b"smuggled" in d.messages[0]
        return
    assert d.messages == []
    assert out.startswith(b"521 5.5.2")
    assert d.closed
    assert any(isinstance(e, ev.DataAborted) for e in d.events)


def test_bare_lf_in_command_line_is_refused() -> None:
    d = session()
    out = d.feed(b"EHLO c\n")
    assert out.startswith(b"521 ")
    assert d.closed


def test_starttls_discards_pipelined_input() -> None:
    # Checklist 4: STARTTLS\r\nNOOP\r\n in one segment gets no NOOP reply, before or after TLS.
    d = session()
    d.feed(b"EHLO c\r\n")
    out = d.feed(b"STARTTLS\r\nNOOP\r\n")
    assert codes(out) == [220]
    assert d.tls_requested
    d.start_tls()
    assert d.feed(b"") == b""
    # Checklist 5: after TLS the session starts over; MAIL without EHLO is out of sequence.
    assert codes(d.feed(b"MAIL FROM:<a@sender.test>\r\n")) == [503]
    out = d.feed(b"EHLO c\r\n")
    assert b"STARTTLS" not in out
    # Checklist 7: no second STARTTLS.
    assert codes(d.feed(b"STARTTLS\r\n")) == [503]


def test_recipient_limit_keeps_earlier_recipients() -> None:
    # Checklist 14: 100 recipients accepted; past the cap 452, and the message still goes.
    d = session(max_recipients=100)
    d.feed(b"EHLO c\r\nMAIL FROM:<a@sender.test>\r\n")
    rcpts = b"".join(b"RCPT TO:<u%d@example.test>\r\n" % i for i in range(101))
    out = d.feed(rcpts)
    assert codes(out) == [250] * 100 + [452]
    assert codes(d.feed(b"DATA\r\nx\r\n.\r\n")) == [354, 250]
    assert d.core.recipients == 0  # the transaction is over


def test_overlong_command_line_and_huge_line() -> None:
    # Checklist 13.
    d = session()
    out = d.feed(b"NOOP " + b"x" * 600 + b"\r\n")
    assert codes(out) == [500]
    assert codes(d.feed(b"NOOP\r\n")) == [250]
    out = d.feed(b"x" * 1_000_000)
    assert out.startswith(b"421 ")
    assert d.closed
    assert d.core.buffered == 0


@pytest.mark.parametrize(
    ("command", "code"),
    [
        (b"MAIL FROM:<a\rb@sender.test>\r\n", 501),
        (b"MAIL FROM:<a\x00b@sender.test>\r\n", 501),
        (b"MAIL FROM:<" + b"a" * 70 + b"@sender.test>\r\n", 501),
        (b"MAIL FROM:<j\xc3\xbcrgen@sender.test>\r\n", 553),
        (b"MAIL FROM:<a@sender.test> FOO=bar\r\n", 555),
        (b"MAIL FROM:<a@sender.test> SIZE=99999999999\r\n", 552),
        (b"MAIL FROM:<a@sender.test> SIZE=abc\r\n", 501),
        (b"MAIL FROM:a@sender.test\r\n", 250),
        (b"MAIL FROM: <a@sender.test>\r\n", 250),
        (b"MAIL FROM:<>\r\n", 250),
        (b"MAIL FROM:<@relay.test,@other.test:a@sender.test>\r\n", 250),
        (b'MAIL FROM:<"odd > quoted"@sender.test>\r\n', 250),
        (b"MAIL FROM:<j\xc3\xbcrgen@sender.test> SMTPUTF8\r\n", 250),
        (b"MAIL TO:<a@b.test>\r\n", 501),
    ],
)
def test_mail_from_arguments(command: bytes, code: int) -> None:
    d = session()
    d.feed(b"EHLO c\r\n")
    assert codes(d.feed(command)) == [code]


def test_utf8_recipient_needs_smtputf8() -> None:
    d = session()
    d.feed(b"EHLO c\r\nMAIL FROM:<a@sender.test>\r\n")
    assert codes(d.feed("RCPT TO:<jürgen@example.test>\r\n".encode())) == [553]
    d.feed(b"RSET\r\n")
    d.feed(b"MAIL FROM:<a@sender.test> SMTPUTF8\r\n")
    assert codes(d.feed("RCPT TO:<jürgen@example.test>\r\n".encode())) == [250]


def test_sequence_errors() -> None:
    d = session()
    assert codes(d.feed(b"MAIL FROM:<a@b.test>\r\n")) == [503]
    d.feed(b"EHLO c\r\n")
    assert codes(d.feed(b"RCPT TO:<bob@example.test>\r\n")) == [503]
    assert codes(d.feed(b"DATA\r\n")) == [503]
    d.feed(b"MAIL FROM:<a@b.test>\r\n")
    assert codes(d.feed(b"MAIL FROM:<a@b.test>\r\n")) == [503]
    assert codes(d.feed(b"RCPT TO:<x@elsewhere.test>\r\n")) == [554]
    assert codes(d.feed(b"DATA\r\n")) == [554]
    assert codes(d.feed(b"VRFY bob\r\nHELP\r\nNOOP\r\nRSET\r\n")) == [252, 214, 250, 250]
    assert codes(d.feed(b"BOGUS\r\nAUTH PLAIN\r\nEXPN x\r\n")) == [500, 503, 502]


def test_too_many_errors_closes() -> None:
    d = session(max_errors=5)
    out = d.feed(b"BOGUS\r\n" * 10)
    assert codes(out) == [500] * 5 + [421]
    assert d.closed


def test_message_size_limit_in_data() -> None:
    d = session(max_message_size=1000)
    d.feed(ENVELOPE + b"DATA\r\n")
    out = d.feed(b"x" * 80 + b"\r\n" * 1 + (b"y" * 78 + b"\r\n") * 20 + b".\r\n")
    assert codes(out) == [552]
    assert d.messages == []
    assert codes(d.feed(b"NOOP\r\n")) == [250]


def test_long_text_line_refused() -> None:
    d = session()
    d.feed(ENVELOPE + b"DATA\r\n")
    assert codes(d.feed(b"a" * 999 + b"\r\n.\r\n")) == [554]
    d.feed(b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
    assert codes(d.feed(b"a" * 998 + b"\r\n.\r\n")) == [250]


def test_mail_loop_detected() -> None:
    d = session()
    d.feed(ENVELOPE + b"DATA\r\n")
    headers = b"Received: from x by y; date\r\n" * 51
    out = d.feed(headers + b"Subject: loop\r\n\r\nReceived: in body does not count\r\n.\r\n")
    assert out.startswith(b"554 5.4.6")
    d.feed(b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
    out = d.feed(b"Received: x\r\n" * 50 + b"\r\nbody\r\n.\r\n")
    assert codes(out) == [250]


def test_bdat_chunks_and_pipelining() -> None:
    d = session()
    out = d.feed(ENVELOPE + b"BDAT 5\r\nHello" + b"BDAT 8 LAST\r\n world\r\n" + b"NOOP\r\n")
    assert codes(out) == [250, 250, 250, 250, 250, 250]
    assert d.messages == [b"Hello world\r\n"]


def test_bdat_without_recipients_consumes_octets() -> None:
    d = session()
    d.feed(b"EHLO c\r\nMAIL FROM:<a@sender.test>\r\n")
    out = d.feed(b"BDAT 6 LAST\r\nNOOP\r\n" + b"NOOP\r\n")
    assert codes(out) == [554, 250]


def test_bdat_bare_lf_refused() -> None:
    d = session()
    out = d.feed(ENVELOPE + b"BDAT 6 LAST\r\nab\ncd\r\n")
    assert out.endswith(b"\r\n521 5.5.2 Error: bare <CR> or <LF> received\r\n")
    assert d.messages == []


def test_bdat_size_limit() -> None:
    d = session(max_message_size=10)
    out = d.feed(ENVELOPE + b"BDAT 8\r\n12345678BDAT 8 LAST\r\n12345678")
    assert codes(out)[-2:] == [250, 552]
    assert codes(d.feed(b"BDAT 2 LAST\r\nab")) == [503]  # the transaction is over
    assert d.messages == []


def test_data_then_bdat_mixing_is_out_of_sequence() -> None:
    d = session()
    d.feed(ENVELOPE + b"BDAT 2\r\nab")
    assert codes(d.feed(b"DATA\r\n")) == [503]
    assert codes(d.feed(b"BDAT 2 LAST\r\n\r\n")) == [250]
    assert d.messages == [b"ab\r\n"]


def test_timeout_and_shutdown() -> None:
    d = session()
    d.feed(b"EHLO c\r\n")
    assert d.core.shutdown()
    assert d.core.data_to_send().startswith(b"421 4.3.2")
    d = session()
    d.feed(ENVELOPE + b"DATA\r\n")
    assert not d.core.shutdown()  # a message is in flight: let it finish
    d.core.timeout()
    assert d.core.data_to_send().startswith(b"421 4.4.2")


def test_postmaster_without_domain() -> None:
    d = session()
    d.feed(b"EHLO c\r\nMAIL FROM:<a@sender.test>\r\n")
    assert codes(d.feed(b"RCPT TO:<Postmaster>\r\n")) == [250]
    rcpt = [e for e in d.events if isinstance(e, ev.RcptTo)]
    assert rcpt[-1].recipient is None
