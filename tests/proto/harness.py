"""Run the SMTP and POP3 cores on arbitrary bytes and check what must hold for ANY input.

Shared by the property tests (hypothesis, tests/proto/test_*_properties.py) and the coverage-
guided fuzz targets (atheris, fuzz/): both hand in a byte stream and a way to cut it into the
pieces a transport would receive, and the checks below raise AssertionError on any violation.

What holds for any input:
- the core raises nothing (a hostile peer must never crash a session);
- every reply line is well formed: SMTP `\\d{3}[ -]text\\r\\n` with one code per reply; POP3
  CRLF-terminated lines with no bare CR or LF, status lines "+OK", "-ERR" or "+ " (SASL);
- after the core has done what it can, it holds no more unparsed bytes than its limits allow;
- cutting the stream differently changes nothing: the same replies, the same events (message
  content compared as a whole, not by the pieces it happened to arrive in);
- a message the core hands over as complete has only CRLF line endings (no smuggling).

The transport is simulated: decisions are answered at once by a fixed policy, TLS is never
completed (after STARTTLS/STLS the core ignores input, which keeps the cut-invariance exact).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from mailhouse.errors import Reply
from mailhouse.proto.pop3 import events as pev
from mailhouse.proto.pop3.server import (
    LoginResult,
    MaildropEntry,
    Pop3Server,
    Pop3ServerConfig,
)
from mailhouse.proto.pop3.server import State as Pop3State
from mailhouse.proto.smtp import events as ev
from mailhouse.proto.smtp.server import SmtpServer, SmtpServerConfig
from mailhouse.proto.smtp.server import State as SmtpState

# Pieces of real SMTP sessions: the fuzzers mix them with raw bytes so that deep states
# (DATA, BDAT, AUTH) are reached quickly.
SMTP_WORDS = (
    b"EHLO client.test\r\n", b"HELO client.test\r\n", b"MAIL FROM:<a@sender.test>\r\n",
    b"MAIL FROM:<> SIZE=20 BODY=8BITMIME SMTPUTF8\r\n", b"MAIL FROM:<x@sender.test>\r\n",
    b"RCPT TO:<bob@example.test>\r\n", b"RCPT TO:<nobody@example.test>\r\n",
    b"RCPT TO:<Postmaster>\r\n", b"RCPT TO:<j\xc3\xb6rg@example.test>\r\n", b"DATA\r\n",
    b"BDAT 5\r\n", b"BDAT 0 LAST\r\n", b"BDAT 3 LAST\r\n", b"RSET\r\n", b"NOOP\r\n",
    b"STARTTLS\r\n", b"AUTH PLAIN\r\n", b"AUTH PLAIN AGFsaWNlAHB3\r\n", b"AUTH LOGIN\r\n",
    b"AUTH LOGIN YWxpY2U=\r\n", b"cHc=\r\n", b"*\r\n", b"=\r\n", b"QUIT\r\n", b"VRFY x\r\n",
    b"HELP\r\n", b"EXPN x\r\n", b"Received: by x\r\n", b"Subject: s\r\n", b"\r\n", b".\r\n",
    b"..dot\r\n", b"\r\n.\r\n", b"\r", b"\n", b"\x00", b"\xff", b" ", b"x" * 70,
    b"BDAT \xc2\xb2\r\n", b"MAIL FROM:<a@[1.2.3.4]> SIZE=\xc2\xb2\r\n",
    b"RCPT TO:<\"q\\\"x\"@example.test>\r\n",
)
POP3_WORDS = (
    b"USER alice\r\n", b"PASS secret\r\n", b"PASS wrong\r\n", b"CAPA\r\n", b"STAT\r\n",
    b"LIST\r\n", b"LIST 1\r\n", b"LIST 9\r\n", b"UIDL\r\n", b"UIDL 2\r\n", b"RETR 1\r\n",
    b"RETR 2\r\n", b"TOP 1 0\r\n", b"TOP 2 1\r\n", b"DELE 1\r\n", b"DELE 3\r\n", b"NOOP\r\n",
    b"RSET\r\n", b"QUIT\r\n", b"STLS\r\n", b"AUTH\r\n", b"AUTH PLAIN\r\n",
    b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n", b"AUTH LOGIN\r\n", b"YWxpY2U=\r\n",
    b"c2VjcmV0\r\n", b"*\r\n", b"APOP a b\r\n", b"\r\n", b"\n", b"\r", b"\x00", b"\xff", b" ",
    b"x" * 70,
)

SMTP_CONFIGS = (
    SmtpServerConfig(hostname="mx.example.test"),
    SmtpServerConfig(hostname="mx.example.test", max_message_size=40, max_recipients=2,
                     max_command_line=40, max_text_line=30, max_errors=6, junk_command_limit=4,
                     max_received_headers=1, max_auth_line=40),
    SmtpServerConfig(hostname="submit.example.test", auth_mechanisms=("PLAIN", "LOGIN"),
                     require_auth=True, max_errors=50),
)
POP3_CONFIGS = (
    Pop3ServerConfig(hostname="pop.example.test"),
    Pop3ServerConfig(hostname="pop.example.test", allow_plaintext_auth=True, max_line=20,
                     max_auth_line=40, max_errors=6, junk_command_limit=4),
)
MAILDROP = (b"Subject: one\r\n\r\n.dot\r\nline\r\n", b"Subject: two\r\n\r\n", b"x" * 300)

_SMTP_LINE = re.compile(rb"([2-5]\d\d)([ -])[^\r\n]*\r\n")
_POP3_STATUS = re.compile(rb"(\+OK|-ERR|\+ )")


def cut(data: bytes, sizes: Sequence[int]) -> Iterator[bytes]:
    """`data` in pieces of the given sizes, cycled (sizes < 1 count as 1)."""
    at, i = 0, 0
    while at < len(data):
        size = max(1, sizes[i % len(sizes)]) if sizes else len(data)
        yield data[at : at + size]
        at, i = at + size, i + 1


# --- SMTP ------------------------------------------------------------------------------------
@dataclass
class SmtpTranscript:
    out: bytes = b""
    events: list[object] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)


def _smtp_answer(event: ev.Event) -> Reply | None:
    if isinstance(event, ev.MailFrom):
        if event.sender is not None and event.sender.local.startswith("x"):
            return Reply(550, "5.7.1", "Sender refused")
        return Reply(250, "2.1.0", "Ok")
    if isinstance(event, ev.RcptTo):
        if event.recipient is not None and event.recipient.local.startswith("nobody"):
            return Reply(550, "5.1.1", "User unknown")
        return Reply(250, "2.1.5", "Ok")
    if isinstance(event, ev.DataComplete):
        return Reply(250, "2.0.0", "Ok: queued")
    if isinstance(event, ev.AuthCredentials):
        good = (event.username, event.password) == ("alice", "pw")
        return Reply(235, "2.7.0", "Ok") if good else Reply(535, "5.7.8", "No")
    return None


def _smtp_buffer_bound(core: SmtpServer) -> int:
    state, config = core.state, core.config
    if state is SmtpState.AUTH:
        return config.max_auth_line
    if state is SmtpState.DATA:
        return max(config.max_text_line * 4, 65536)  # the DotReader's pending bound
    if state in (SmtpState.TLS, SmtpState.CLOSED, SmtpState.CHUNK):
        return 0
    return config.max_command_line


def run_smtp(config: SmtpServerConfig, pieces: Iterator[bytes] | Sequence[bytes], *,
             tls_active: bool = False) -> SmtpTranscript:
    """Feed the pieces one by one as a transport would; check every invariant on the way."""
    core = SmtpServer(config, tls_active=tls_active)
    t = SmtpTranscript()
    spool: list[bytes] | None = None
    aborted = False
    out = [core.data_to_send()]
    for piece in pieces:
        core.receive_data(piece)
        while True:
            event = core.next_event()
            if isinstance(event, ev.NeedData | ev.Closed):
                break
            if isinstance(event, ev.DataChunk):
                assert spool is not None, "content outside a message"
                spool.append(event.data)
                continue
            if isinstance(event, ev.DataAborted):
                # Why a message is refused may depend on what had arrived when (too big before
                # the bare LF came in): the reply says it, the event only has to happen once.
                assert not aborted, "two DataAborted for one message"
                aborted = True
                t.events.append("DataAborted")
            else:
                t.events.append(event)
            if isinstance(event, ev.DataStart):
                assert spool is None, "DataStart inside a message"
                spool, aborted = [], False
            elif isinstance(event, ev.DataAborted | ev.TransactionReset):
                spool = None
            elif isinstance(event, ev.DataComplete):
                assert spool is not None, "DataComplete without DataStart"
                message = b"".join(spool)
                assert event.size == len(message)
                _assert_no_bare_newline(message)
                t.messages.append(message)
                t.events.append(("content", message))
                spool = None
            reply = _smtp_answer(event)
            if reply is not None:
                core.respond(reply)
        out.append(core.data_to_send())
        assert core.buffered <= _smtp_buffer_bound(core), (core.state, core.buffered)
    t.out = b"".join(out)
    check_smtp_replies(t.out)
    return t


def _assert_no_bare_newline(message: bytes) -> None:
    lines = message.split(b"\r\n")
    assert not any(b"\r" in line or b"\n" in line for line in lines), "bare CR/LF accepted"


def check_smtp_replies(out: bytes) -> None:
    """Every line `\\d{3}[ -]text\\r\\n`; continuation lines keep their reply's code."""
    at, code = 0, None
    while at < len(out):
        match = _SMTP_LINE.match(out, at)
        assert match, f"malformed reply line at {at}: {out[at : at + 80]!r}"
        if code is not None:
            assert match.group(1) == code, "code changed inside a multi-line reply"
        code = match.group(1) if match.group(2) == b"-" else None
        at = match.end()
    assert code is None, "multi-line reply never finished"


def smtp_cut_invariant(config: SmtpServerConfig, data: bytes, sizes: Sequence[int], *,
                       tls_active: bool = False) -> None:
    """The same bytes in one piece and cut by `sizes` give the same replies and events."""
    whole = run_smtp(config, [data], tls_active=tls_active)
    pieces = run_smtp(config, cut(data, sizes), tls_active=tls_active)
    assert pieces.out == whole.out
    assert pieces.events == whole.events


# --- POP3 ------------------------------------------------------------------------------------
@dataclass
class Pop3Transcript:
    out: bytes = b""
    events: list[object] = field(default_factory=list)


def _pop3_login(event: pev.Credentials) -> LoginResult:
    if event.password == "secret" and event.username == "alice":
        return LoginResult.OK
    return LoginResult.FAILED


def _pop3_buffer_bound(core: Pop3Server) -> int:
    if core.state in (Pop3State.TLS, Pop3State.CLOSED):
        return 0
    return core.config.max_auth_line


def run_pop3(config: Pop3ServerConfig, pieces: Iterator[bytes] | Sequence[bytes], *,
             tls_active: bool = True) -> Pop3Transcript:
    core = Pop3Server(config, tls_active=tls_active)
    t = Pop3Transcript()
    out = [core.data_to_send()]
    entries = [MaildropEntry(len(m), f"uid{i}") for i, m in enumerate(MAILDROP)]
    for piece in pieces:
        core.receive_data(piece)
        while True:
            event = core.next_event()
            if isinstance(event, pev.NeedData | pev.Closed):
                break
            t.events.append(event)
            if isinstance(event, pev.Credentials):
                result = _pop3_login(event)
                core.login_result(result, entries if result is LoginResult.OK else ())
            elif isinstance(event, pev.Retrieve):
                data = MAILDROP[event.index]
                for at in range(0, len(data), 7):  # the store's own pieces: fixed
                    if not core.message_data(data[at : at + 7]):
                        break
                core.message_end()
            elif isinstance(event, pev.Commit):
                core.commit_result(True)
        out.append(core.data_to_send())
        assert core.buffered <= _pop3_buffer_bound(core), (core.state, core.buffered)
    t.out = b"".join(out)
    check_pop3_output(t.out)
    return t


def check_pop3_output(out: bytes) -> None:
    """CRLF-terminated lines only, no bare CR/LF; the first line is a status line."""
    assert out.endswith(b"\r\n") or not out
    lines = out.split(b"\r\n")[:-1]
    assert not any(b"\r" in line or b"\n" in line for line in lines), "bare CR/LF in output"
    assert lines and _POP3_STATUS.match(lines[0])


def pop3_cut_invariant(config: Pop3ServerConfig, data: bytes, sizes: Sequence[int], *,
                       tls_active: bool = True) -> None:
    whole = run_pop3(config, [data], tls_active=tls_active)
    pieces = run_pop3(config, cut(data, sizes), tls_active=tls_active)
    assert pieces.out == whole.out
    assert pieces.events == whole.events
