"""POP3 server core, as transcripts in the style of RFC 1939's examples: client bytes in, server
lines out (no sockets, no loop)."""

from __future__ import annotations

import random
import re
from typing import Any

import pytest

from mailhouse.proto.pop3 import events as ev
from mailhouse.proto.pop3.server import (
    LoginResult,
    MaildropEntry,
    Pop3Server,
    Pop3ServerConfig,
    State,
)
from mailhouse.proto.pop3.stuffing import MessageStuffer
from tests.proto.pop3_driver import GOOD, Driver, b64, unstuff

# A message with every awkward line: a lone ".", a leading ".", a "..", and ".\r\n" at the end.
DOTS = (b"From: a@sender.test\r\nSubject: dots\r\n\r\nHello\r\n.\r\n.leading\r\n..two\r\n"
        b"a . in the middle\r\n.\r\n")
PLAIN = b"Subject: plain\r\n\r\nline 1\r\nline 2\r\nline 3\r\n"
NO_BODY = b"Subject: headers only\r\nX-Other: y\r\n"
MAILDROP = [DOTS, PLAIN, NO_BODY]
LOGIN = b"USER alice@example.test\r\nPASS secret\r\n"


def logged_in(messages: list[bytes] | None = None, **config: Any) -> Driver:
    d = Driver.new(MAILDROP if messages is None else messages, **config)
    out = d.log_in()
    assert out.endswith(b"+OK maildrop has %d messages" % len(d.messages) + b" (%d octets)\r\n"
                        % sum(len(m) for m in d.messages))
    assert d.core.state is State.TRANSACTION
    return d


def state_of(d: Driver) -> State:
    return d.core.state  # (a call, so mypy does not carry an earlier narrowing past a change)


def lines(out: bytes) -> list[bytes]:
    return out.split(b"\r\n")[:-1]


# --- a whole session -------------------------------------------------------------------------
def test_full_session_like_rfc1939() -> None:
    d = Driver.new(MAILDROP)
    assert d.feed(b"USER alice@example.test\r\n") == b"+OK Send PASS\r\n"
    total = sum(map(len, MAILDROP))
    assert d.feed(b"PASS secret\r\n") == b"+OK maildrop has 3 messages (%d octets)\r\n" % total
    assert d.credentials == [ev.Credentials("USER", *GOOD, "")]
    assert d.feed(b"STAT\r\n") == b"+OK 3 %d\r\n" % total
    assert lines(d.feed(b"LIST\r\n")) == [
        b"+OK 3 messages (%d octets)" % total,
        b"1 %d" % len(DOTS), b"2 %d" % len(PLAIN), b"3 %d" % len(NO_BODY), b".",
    ]
    assert d.feed(b"LIST 2\r\n") == b"+OK 2 %d\r\n" % len(PLAIN)
    assert d.feed(b"UIDL\r\n") == b"+OK\r\n1 uid-1\r\n2 uid-2\r\n3 uid-3\r\n.\r\n"
    assert d.feed(b"UIDL 3\r\n") == b"+OK 3 uid-3\r\n"
    out = d.feed(b"RETR 2\r\n")
    assert out == b"+OK %d octets\r\n" % len(PLAIN) + PLAIN + b".\r\n"
    assert d.feed(b"DELE 1\r\n") == b"+OK Message 1 deleted\r\n"
    assert d.feed(b"STAT\r\n") == b"+OK 2 %d\r\n" % (total - len(DOTS))
    assert d.feed(b"NOOP\r\n") == b"+OK\r\n"
    assert d.commits == []
    assert d.feed(b"QUIT\r\n") == b"+OK pop.example.test POP3 server signing off\r\n"
    assert d.commits == [(0,)]
    assert d.closed


def test_retr_of_a_message_with_dot_lines_is_stuffed() -> None:
    # Security checklist 25: a line that is a single "." goes out as "..".
    d = logged_in()
    out = d.feed(b"RETR 1\r\n")
    assert out == (b"+OK %d octets\r\n" % len(DOTS) + b"From: a@sender.test\r\nSubject: dots\r\n"
                   b"\r\nHello\r\n..\r\n..leading\r\n...two\r\na . in the middle\r\n..\r\n.\r\n")
    assert unstuff(out) == DOTS


def test_pipelined_commands_answered_in_order() -> None:
    # RFC 2449 §6.6: everything in one write; every response, in order, and a Commit at the end.
    d = Driver.new(MAILDROP)
    out = d.feed(LOGIN + b"STAT\r\nLIST 3\r\nRETR 3\r\nTOP 2 1\r\nDELE 3\r\nDELE 2\r\nUIDL\r\n"
                 b"QUIT\r\n")
    assert lines(out) == [
        b"+OK Send PASS",
        b"+OK maildrop has 3 messages (%d octets)" % sum(map(len, MAILDROP)),
        b"+OK 3 %d" % sum(map(len, MAILDROP)),
        b"+OK 3 %d" % len(NO_BODY),
        b"+OK %d octets" % len(NO_BODY), b"Subject: headers only", b"X-Other: y", b".",
        b"+OK Top of message follows", b"Subject: plain", b"", b"line 1", b".",
        b"+OK Message 3 deleted",
        b"+OK Message 2 deleted",
        b"+OK", b"1 uid-1", b".",
        b"+OK pop.example.test POP3 server signing off",
    ]
    assert d.commits == [(1, 2)]


def test_commands_pipelined_behind_a_pending_decision_wait_their_turn() -> None:
    d = Driver.new(MAILDROP)
    d.core.receive_data(LOGIN + b"STAT\r\n")
    assert isinstance(d.core.next_event(), ev.Credentials)
    assert d.core.state is State.LOGIN
    assert isinstance(d.core.next_event(), ev.NeedData)  # STAT waits for the login
    d.core.login_result(LoginResult.OK, d.maildrop())
    assert isinstance(d.core.next_event(), ev.NeedData)
    assert lines(d.core.data_to_send())[-1] == b"+OK 3 %d" % sum(map(len, MAILDROP))


# --- TLS, CAPA, plaintext --------------------------------------------------------------------
BASE_CAPA = [b"+OK Capability list follows", b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE",
             b"PIPELINING", b"EXPIRE NEVER"]
LOGIN_CAPA = [b"USER", b"SASL PLAIN LOGIN"]
END_CAPA = [b"IMPLEMENTATION mailhouse", b"."]


@pytest.mark.parametrize(
    ("tls", "plaintext", "tls_available", "expected"),
    [
        # Port 110 before STLS: no USER, no SASL (RFC 2595 §2.2, security checklist 6).
        (False, False, True, [*BASE_CAPA, b"STLS", *END_CAPA]),
        (False, True, True, [*BASE_CAPA, *LOGIN_CAPA, b"STLS", *END_CAPA]),
        (False, False, False, [*BASE_CAPA, *END_CAPA]),
        (True, False, True, [*BASE_CAPA, *LOGIN_CAPA, *END_CAPA]),  # after STLS, or port 995
    ],
)
def test_capa_lists_only_what_holds(tls: bool, plaintext: bool, tls_available: bool,
                                    expected: list[bytes]) -> None:
    d = Driver.new(tls=tls, allow_plaintext_auth=plaintext, tls_available=tls_available)
    out = d.feed(b"CAPA\r\n")
    assert lines(out) == expected
    assert b"LOGIN-DELAY" not in out and b"APOP" not in out


def test_capa_after_login_announces_the_same_list() -> None:
    # RFC 2449 §5: capabilities of the AUTHORIZATION state are announced in both states.
    d = Driver.new(MAILDROP)
    before = d.feed(b"CAPA\r\n")
    d.log_in()
    assert d.feed(b"CAPA\r\n") == before


def test_plaintext_logins_refused_before_tls() -> None:
    # Security checklist 6: port 110 refuses USER/PASS (and AUTH) before STLS.
    d = Driver.new(MAILDROP, tls=False)
    refused = b"-ERR Plaintext authentication disallowed, use STLS first\r\n"
    assert d.feed(b"USER alice@example.test\r\n") == refused
    assert d.feed(b"PASS secret\r\n") == refused
    assert d.feed(b"AUTH PLAIN " + b64(f"\0{GOOD[0]}\0{GOOD[1]}") + b"\r\n") == refused
    assert d.feed(b"AUTH\r\n") == b"+OK\r\n.\r\n"  # nothing usable yet, as CAPA says
    assert d.credentials == []
    assert d.core.errors == 3
    d = Driver.new(tls=False, tls_available=False)
    assert d.feed(b"USER a\r\n") == b"-ERR Plaintext authentication disallowed\r\n"


def test_plaintext_logins_when_configured() -> None:
    d = Driver.new(MAILDROP, tls=False, allow_plaintext_auth=True)
    assert d.log_in().endswith(b"+OK maildrop has 3 messages (%d octets)\r\n"
                               % sum(map(len, MAILDROP)))


def test_stls_discards_pipelined_input_and_forgets_user() -> None:
    # Security checklist 4: "STLS\r\nPASS …" in one segment; nothing after STLS runs, before or
    # after the handshake, and the USER given before STLS is forgotten (RFC 2595 §4).
    d = Driver.new(MAILDROP, tls=False, allow_plaintext_auth=True)
    assert d.feed(b"USER alice@example.test\r\n") == b"+OK Send PASS\r\n"
    out = d.feed(b"STLS\r\nPASS secret\r\n")
    assert out == b"+OK Begin TLS negotiation\r\n"
    assert d.tls_requested and d.core.state is State.TLS
    assert d.feed(b"NOOP\r\n") == b""  # bytes during the handshake are not ours
    d.start_tls()
    assert state_of(d) is State.AUTHORIZATION and d.core.tls_active
    assert d.feed(b"") == b""  # no greeting after STLS
    assert d.feed(b"PASS secret\r\n") == b"-ERR Send USER first\r\n"
    assert d.credentials == []
    capa = d.feed(b"CAPA\r\n")
    assert b"STLS" not in capa and b"USER" in capa
    # Security checklist 7: no second STLS, and none after login.
    assert d.feed(b"STLS\r\n") == b"-ERR Command not permitted when TLS active\r\n"
    d.log_in()
    assert d.feed(b"STLS\r\n") == b"-ERR STLS not valid after login\r\n"


def test_stls_refusals() -> None:
    d = Driver.new(tls=False, tls_available=False)
    assert d.feed(b"STLS\r\n") == b"-ERR STLS not available\r\n"
    d = Driver.new(tls=False)
    assert d.feed(b"STLS now\r\n") == b"-ERR STLS takes no arguments\r\n"
    with pytest.raises(RuntimeError):
        d.core.tls_established()


# --- AUTH (RFC 5034) -------------------------------------------------------------------------
def test_auth_plain_with_initial_response() -> None:
    d = Driver.new(MAILDROP)
    out = d.feed(b"AUTH PLAIN " + b64(f"\0{GOOD[0]}\0{GOOD[1]}") + b"\r\n")
    assert out.startswith(b"+OK maildrop has 3 messages")
    assert d.credentials == [ev.Credentials("PLAIN", *GOOD, "")]
    assert "secret" not in repr(d.credentials[0])


def test_auth_plain_with_continuation_and_authzid() -> None:
    d = Driver.new(MAILDROP)
    assert d.feed(b"auth plain\r\n") == b"+ \r\n"  # RFC 5034 §4: an empty challenge is "+ "
    assert d.core.state is State.SASL
    out = d.feed(b64(f"{GOOD[0]}\0{GOOD[0]}\0{GOOD[1]}") + b"\r\n")
    assert out.startswith(b"+OK maildrop has")
    assert d.credentials == [ev.Credentials("PLAIN", *GOOD, GOOD[0])]


def test_auth_login() -> None:
    d = Driver.new(MAILDROP)
    assert d.feed(b"AUTH LOGIN\r\n") == b"+ VXNlcm5hbWU6\r\n"
    assert d.feed(b64(GOOD[0]) + b"\r\n") == b"+ UGFzc3dvcmQ6\r\n"
    assert d.feed(b64(GOOD[1]) + b"\r\n").startswith(b"+OK maildrop has")
    assert d.credentials == [ev.Credentials("LOGIN", *GOOD, "")]
    d = Driver.new(MAILDROP)
    assert d.feed(b"AUTH LOGIN " + b64(GOOD[0]) + b"\r\n") == b"+ UGFzc3dvcmQ6\r\n"


@pytest.mark.parametrize(
    ("command", "response"),
    [
        (b"AUTH PLAIN\r\n*\r\n", b"+ \r\n-ERR Authentication cancelled\r\n"),
        (b"AUTH LOGIN\r\n*\r\n", b"+ VXNlcm5hbWU6\r\n-ERR Authentication cancelled\r\n"),
        (b"AUTH PLAIN\r\n!!notbase64\r\n",
         b"+ \r\n-ERR Invalid base64 in authentication response\r\n"),
        (b"AUTH CRAM-MD5\r\n", b"-ERR Unsupported authentication mechanism\r\n"),
        (b"AUTH PLAIN =\r\n", b"-ERR [AUTH] Authentication failed\r\n"),
        # RFC 4616: acting as someone else fails exactly as a wrong password does.
        (b"AUTH PLAIN " + b64("bob@example.test\0alice@example.test\0secret") + b"\r\n",
         b"-ERR [AUTH] Authentication failed\r\n"),
        (b"AUTH PLAIN a b\r\n", b"-ERR Syntax: AUTH mechanism [initial-response]\r\n"),
    ],
)
def test_auth_failures_stay_in_authorization(command: bytes, response: bytes) -> None:
    d = Driver.new(MAILDROP)
    assert d.feed(command) == response
    assert d.credentials == []
    assert d.core.state is State.AUTHORIZATION
    assert d.log_in().endswith(b"octets)\r\n")  # and a good login still works


def test_auth_without_mechanism_lists_them() -> None:
    d = Driver.new()
    assert d.feed(b"AUTH\r\n") == b"+OK\r\nPLAIN\r\nLOGIN\r\n.\r\n"


def test_auth_lines_may_exceed_255_octets() -> None:
    # RFC 5034 §4: responses are as long as the mechanism needs; a long initial response is
    # accepted too, up to max_auth_line.
    password = "p" * 400
    d = Driver.new(MAILDROP, login=lambda e: LoginResult.OK)
    out = d.feed(b"AUTH PLAIN " + b64(f"\0{GOOD[0]}\0{password}") + b"\r\n")
    assert out.startswith(b"+OK maildrop")
    assert d.credentials[0].password == password
    d = Driver.new(MAILDROP, login=lambda e: LoginResult.OK)
    d.feed(b"AUTH PLAIN\r\n")
    assert d.feed(b64(f"\0{GOOD[0]}\0{password}") + b"\r\n").startswith(b"+OK maildrop")
    # Past max_auth_line the exchange ends and the session goes on.
    d = Driver.new(max_auth_line=1000)
    d.feed(b"AUTH PLAIN\r\n")
    assert d.feed(b"A" * 2000 + b"\r\n") == b"-ERR Line too long\r\n"
    assert d.core.state is State.AUTHORIZATION
    assert d.feed(b"CAPA\r\n").startswith(b"+OK Capability")


# --- login results ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("result", "response"),
    [
        (LoginResult.FAILED, b"-ERR [AUTH] Authentication failed\r\n"),
        (LoginResult.THROTTLED, b"-ERR [AUTH] Authentication failed\r\n"),  # indistinguishable
        (LoginResult.IN_USE, b"-ERR [IN-USE] Mailbox is locked by another POP3 session\r\n"),
        (LoginResult.SYS_TEMP, b"-ERR [SYS/TEMP] Temporary server problem, try again later\r\n"),
        (LoginResult.SYS_PERM, b"-ERR [SYS/PERM] Mailbox unavailable\r\n"),
    ],
)
def test_login_result_codes(result: LoginResult, response: bytes) -> None:
    d = Driver.new(MAILDROP, login=lambda e: result)
    assert d.feed(LOGIN) == b"+OK Send PASS\r\n" + response
    assert d.core.state is State.AUTHORIZATION
    # RFC 1939 §7: after -ERR to PASS the client starts again at USER.
    assert d.feed(b"PASS secret\r\n") == b"-ERR Send USER first\r\n"
    assert d.core.errors == (2 if result in (LoginResult.FAILED, LoginResult.THROTTLED) else 1)


def test_wrong_password_then_right_one() -> None:
    d = Driver.new(MAILDROP)
    assert d.feed(b"USER alice@example.test\r\nPASS wrong\r\n").endswith(
        b"-ERR [AUTH] Authentication failed\r\n")
    assert d.log_in().startswith(b"+OK Send PASS\r\n+OK maildrop")


def test_pass_keeps_spaces_and_empty_pass_never_asks() -> None:
    # RFC 1939 §7: spaces in the PASS argument are part of the password.
    d = Driver.new(MAILDROP, login=lambda e: LoginResult.FAILED)
    d.feed(b"USER bob\r\nPASS  two words \r\n")
    assert d.credentials[-1].password == " two words "
    assert d.feed(b"USER bob\r\nPASS\r\n").endswith(b"-ERR [AUTH] Authentication failed\r\n")
    assert len(d.credentials) == 1
    assert d.feed(b"USER\r\n") == b"-ERR Syntax: USER name\r\n"


def test_quit_in_authorization_commits_nothing() -> None:
    d = Driver.new(MAILDROP)
    assert d.feed(b"QUIT\r\n") == b"+OK pop.example.test POP3 server signing off\r\n"
    assert d.closed and d.commits == []


# --- TRANSACTION -----------------------------------------------------------------------------
def test_deleted_messages_are_invisible_until_rset() -> None:
    d = logged_in()
    total = sum(map(len, MAILDROP))
    assert d.feed(b"DELE 1\r\n") == b"+OK Message 1 deleted\r\n"
    for command in (b"RETR 1", b"TOP 1 0", b"LIST 1", b"UIDL 1", b"DELE 1"):
        assert d.feed(command + b"\r\n") == b"-ERR Message 1 already deleted\r\n", command
    assert d.feed(b"STAT\r\n") == b"+OK 2 %d\r\n" % (total - len(DOTS))
    assert lines(d.feed(b"LIST\r\n"))[0] == b"+OK 2 messages (%d octets)" % (total - len(DOTS))
    assert d.feed(b"UIDL\r\n") == b"+OK\r\n2 uid-2\r\n3 uid-3\r\n.\r\n"
    assert d.feed(b"RSET\r\n") == b"+OK Maildrop has 3 messages (%d octets)\r\n" % total
    assert d.feed(b"STAT\r\n") == b"+OK 3 %d\r\n" % total
    assert d.feed(b"RETR 1\r\n").startswith(b"+OK %d octets" % len(DOTS))
    d.feed(b"DELE 3\r\nDELE 1\r\n")
    d.feed(b"QUIT\r\n")
    assert d.commits == [(0, 2)]


def test_quit_without_deletions_still_commits() -> None:
    d = logged_in()
    d.feed(b"QUIT\r\n")
    assert d.commits == [()] and d.closed


def test_commit_waits_for_the_store_and_failure_says_so() -> None:
    d = logged_in()
    d.auto_commit = False
    d.feed(b"DELE 2\r\n")
    assert d.feed(b"QUIT\r\nNOOP\r\n") == b""  # RFC 1939 §6: no +OK before the deletions
    assert d.core.state is State.UPDATE
    assert not d.core.shutdown()
    d.core.commit_result(False)
    assert d.core.data_to_send() == b"-ERR [SYS/TEMP] Some deleted messages not removed\r\n"
    assert isinstance(d.core.next_event(), ev.Closed)


@pytest.mark.parametrize(
    ("command", "response"),
    [
        (b"RETR 0", b"-ERR no such message"),
        (b"RETR 4", b"-ERR no such message"),
        (b"RETR x", b"-ERR no such message"),
        (b"RETR -1", b"-ERR no such message"),
        (b"RETR \xc2\xb2", b"-ERR no such message"),  # a Unicode digit is not a number here
        (b"LIST 99999999999999999999", b"-ERR no such message"),
        (b"RETR", b"-ERR Syntax: RETR msg"),
        (b"RETR 1 2", b"-ERR Syntax: RETR msg"),
        (b"DELE", b"-ERR Syntax: DELE msg"),
        (b"LIST 1 2", b"-ERR Syntax: LIST [msg]"),
        (b"UIDL a b", b"-ERR Syntax: UIDL [msg]"),
        (b"TOP 1", b"-ERR Syntax: TOP msg n"),
        (b"TOP 1 -1", b"-ERR Invalid number of lines"),
        (b"TOP 9 1", b"-ERR no such message"),
        (b"STAT 1", b"-ERR STAT takes no arguments"),
        (b"NOOP x", b"-ERR NOOP takes no arguments"),
        (b"RSET x", b"-ERR RSET takes no arguments"),
        (b"USER bob", b"-ERR USER not valid after login"),
        (b"PASS x", b"-ERR PASS not valid after login"),
        (b"AUTH PLAIN", b"-ERR AUTH not valid after login"),
        (b"APOP bob 0123456789abcdef", b"-ERR Unknown command"),  # not implemented
        (b"XYZZY", b"-ERR Unknown command"),
        (b"", b"-ERR Unknown command"),
    ],
)
def test_bad_transaction_commands_keep_the_session(command: bytes, response: bytes) -> None:
    d = logged_in()
    assert d.feed(command + b"\r\n") == response + b"\r\n"
    assert d.core.state is State.TRANSACTION
    assert d.feed(b"NOOP\r\n") == b"+OK\r\n"


def test_transaction_commands_before_login() -> None:
    d = Driver.new(MAILDROP)
    for verb in (b"STAT", b"LIST", b"UIDL", b"RETR 1", b"TOP 1 1", b"DELE 1", b"NOOP", b"RSET"):
        name = verb.split()[0]
        assert d.feed(verb + b"\r\n") == b"-ERR " + name + b" not valid before login\r\n"
    assert d.core.state is State.AUTHORIZATION


def test_no_such_message_does_not_count_as_an_error() -> None:
    d = logged_in(max_errors=3)
    assert d.feed(b"RETR 9\r\n" * 10).count(b"-ERR no such message") == 10
    assert not d.closed


def test_commands_are_case_insensitive_with_sloppy_spacing_and_bare_lf() -> None:
    d = Driver.new(MAILDROP)
    assert d.feed(b"user alice@example.test\npass secret\n").endswith(b"octets)\r\n")
    assert d.feed(b"  list   2  \r\n") == b"+OK 2 %d\r\n" % len(PLAIN)
    assert d.feed(b"Stat\n") == b"+OK 3 %d\r\n" % sum(map(len, MAILDROP))


def test_empty_maildrop() -> None:
    d = logged_in([])
    assert d.feed(b"STAT\r\n") == b"+OK 0 0\r\n"
    assert d.feed(b"LIST\r\n") == b"+OK 0 messages (0 octets)\r\n.\r\n"
    assert d.feed(b"UIDL\r\n") == b"+OK\r\n.\r\n"
    assert d.feed(b"RETR 1\r\n") == b"-ERR no such message\r\n"


# --- RETR and TOP streaming ------------------------------------------------------------------
def test_stuffing_with_every_chunk_size() -> None:
    for size in range(1, len(DOTS) + 1):
        d = logged_in()
        d.chunk = size
        out = d.feed(b"RETR 1\r\n")
        assert unstuff(out) == DOTS, size


def test_stuffing_across_every_split_point() -> None:
    # Byte-stuffing state carries across chunks: "…\r\n" | ".…" and "…\r" | "\n.…" included.
    expected = MessageStuffer().feed(DOTS) + b".\r\n"
    for cut in range(len(DOTS) + 1):
        stuffer = MessageStuffer()
        out = stuffer.feed(DOTS[:cut]) + stuffer.feed(DOTS[cut:]) + stuffer.finish()
        assert out == expected, cut


def test_retr_output_goes_out_as_it_streams() -> None:
    # The transport takes data_to_send() after every chunk; the core never holds a message.
    big = b"Subject: big\r\n\r\n" + b".x" * 10 + b"\r\n" + (b"y" * 998 + b"\r\n") * 1000
    d = Driver.new([big])
    d.log_in()
    d.core.receive_data(b"RETR 1\r\n")
    assert isinstance(d.core.next_event(), ev.Retrieve)
    assert d.core.state is State.RETRIEVE
    sizes, sent = [], []
    for start in range(0, len(big), 65536):
        assert d.core.message_data(big[start : start + 65536])
        sent.append(d.core.data_to_send())
        sizes.append(len(sent[-1]))
    d.core.message_end()
    sent.append(d.core.data_to_send())
    assert max(sizes) <= 65536 + 1000
    assert unstuff(b"".join(sent)) == big


def test_message_not_ending_in_crlf_gets_one() -> None:
    d = logged_in([b"Subject: x\r\n\r\nno newline at the end", b"", b"Subject: y\r\n\r\n."])
    out = d.feed(b"RETR 1\r\n")
    assert out.endswith(b"no newline at the end\r\n.\r\n")
    assert d.feed(b"RETR 2\r\n") == b"+OK 0 octets\r\n.\r\n"
    assert d.feed(b"RETR 3\r\n").endswith(b"\r\n\r\n..\r\n.\r\n")  # a final "." line, unended


@pytest.mark.parametrize(
    ("index", "count", "expected"),
    [
        (2, 0, b"Subject: plain\r\n\r\n"),
        (2, 2, b"Subject: plain\r\n\r\nline 1\r\nline 2\r\n"),
        (2, 3, PLAIN),
        (2, 99, PLAIN),
        (3, 0, NO_BODY),  # no empty line: all of it is header
        (3, 5, NO_BODY),
        (1, 2, b"From: a@sender.test\r\nSubject: dots\r\n\r\nHello\r\n.\r\n"),
    ],
)
def test_top(index: int, count: int, expected: bytes) -> None:
    for size in (1, 2, 3, 7, 65536):
        d = logged_in()
        d.chunk = size
        out = d.feed(b"TOP %d %d\r\n" % (index, count))
        assert out.startswith(b"+OK Top of message follows\r\n")
        assert unstuff(out) == expected, size


def test_top_lets_the_transport_stop_early() -> None:
    body = b"Subject: long\r\n\r\n" + b"line\r\n" * 10_000
    d = logged_in([body])
    d.chunk = 1000
    out = d.feed(b"TOP 1 1\r\n")
    assert unstuff(out) == b"Subject: long\r\n\r\nline\r\n"
    assert d.streamed == 1000  # message_data() said False after the first chunk


def test_top_of_message_whose_header_ends_the_message_and_bare_lf() -> None:
    stuffer = MessageStuffer(1)
    out = stuffer.feed(b"Subject: x\n\n.dot\nnext\n") + stuffer.finish()
    assert out == b"Subject: x\n\n..dot\n\r\n.\r\n"
    stuffer = MessageStuffer(0)
    assert stuffer.feed(b"Subject: x\r\n\r") + stuffer.feed(b"\nbody\r\n") == b"Subject: x\r\n\r\n"
    assert stuffer.complete


def test_message_failed_before_and_after_data() -> None:
    d = logged_in()
    d.unreadable = {1}
    assert d.feed(b"RETR 2\r\n") == (b"-ERR [SYS/TEMP] Message cannot be read now, "
                                     b"try again later\r\n")
    assert d.core.state is State.TRANSACTION and d.core.errors == 0
    assert d.feed(b"RETR 1\r\n").startswith(b"+OK")
    # Once data went out the response cannot be ended honestly: the session closes, no UPDATE.
    d.core.receive_data(b"DELE 1\r\nRETR 2\r\n")
    assert isinstance(d.core.next_event(), ev.Retrieve)
    d.core.message_data(PLAIN[:10])
    d.core.message_failed()
    assert d.core.data_to_send() == b"+OK Message 1 deleted\r\n+OK %d octets\r\n" % len(PLAIN) + \
        PLAIN[:10]
    assert isinstance(d.core.next_event(), ev.Closed)
    assert d.commits == []


def test_answers_out_of_turn_are_bugs_and_late_answers_are_dropped() -> None:
    d = Driver.new(MAILDROP)
    with pytest.raises(RuntimeError):
        d.core.login_result(LoginResult.OK)
    with pytest.raises(RuntimeError):
        d.core.message_data(b"x")
    d.core.receive_data(LOGIN)
    assert isinstance(d.core.next_event(), ev.Credentials)
    assert not d.core.shutdown()  # a login check is in flight
    d.core.timeout()
    d.core.login_result(LoginResult.OK, d.maildrop())  # the connection is gone: ignored
    assert d.core.state is State.CLOSED
    assert d.core.data_to_send().endswith(b"-ERR Autologout: idle for too long\r\n")


def test_maildrop_entries_validate_themselves() -> None:
    MaildropEntry(0, "!" + "~" * 69)
    for uidl in ("", "a b", "x" * 71, "é", "tab\there", "del\x7f"):
        with pytest.raises(ValueError):
            MaildropEntry(1, uidl)
    with pytest.raises(ValueError):
        MaildropEntry(-1, "a")
    d = Driver.new()
    d.core.receive_data(LOGIN)
    d.core.next_event()
    with pytest.raises(ValueError):
        d.core.login_result(LoginResult.OK, [MaildropEntry(1, "same"), MaildropEntry(2, "same")])


# --- ending a session without UPDATE --------------------------------------------------------
def test_timeout_never_commits() -> None:
    # RFC 1939 §3: the autologout timer closes without entering UPDATE.
    d = logged_in()
    d.feed(b"DELE 1\r\n")
    d.core.timeout()
    assert d.core.data_to_send() == b"-ERR Autologout: idle for too long\r\n"
    assert d.feed(b"QUIT\r\n") == b""
    assert d.closed and d.commits == []


def test_shutdown_never_commits_and_waits_for_a_retrieval() -> None:
    d = logged_in()
    d.feed(b"DELE 1\r\n")
    d.core.receive_data(b"RETR 2\r\nQUIT\r\n")
    assert isinstance(d.core.next_event(), ev.Retrieve)
    d.core.message_data(PLAIN)
    assert not d.core.shutdown()  # a message is going out: finish it first
    d.core.message_end()
    assert d.core.shutdown()
    assert d.core.data_to_send().endswith(b"\r\n.\r\n-ERR [SYS/TEMP] Server shutting down, "
                                          b"try again later\r\n")
    assert isinstance(d.core.next_event(), ev.Closed)
    assert d.commits == []


def test_timeout_and_shutdown_during_stls_are_silent() -> None:
    d = Driver.new(tls=False)
    d.feed(b"STLS\r\n")
    assert d.core.shutdown()
    assert d.core.data_to_send() == b""
    d = Driver.new(tls=False)
    d.feed(b"STLS\r\n")
    d.core.timeout()
    assert d.core.data_to_send() == b"" and d.core.state is State.CLOSED


# --- bad input -------------------------------------------------------------------------------
def test_overlong_line_is_refused_and_the_session_survives() -> None:
    d = logged_in()
    assert d.feed(b"NOOP " + b"x" * 250 + b"\r\n") == b"-ERR Line too long\r\n"
    assert d.feed(b"NOOP\r\n") == b"+OK\r\n"
    # The same line in pieces, the LF arriving long after the limit was passed.
    assert d.feed(b"LIST " + b"1" * 300) == b""
    assert d.feed(b"1" * 300) == b""
    assert d.feed(b"\r\nSTAT\r\n") == b"-ERR Line too long\r\n+OK 3 %d\r\n" % sum(
        map(len, MAILDROP))
    # 255 octets, CRLF included, is fine (RFC 2449 §4).
    assert d.feed(b"NOOP" + b" " * 249 + b"\r\n") == b"+OK\r\n"


def test_a_megabyte_without_lf_closes_and_memory_stays_bounded() -> None:
    d = Driver.new()
    out = d.feed(b"x" * 1_000_000)
    assert out == b"-ERR Line too long, closing connection\r\n"
    assert d.closed and d.core.buffered == 0
    d = Driver.new()
    for _ in range(100):  # in small pieces: never more than a line limit held
        d.feed(b"y" * 1000)
        assert d.core.buffered <= 1000 + 255
    assert d.closed


def test_error_limit_closes() -> None:
    d = Driver.new(max_errors=5)
    out = d.feed(b"BOGUS\r\n" * 10)
    assert lines(out) == [b"-ERR Unknown command"] * 5 + [
        b"-ERR Too many errors, closing connection"]
    assert d.closed


def test_failed_logins_count_toward_the_error_limit() -> None:
    d = Driver.new(MAILDROP, max_errors=3)
    d.feed(b"USER a\r\nPASS b\r\n" * 3)
    assert d.closed and len(d.credentials) == 3


@pytest.mark.parametrize("bad", [b"NO\x00OP", b"NOOP\x00", b"NOOP\rSTAT", b"ST\x1bAT"])
def test_control_characters_in_commands(bad: bytes) -> None:
    d = logged_in()
    assert d.feed(bad + b"\r\n") == b"-ERR Invalid character in command\r\n"
    assert d.feed(b"NOOP\r\n") == b"+OK\r\n"


def test_invalid_utf8_in_command() -> None:
    d = Driver.new()
    assert d.feed(b"USER \xff\r\n") == b"-ERR Invalid UTF-8 in command\r\n"
    assert not d.closed


def test_config_refuses_wire_breaking_values() -> None:
    with pytest.raises(ValueError):
        Pop3ServerConfig(hostname="a\r\nb")
    with pytest.raises(ValueError):
        Pop3ServerConfig(hostname="pop.test", implementation="")
    with pytest.raises(ValueError):
        Pop3ServerConfig(hostname="pop.test", max_line=300, max_auth_line=200)


def test_events_validate_themselves() -> None:
    with pytest.raises(ValueError):
        ev.Retrieve(-1)
    with pytest.raises(ValueError):
        ev.Retrieve(0, -2)
    with pytest.raises(ValueError):
        ev.Commit((-1,))


def test_core_for_implicit_tls_port() -> None:
    core = Pop3Server(Pop3ServerConfig(hostname="pop.example.test"), tls_active=True)
    assert core.data_to_send() == b"+OK pop.example.test POP3 ready\r\n"
    core.receive_data(b"STLS\r\n")
    assert isinstance(core.next_event(), ev.NeedData)
    assert core.data_to_send() == b"-ERR Command not permitted when TLS active\r\n"


def test_answers_after_the_session_closed_are_ignored() -> None:
    d = logged_in()
    d.core.receive_data(b"RETR 1\r\n")
    assert isinstance(d.core.next_event(), ev.Retrieve)
    d.core.message_data(DOTS[:5])
    d.core.timeout()  # mid-response: no -ERR line inside the multi-line response
    assert d.core.data_to_send() == b"+OK %d octets\r\n" % len(DOTS) + DOTS[:5]
    assert d.core.message_data(b"more") is False
    d.core.message_end()
    d.core.message_failed()
    d.core.commit_result(True)
    d.core.timeout()
    assert d.core.shutdown()
    assert d.core.data_to_send() == b""
    assert d.core.state is State.CLOSED


@pytest.mark.parametrize("command", [b"CAPA x", b"QUIT now"])
def test_argumentless_commands_refuse_arguments(command: bytes) -> None:
    d = logged_in()
    verb = command.split()[0]
    assert d.feed(command + b"\r\n") == b"-ERR " + verb + b" takes no arguments\r\n"
    assert d.commits == [] and not d.closed


def test_auth_line_leniency_is_only_for_auth_before_login() -> None:
    d = logged_in()
    assert d.feed(b"AUTH PLAIN " + b"A" * 400 + b"\r\n") == b"-ERR Line too long\r\n"


def test_state_table_is_complete() -> None:
    from mailhouse.proto.pop3.server import _HANDLERS, ALLOWED, TRANSITIONS

    assert set(TRANSITIONS) == set(State)
    assert set(ALLOWED) == set(_HANDLERS)
    assert all(states <= {State.AUTHORIZATION, State.TRANSACTION} for states in ALLOWED.values())


def _reference(message: bytes, top: int | None) -> bytes:
    """RFC 1939 §3 and §7 the slow, obvious way: split into lines after each LF, cut, stuff."""
    parts = re.split(b"(?<=\n)", message)
    parts = [p for p in parts if p]
    if top is not None:
        cut = len(parts)
        for i, part in enumerate(parts):
            if part in (b"\r\n", b"\n"):
                cut = i + 1 + top
                break
        parts = parts[:cut]
    data = b"".join(parts)
    stuffed = b"".join(b"." + p if p.startswith(b".") else p for p in parts)
    return stuffed + (b"\r\n" if data and not data.endswith(b"\r\n") else b"") + b".\r\n"


def test_stuffing_and_top_against_a_reference_on_random_input() -> None:
    rng = random.Random(1939)
    alphabet = [b".", b"\r\n", b"\n", b"\r", b"x", b"..", b"\r\n.\r\n", b"\r\n\r\n"]
    for _ in range(3000):
        message = b"".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 30)))
        top = rng.choice([None, None, 0, 1, 2, 5])
        stuffer = MessageStuffer(top)
        out, pos = [], 0
        while pos < len(message):
            step = rng.randrange(1, 8)
            out.append(stuffer.feed(message[pos : pos + step]))
            pos += step
        out.append(stuffer.finish())
        assert b"".join(out) == _reference(message, top), (message, top)
