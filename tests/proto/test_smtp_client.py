"""SMTP client core, as transcripts: server lines in, client bytes out (no sockets, no loop).

The last tests wire the client core to the server core over a fake wire."""

from __future__ import annotations

import pytest

from mailhouse.errors import Reply
from mailhouse.proto.smtp import client as smtp
from mailhouse.proto.smtp.client import (
    Closed,
    DataEncoder,
    NeedData,
    Ready,
    SendBody,
    SmtpClient,
    StartTls,
    Transaction,
    TransactionDone,
    to_wire,
)
from mailhouse.proto.smtp.replies import (
    MAX_REPLY_LINE,
    MAX_REPLY_TEXT,
    Capabilities,
    ReplyReader,
)
from tests.proto.smtp_driver import Driver

GREETING = b"220 mx.remote.test ESMTP\r\n"
EHLO_FULL = (b"250-mx.remote.test\r\n250-PIPELINING\r\n250-SIZE 10000\r\n250-8BITMIME\r\n"
             b"250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES\r\n")
EHLO_PLAIN = b"250-mx.remote.test\r\n250 ENHANCEDSTATUSCODES\r\n"


def events(c: SmtpClient) -> list[smtp.Event]:
    """Run the core until it needs bytes (or closes); the events it produced."""
    out: list[smtp.Event] = []
    for _ in range(1000):
        event = c.next_event()
        if isinstance(event, NeedData):
            return out
        out.append(event)
        if isinstance(event, Closed):
            return out
    raise AssertionError("the core never stopped")


def feed(c: SmtpClient, data: bytes) -> list[smtp.Event]:
    c.receive_data(data)
    return events(c)


def ready(ehlo: bytes = EHLO_FULL, **kw: bool) -> SmtpClient:
    c = SmtpClient("client.test", **kw)
    assert events(c) == [] and c.data_to_send() == b""
    assert feed(c, GREETING) == []
    assert c.data_to_send() == b"EHLO client.test\r\n"
    evs = feed(c, ehlo)
    assert len(evs) == 1 and isinstance(evs[0], Ready), evs
    assert c.data_to_send() == b""
    return c


def tx(*rcpts: str, size: int = 100, **kw: bool) -> Transaction:
    return Transaction("sender@here.test", rcpts or ("a@remote.test",), size, **kw)


def done(evs: list[smtp.Event]) -> TransactionDone:
    found = [e for e in evs if isinstance(e, TransactionDone)]
    assert len(found) == 1, evs
    return found[0]


def codes(result: TransactionDone) -> list[int]:
    return [r.reply.code for r in result.results]


def send_message(c: SmtpClient, body: bytes) -> None:
    c.send_body(body)
    c.end_body()


# --- session setup -------------------------------------------------------------------------------

def test_one_message_without_pipelining_one_command_per_reply() -> None:
    c = ready(EHLO_PLAIN)
    c.start_transaction(tx("a@remote.test", "b@remote.test"))
    assert c.data_to_send() == b"MAIL FROM:<sender@here.test>\r\n"
    assert feed(c, b"250 2.1.0 Ok\r\n") == []
    assert c.data_to_send() == b"RCPT TO:<a@remote.test>\r\n"
    feed(c, b"250 2.1.5 Ok\r\n")
    assert c.data_to_send() == b"RCPT TO:<b@remote.test>\r\n"
    feed(c, b"250 2.1.5 Ok\r\n")
    assert c.data_to_send() == b"DATA\r\n"
    assert feed(c, b"354 go\r\n") == [SendBody()]
    send_message(c, b"Subject: hi\r\n\r\nbody\r\n")
    assert c.data_to_send() == b"Subject: hi\r\n\r\nbody\r\n.\r\n"
    assert c.awaiting_final_reply
    result = done(feed(c, b"250 2.0.0 Ok: queued as X\r\n"))
    assert codes(result) == [250, 250]
    assert result.results[0].reply == Reply(250, "2.0.0", "Ok: queued as X")
    assert result.results[0].delivered and result.replied
    assert c.state is smtp.State.READY


def test_pipelining_sends_the_envelope_in_one_write_and_matches_replies_in_order() -> None:
    c = ready()
    c.start_transaction(tx("a@remote.test", "b@remote.test", "c@remote.test", size=321))
    assert c.data_to_send() == (
        b"MAIL FROM:<sender@here.test> SIZE=321\r\nRCPT TO:<a@remote.test>\r\n"
        b"RCPT TO:<b@remote.test>\r\nRCPT TO:<c@remote.test>\r\nDATA\r\n")
    evs = feed(c, b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 <b@remote.test>: User unknown\r\n"
                  b"450 4.2.0 Greylisted\r\n354 End data\r\n")
    assert evs == [SendBody()]
    send_message(c, b"x\r\n")
    result = done(feed(c, b"250 2.0.0 Queued\r\n"))
    assert codes(result) == [250, 550, 450]
    assert result.results[1].reply == Reply(550, "5.1.1", "<b@remote.test>: User unknown")
    assert result.results[1].permanent and not result.results[2].permanent


def test_all_recipients_refused_means_no_data_and_rset_before_the_next_transaction() -> None:
    c = ready()
    c.start_transaction(tx("a@remote.test"))
    c.data_to_send()
    result = done(feed(c, b"250 Ok\r\n550 5.1.1 No such user\r\n554 5.5.1 No valid recipients\r\n"))
    assert codes(result) == [550]
    assert c.data_to_send() == b""  # no message content
    c.start_transaction(tx("b@remote.test"))
    assert c.data_to_send().startswith(b"RSET\r\nMAIL FROM:")
    assert feed(c, b"250 Ok\r\n250 Ok\r\n250 Ok\r\n354 go\r\n") == [SendBody()]


def test_rset_without_pipelining_waits_for_its_reply() -> None:
    c = ready(EHLO_PLAIN)
    c.start_transaction(tx("a@remote.test"))
    c.data_to_send()
    feed(c, b"250 Ok\r\n")
    c.data_to_send()
    assert codes(done(feed(c, b"550 no\r\n"))) == [550]
    assert c.data_to_send() == b""
    c.start_transaction(tx("b@remote.test"))
    assert c.data_to_send() == b"RSET\r\n"
    feed(c, b"250 Ok\r\n")
    assert c.data_to_send() == b"MAIL FROM:<sender@here.test>\r\n"


def test_data_354_after_every_rcpt_failed_ends_with_a_lone_dot() -> None:
    # RFC 2920 §3.1: a pipelining server may accept DATA though no recipient was accepted.
    c = ready()
    c.start_transaction(tx("a@remote.test"))
    c.data_to_send()
    assert feed(c, b"250 Ok\r\n550 5.1.1 No\r\n354 go\r\n") == []
    assert c.data_to_send() == b".\r\n"
    assert codes(done(feed(c, b"554 5.5.1 No recipients\r\n"))) == [550]
    assert c.state is smtp.State.READY


def test_pipelined_mail_rejection_applies_to_every_recipient() -> None:
    c = ready()
    c.start_transaction(tx("a@remote.test", "b@remote.test"))
    c.data_to_send()
    result = done(feed(c, b"553 5.7.1 Sender rejected\r\n503 5.5.1 Need MAIL\r\n"
                          b"503 5.5.1 Need MAIL\r\n503 5.5.1 Need MAIL\r\n"))
    assert [r.reply for r in result.results] == [Reply(553, "5.7.1", "Sender rejected")] * 2
    c.start_transaction(tx("c@remote.test"))  # no transaction was open: no RSET
    assert c.data_to_send().startswith(b"MAIL FROM:")


def test_data_rejection_applies_to_the_accepted_recipients() -> None:
    c = ready()
    c.start_transaction(tx("a@remote.test", "b@remote.test"))
    c.data_to_send()
    result = done(feed(c, b"250 Ok\r\n250 Ok\r\n550 5.1.1 No\r\n451 4.3.0 Try later\r\n"))
    assert codes(result) == [451, 550]


def test_ehlo_refused_falls_back_to_helo_and_uses_no_extensions() -> None:
    c = SmtpClient("client.test")
    feed(c, GREETING)
    assert c.data_to_send() == b"EHLO client.test\r\n"
    assert feed(c, b"502 5.5.2 Command not recognized\r\n") == []
    assert c.data_to_send() == b"HELO client.test\r\n"
    (event,) = feed(c, b"250 mx.remote.test\r\n")
    assert isinstance(event, Ready) and not event.capabilities.esmtp
    c.start_transaction(tx(size=5, body_8bit=True))
    assert c.data_to_send() == b"MAIL FROM:<sender@here.test>\r\n"  # no SIZE, no BODY


def test_helo_refused_too_closes_the_session() -> None:
    c = SmtpClient("client.test")
    feed(c, GREETING)
    feed(c, b"500 no\r\n")
    assert feed(c, b"550 go away\r\n") == [Closed(Reply(550, None, "go away"))]


@pytest.mark.parametrize("greeting", [b"554 5.7.1 No SMTP service here\r\n",
                                      b"421 4.3.2 Busy\r\n"])
def test_a_refusing_greeting_closes_before_ready(greeting: bytes) -> None:
    c = SmtpClient("client.test")
    (event,) = feed(c, greeting)
    assert isinstance(event, Closed) and event.reply is not None
    assert event.reply.code == int(greeting[:3])
    assert c.data_to_send() == b""


# --- STARTTLS ------------------------------------------------------------------------------------

def test_starttls_forgets_clear_text_capabilities_and_injected_replies() -> None:
    c = SmtpClient("client.test")
    feed(c, GREETING)
    c.data_to_send()
    assert feed(c, b"250-mx.remote.test\r\n250-SIZE 10\r\n250 STARTTLS\r\n") == []
    assert c.data_to_send() == b"STARTTLS\r\n"
    # An attacker appends a fake EHLO reply to the 220 (NO STARTTLS, response injection).
    assert feed(c, b"220 2.0.0 Go ahead\r\n250-evil\r\n250 SIZE 1\r\n") == [StartTls()]
    c.receive_data(b"250 more injected\r\n")  # arrives during the handshake: ignored
    c.tls_established()
    assert c.data_to_send() == b"EHLO client.test\r\n"
    (event,) = feed(c, b"250-mx.remote.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
    assert isinstance(event, Ready) and event.tls
    assert event.capabilities.size is None and event.capabilities.pipelining
    c.start_transaction(tx(size=500))
    assert c.data_to_send().startswith(b"MAIL FROM:<sender@here.test>\r\nRCPT")  # no SIZE


def test_starttls_refused_continues_in_clear_text() -> None:
    c = SmtpClient("client.test")
    feed(c, GREETING)
    c.data_to_send()
    feed(c, b"250-mx\r\n250 STARTTLS\r\n")
    assert c.data_to_send() == b"STARTTLS\r\n"
    (event,) = feed(c, b"454 4.7.0 TLS not available\r\n")
    assert isinstance(event, Ready) and not event.tls


def test_starttls_not_wanted_is_not_sent() -> None:
    c = ready(b"250-mx\r\n250 STARTTLS\r\n", starttls=False)
    assert not c.tls_active


def test_tls_established_only_after_starttls() -> None:
    c = ready()
    with pytest.raises(RuntimeError):
        c.tls_established()


# --- malformed replies ---------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [
    b"25\r\n",  # short code
    b"abc Ok\r\n",  # not a code
    b"650 Ok\r\n",  # no such class
    b"290 Ok\r\n",  # second digit above 5
    b"250x Ok\r\n",  # bad separator
    b"250-first\r\n251 second\r\n",  # code changes mid-reply
    b"250-x\r\n" * 150,  # endless multi-line reply
    b"250 " + b"x" * (MAX_REPLY_LINE + 10) + b"\r\n",  # overlong line
    b"250 " + b"x" * 100_000,  # a line that never ends
])
def test_malformed_replies_end_the_session_with_a_temporary_error(bad: bytes) -> None:
    c = ready()
    c.start_transaction(tx("a@remote.test", "b@remote.test"))
    c.data_to_send()
    evs = feed(c, bad)
    result = done(evs)
    assert codes(result) == [451, 451]
    assert result.results[0].reply.enhanced == "4.5.0"
    assert "malformed" in result.results[0].reply.text
    assert isinstance(evs[-1], Closed) and c.state is smtp.State.CLOSED


def test_flood_of_input_is_refused_not_stored() -> None:
    c = ready()
    c.start_transaction(tx())
    c.data_to_send()
    feed(c, b"250 Ok\r\n250 Ok\r\n354 go\r\n")
    for _ in range(40):  # the server floods while we stream the body
        c.receive_data(b"x" * 65536)
    send_message(c, b"body\r\n")
    assert codes(done(events(c))) == [451]


def test_unsolicited_reply_on_an_idle_connection() -> None:
    c = ready()
    (event,) = feed(c, b"421 4.4.2 Idle timeout\r\n")
    assert event == Closed(Reply(421, "4.4.2", "Idle timeout"))
    c = ready()
    (event,) = feed(c, b"250 surprise\r\n")
    assert isinstance(event, Closed) and event.reply == smtp.UNEXPECTED_REPLY


def test_reply_split_at_every_byte_boundary() -> None:
    for cut in range(1, len(EHLO_FULL)):
        c = SmtpClient("client.test")
        feed(c, GREETING)
        assert feed(c, EHLO_FULL[:cut]) == []
        (event,) = feed(c, EHLO_FULL[cut:])
        assert isinstance(event, Ready) and event.capabilities.size == 10000, cut


def test_multi_line_reply_text_enhanced_codes_and_control_characters() -> None:
    reader = ReplyReader()
    reader.feed(b"550-5.1.1 The email account\r\n550-5.1.1 does not\x00 exist.\x1b[31m\n"
                b"550 5.1.1 https://support.test\r\n")
    raw = reader.next()
    assert raw is not None
    assert raw.to_reply() == Reply(550, "5.1.1", "The email account\ndoes not? exist.?[31m\n"
                                                 "https://support.test")
    reader.feed(b"250\r\n450 5.1.1 class mismatch is not an enhanced code\r\n")
    first, second = reader.next(), reader.next()
    assert first is not None and first.to_reply() == Reply(250, None, "")
    assert second is not None and second.to_reply().enhanced is None


def test_long_reply_text_is_cut_for_storage() -> None:
    reader = ReplyReader()
    reader.feed(b"".join(b"550-" + b"x" * 1000 + b"\r\n" for _ in range(20)) + b"550 end\r\n")
    raw = reader.next()
    assert raw is not None and len(raw.lines) == 21
    text = raw.to_reply().text
    assert len(text) == MAX_REPLY_TEXT and text.endswith("...")


def test_capabilities_from_ehlo() -> None:
    caps = Capabilities.from_ehlo(["mx hello", "size 0", "8BITMIME", "AUTH=LOGIN", "bad kw!"])
    assert caps.size == 0 and caps.eightbitmime and not caps.smtputf8
    assert Capabilities.from_ehlo(["mx", "SIZE nonsense"]).size == 0
    assert Capabilities(False).size is None


# --- 421, timeouts, lost connections -------------------------------------------------------------

def test_421_mid_transaction_keeps_definite_refusals_and_defers_the_rest() -> None:
    c = ready()
    c.start_transaction(tx("a@remote.test", "b@remote.test", "c@remote.test"))
    c.data_to_send()
    evs = feed(c, b"250 Ok\r\n550 5.1.1 No\r\n421 4.3.0 Shutting down\r\n")
    assert codes(done(evs)) == [550, 421, 421]
    assert isinstance(evs[-1], Closed)


def test_timeout_waiting_for_the_final_reply_defers_and_says_so() -> None:
    c = ready()
    c.start_transaction(tx("a@remote.test"))
    c.data_to_send()
    feed(c, b"250 Ok\r\n250 Ok\r\n354 go\r\n")
    send_message(c, b"x\r\n")
    assert events(c) == [] and c.awaiting_final_reply
    c.timeout()
    result = done(events(c))
    assert result.results[0].reply == smtp.FINAL_TIMEOUT
    assert not result.results[0].permanent and not result.results[0].delivered


def test_connection_lost_mid_body_and_mid_envelope() -> None:
    c = ready()
    c.start_transaction(tx("a@remote.test", "b@remote.test"))
    c.data_to_send()
    feed(c, b"250 Ok\r\n250 Ok\r\n550 No\r\n354 go\r\n")
    c.send_body(b"half a mess")
    c.connection_lost()
    evs = events(c)
    assert [r.reply for r in done(evs).results] == [smtp.LOST, Reply(550, None, "No")]
    assert evs[-1] == Closed(smtp.LOST)
    c = ready(EHLO_PLAIN)
    c.start_transaction(tx("a@remote.test"))
    c.connection_lost()
    result = done(events(c))
    assert codes(result) == [451] and not result.replied


def test_abort_ends_the_session_without_a_final_dot() -> None:
    c = ready()
    c.start_transaction(tx())
    c.data_to_send()
    feed(c, b"250 Ok\r\n250 Ok\r\n354 go\r\n")
    c.send_body(b"partial")
    c.abort(Reply(451, "4.3.0", "Local read error"))
    assert codes(done(events(c))) == [451]
    assert not c.data_to_send().endswith(b".\r\n")


def test_quit() -> None:
    c = ready()
    c.quit()
    assert c.data_to_send() == b"QUIT\r\n"
    assert feed(c, b"221 2.0.0 Bye\r\n") == [Closed(None)]
    with pytest.raises(RuntimeError):
        c.start_transaction(tx())


# --- what the message needs from the remote ------------------------------------------------------

def test_smtputf8_needed_and_missing_is_permanent_and_sends_nothing() -> None:
    c = ready(EHLO_PLAIN)
    c.start_transaction(tx("a@remote.test", smtputf8=True))
    result = done(events(c))
    assert [r.reply for r in result.results] == [smtp.SMTPUTF8_UNSUPPORTED]
    assert result.results[0].reply.enhanced == "5.6.7" and result.results[0].permanent
    assert c.data_to_send() == b"" and c.state is smtp.State.READY
    c.start_transaction(Transaction("s@here.test", ("bücher@remote.test",), 10))
    assert codes(done(events(c))) == [553]  # a UTF-8 address needs it even without the flag


def test_smtputf8_offered_is_requested() -> None:
    c = ready()
    c.start_transaction(Transaction("s@here.test", ("bücher@remote.test",), 10))
    assert c.data_to_send().startswith(
        "MAIL FROM:<s@here.test> SIZE=10 SMTPUTF8\r\nRCPT TO:<bücher@remote.test>\r\n"
        .encode())


def test_size_over_the_remote_limit_is_permanent_and_sends_nothing() -> None:
    c = ready()
    c.start_transaction(tx(size=10001))
    assert [r.reply for r in done(events(c)).results] == [smtp.TOO_BIG_FOR_REMOTE]
    assert c.data_to_send() == b""
    c = ready(b"250-mx\r\n250 SIZE 0\r\n")  # no fixed limit
    c.start_transaction(tx(size=10**9))
    assert c.data_to_send() == b"MAIL FROM:<sender@here.test> SIZE=1000000000\r\n"


def test_8bit_body_labelled_when_offered_and_sent_unlabelled_otherwise() -> None:
    c = ready()
    c.start_transaction(tx(body_8bit=True))
    assert c.data_to_send().startswith(b"MAIL FROM:<sender@here.test> SIZE=100 BODY=8BITMIME\r\n")
    c = ready(EHLO_PLAIN)
    c.start_transaction(tx(body_8bit=True))
    assert c.data_to_send() == b"MAIL FROM:<sender@here.test>\r\n"  # decision: send anyway


def test_control_characters_never_reach_the_wire() -> None:
    c = ready()
    c.start_transaction(tx("a@remote.test\r\nRCPT TO:<evil@x.test>", "b@remote.test"))
    out = c.data_to_send()
    assert b"evil" not in out and out.count(b"RCPT") == 1
    assert feed(c, b"250 Ok\r\n250 Ok\r\n354 go\r\n") == [SendBody()]
    send_message(c, b"x\r\n")
    assert codes(done(feed(c, b"250 Ok\r\n"))) == [553, 250]
    c.start_transaction(Transaction("s\n@here.test", ("a@remote.test",), 1))
    assert [r.reply for r in done(events(c)).results] == [smtp.BAD_SENDER]
    with pytest.raises(ValueError):
        SmtpClient("bad name\r\n")


def test_null_sender() -> None:
    c = ready(EHLO_PLAIN)
    c.start_transaction(Transaction("", ("a@remote.test",), 1))
    assert c.data_to_send() == b"MAIL FROM:<>\r\n"


# --- dot-stuffing and line endings ---------------------------------------------------------------

@pytest.mark.parametrize(("message", "wire"), [
    (b"", b".\r\n"),
    (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n"),
    (b"no final newline", b"no final newline\r\n.\r\n"),
    (b".starts with a dot\r\n", b"..starts with a dot\r\n.\r\n"),
    (b"a\r\n.\r\nb\r\n", b"a\r\n..\r\nb\r\n.\r\n"),
    (b"bare\nlf\n.dot\n", b"bare\r\nlf\r\n..dot\r\n.\r\n"),
    (b"bare\rcr\r.dot\r", b"bare\r\ncr\r\n..dot\r\n.\r\n"),
    (b"mixed\r\r\n\n\r.", b"mixed\r\n\r\n\r\n\r\n..\r\n.\r\n"),
    (b"x\n.\n", b"x\r\n..\r\n.\r\n"),  # the smuggling ending of CVE-2023-51764
    (b"x\r\n..\r\n", b"x\r\n...\r\n.\r\n"),
])
def test_to_wire(message: bytes, wire: bytes) -> None:
    assert to_wire(message) == wire


def wire_is_clean(wire: bytes) -> bool:
    return wire.count(b"\r") == wire.count(b"\r\n") == wire.count(b"\n")


def test_encoder_is_independent_of_chunk_boundaries() -> None:
    message = b"Subject: x\r\n\r\n.a\n..b\r.c\r\nd\r\r\n.\r\ne\n\r.f"
    expected = to_wire(message)
    assert wire_is_clean(expected)
    for cut in range(len(message) + 1):
        for cut2 in (cut, min(cut + 1, len(message)), min(cut + 3, len(message))):
            enc = DataEncoder()
            wire = (enc.encode(message[:cut]) + enc.encode(message[cut:cut2])
                    + enc.encode(message[cut2:]) + enc.finish())
            assert wire == expected, (cut, cut2)
    enc = DataEncoder()
    assert b"".join(enc.encode(message[i:i + 1]) for i in range(len(message))) + (
        enc.finish()) == expected


# --- client core against the server core ---------------------------------------------------------

def converse(c: SmtpClient, server: Driver, body: bytes, rounds: int = 50) -> TransactionDone:
    """Shuttle bytes both ways until the transaction is done."""
    for _ in range(rounds):
        for event in events(c):
            if isinstance(event, SendBody):
                send_message(c, body)
            elif isinstance(event, TransactionDone):
                return event
        c.receive_data(server.feed(c.data_to_send()))
    raise AssertionError("no result")


def test_client_core_against_server_core_with_pipelining_and_stuffing() -> None:
    server = Driver.new(tls_available=False)
    c = SmtpClient("client.test")
    c.receive_data(server.core.data_to_send())
    assert events(c) == []
    c.receive_data(server.feed(c.data_to_send()))
    (ready_event,) = events(c)
    assert isinstance(ready_event, Ready) and ready_event.capabilities.pipelining
    body = b"Subject: s\n\n.one\n..two\r\nbare\rcr\nend"
    c.start_transaction(Transaction("a@sender.test", ("bob@example.test", "nobody@example.test",
                                                      "carol@example.test"), len(body)))
    result = converse(c, server, body)
    assert codes(result) == [250, 550, 250]
    assert server.messages == [b"Subject: s\r\n\r\n.one\r\n..two\r\nbare\r\ncr\r\nend\r\n"]
    # A second transaction on the same connection (connection reuse).
    c.start_transaction(Transaction("", ("bob@example.test",), 1))
    assert codes(converse(c, server, b"second")) == [250]
    assert server.messages[-1] == b"second\r\n"
    c.quit()
    server.feed(c.data_to_send())
    assert server.closed
