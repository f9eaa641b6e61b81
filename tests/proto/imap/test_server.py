"""The IMAP server core (proto/imap/server.py): states, framing, login, STARTTLS, IDLE, errors.
Fed bytes directly; the service's part is played by the test."""

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailhouse.proto.imap import server_events as ev
from mailhouse.proto.imap.config import ParserConfig
from mailhouse.proto.imap.server import ImapServer, ImapServerConfig, LoginOutcome, State
from tests.proto.imap.driver import serve

CONFIG = ImapServerConfig(hostname="imap.example.test",
                          capabilities=("UIDPLUS", "MOVE", "CONDSTORE"),
                          enableable=("CONDSTORE",), max_errors=5)


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


class Session:
    def __init__(self, config: ImapServerConfig = CONFIG, *, tls: bool = True) -> None:
        self.core = ImapServer(config, tls_active=tls)
        self.greeting = self.core.data_to_send()

    def send(self, data: bytes) -> ev.ServerEvent:
        self.core.receive_data(data)
        return self.core.next_event()

    def out(self) -> bytes:
        return self.core.data_to_send()

    def login(self) -> None:
        event = self.send(b"a LOGIN alice secret\r\n")
        assert isinstance(event, ev.Credentials)
        self.core.login_result(LoginOutcome.OK)
        self.out()


def test_greeting_carries_the_capabilities() -> None:
    s = Session(tls=False)
    assert s.greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 IMAP4rev2 ")
    assert b"STARTTLS" in s.greeting and b"LOGINDISABLED" in s.greeting
    assert b"AUTH=" not in s.greeting
    assert s.greeting.endswith(b"imap.example.test IMAP ready\r\n")


def test_no_password_before_tls() -> None:
    s = Session(tls=False)
    assert isinstance(s.send(b"a LOGIN alice secret\r\n"), ev.NeedData)
    assert s.out() == (b"a NO [PRIVACYREQUIRED] Plaintext authentication is not allowed "
                       b"without TLS\r\n")
    assert isinstance(s.send(b"b AUTHENTICATE PLAIN " + plain("a", "b").encode() + b"\r\n"),
                      ev.NeedData)
    assert s.out().startswith(b"b NO [PRIVACYREQUIRED]")
    assert s.core.state is State.NOT_AUTHENTICATED


def test_starttls_drops_what_was_pipelined_after_it() -> None:
    s = Session(tls=False)
    event = s.send(b"a STARTTLS\r\nb LOGIN alice secret\r\n")
    assert isinstance(event, ev.StartTls)
    assert s.out() == b"a OK Begin TLS negotiation now\r\n"
    s.core.tls_established()
    assert isinstance(s.core.next_event(), ev.NeedData)  # the pipelined LOGIN is gone
    assert s.out() == b""
    s.send(b"c CAPABILITY\r\n")
    caps = s.out()
    assert b"STARTTLS" not in caps and b"AUTH=PLAIN" in caps and b"LOGINDISABLED" not in caps


def test_starttls_twice_or_after_login_is_refused() -> None:
    s = Session(tls=True)
    s.send(b"a STARTTLS\r\n")
    assert s.out() == b"a BAD TLS is already active\r\n"
    s.login()
    s.send(b"b STARTTLS\r\n")
    assert s.out() == b"b BAD STARTTLS is not valid in this state\r\n"


def test_login_success_announces_the_service_capabilities() -> None:
    s = Session()
    event = s.send(b"a LOGIN alice secret\r\n")
    assert isinstance(event, ev.Credentials)
    assert (event.tag, event.mechanism, event.username, event.password) == (
        "a", "LOGIN", "alice", "secret")
    assert "secret" not in repr(event)
    s.core.login_result(LoginOutcome.OK)
    reply = s.out()
    assert reply.startswith(b"a OK [CAPABILITY IMAP4rev1 ") and b"UIDPLUS MOVE" in reply
    assert s.core.state is State.AUTHENTICATED


@pytest.mark.parametrize(("outcome", "code"), [(LoginOutcome.FAILED, b"AUTHENTICATIONFAILED"),
                                               (LoginOutcome.THROTTLED, b"UNAVAILABLE"),
                                               (LoginOutcome.UNAVAILABLE, b"UNAVAILABLE")])
def test_login_failures(outcome: LoginOutcome, code: bytes) -> None:
    s = Session()
    s.send(b"a LOGIN alice wrong\r\n")
    s.core.login_result(outcome)
    assert s.out().startswith(b"a NO [" + code + b"]")
    assert s.core.state is State.NOT_AUTHENTICATED


def test_authenticate_plain_with_initial_response() -> None:
    s = Session()
    event = s.send(b"a AUTHENTICATE PLAIN " + plain("alice", "pw").encode() + b"\r\n")
    assert isinstance(event, ev.Credentials)
    assert (event.mechanism, event.username, event.password) == ("PLAIN", "alice", "pw")
    s.core.login_result(LoginOutcome.OK)
    assert s.out().startswith(b"a OK [CAPABILITY")


def test_authenticate_with_a_challenge_and_commands_after_it() -> None:
    s = Session()
    assert isinstance(s.send(b"a AUTHENTICATE PLAIN\r\n"), ev.NeedData)
    assert s.out() == b"+ \r\n"
    event = s.send(plain("alice", "pw").encode() + b"\r\nb NOOP\r\n")
    assert isinstance(event, ev.Credentials)
    s.core.login_result(LoginOutcome.OK)
    assert isinstance(s.core.next_event(), ev.Request)  # NOOP goes to the service now


def test_authenticate_cancelled_and_unknown_mechanism() -> None:
    s = Session()
    s.send(b"a AUTHENTICATE PLAIN\r\n")
    s.out()
    s.send(b"*\r\n")
    assert s.out() == b"a BAD Authentication cancelled\r\n"
    s.send(b"b AUTHENTICATE CRAM-MD5\r\n")
    assert s.out() == b"b NO [CANNOT] Unsupported authentication mechanism\r\n"
    s.send(b"c AUTHENTICATE PLAIN\r\n")
    s.out()
    s.send(b"!!notbase64\r\n")
    assert s.out() == b"c BAD Invalid base64 in authentication response\r\n"
    s.send(b"d CAPABILITY\r\n")
    assert s.out().endswith(b"d OK Capability completed\r\n")


def test_an_overlong_sasl_response_ends_the_exchange() -> None:
    s = Session(ImapServerConfig(hostname="h", parser=ParserConfig(max_line_length=100)))
    s.send(b"a AUTHENTICATE PLAIN\r\n")
    s.out()
    s.send(b"A" * 500 + b"\r\n")
    assert s.out().startswith(b"a BAD [TOOBIG]")
    event = s.send(b"b LOGIN alice pw\r\n")  # back to commands
    assert isinstance(event, ev.Credentials)


def test_commands_outside_their_state_are_bad() -> None:
    s = Session()
    s.send(b"a SELECT INBOX\r\n")
    assert s.out() == b"a BAD SELECT is not valid in this state\r\n"
    s.login()
    s.send(b"b FETCH 1 FLAGS\r\n")
    assert s.out() == b"b BAD FETCH is not valid in this state\r\n"
    s.send(b"c LOGIN alice secret\r\n")
    assert s.out() == b"c BAD LOGIN is not valid in this state\r\n"


def test_select_moves_between_states_by_its_outcome() -> None:
    s = Session()
    s.login()
    event = s.send(b"a SELECT INBOX\r\n")
    assert isinstance(event, ev.Request) and not event.selected
    s.core.untagged([b"3 EXISTS", b"FLAGS (\\Seen)"])
    s.core.complete("OK", "SELECT completed", "READ-WRITE")
    assert s.out() == (b"* 3 EXISTS\r\n* FLAGS (\\Seen)\r\n"
                       b"a OK [READ-WRITE] SELECT completed\r\n")
    assert s.core.state is State.SELECTED
    event = s.send(b"b FETCH 1:* (FLAGS)\r\n")
    assert isinstance(event, ev.Request) and event.selected
    s.core.complete("OK", "FETCH completed")
    s.send(b"c SELECT Nonexistent\r\n")
    s.core.complete("NO", "No such mailbox", "NONEXISTENT")
    assert s.core.state is State.AUTHENTICATED  # RFC 9051 §6.3.2
    s.send(b"d SELECT INBOX\r\n")
    s.core.complete("OK", "SELECT completed")
    s.send(b"e UNSELECT\r\n")
    s.core.complete("OK", "UNSELECT completed")
    assert s.core.state is State.AUTHENTICATED


def test_one_command_at_a_time() -> None:
    s = Session()
    s.login()
    event = s.send(b"a NOOP\r\nb NOOP\r\n")
    assert isinstance(event, ev.Request) and event.command.tag == "a"
    with pytest.raises(RuntimeError):
        s.core.next_event()  # the service has not answered yet
    s.core.complete("OK", "NOOP completed")
    event = s.core.next_event()
    assert isinstance(event, ev.Request) and event.command.tag == "b"


def test_idle_and_done() -> None:
    s = Session()
    s.login()
    event = s.send(b"a IDLE\r\n")
    assert isinstance(event, ev.IdleStarted) and event.tag == "a"
    assert s.out() == b"+ idling\r\n"
    s.core.untagged([b"4 EXISTS"])  # a delivery, pushed while idling
    assert s.out() == b"* 4 EXISTS\r\n"
    event = s.send(b"DONE\r\n")
    assert isinstance(event, ev.IdleEnded)
    s.core.complete("OK", "IDLE terminated")
    assert s.out() == b"a OK IDLE terminated\r\n"
    s.send(b"b IDLE\r\n")
    s.out()
    s.send(b"NOTDONE\r\n")
    assert s.out() == b"b BAD Expected DONE\r\n"


def test_idle_before_login_is_bad_and_the_session_goes_on() -> None:
    s = Session()
    s.send(b"a IDLE\r\nb CAPABILITY\r\n")
    out = s.out()
    assert out.startswith(b"a BAD IDLE is not valid in this state\r\n")
    assert out.endswith(b"b OK Capability completed\r\n")


def test_enable_reports_only_what_it_newly_enabled() -> None:
    s = Session()
    s.login()
    s.send(b"a ENABLE CONDSTORE X-UNKNOWN IMAP4rev2\r\n")
    assert s.out() == b"* ENABLED CONDSTORE IMAP4REV2\r\na OK Enabled\r\n"
    assert s.core.enabled == {"CONDSTORE", "IMAP4REV2"}
    s.send(b"b ENABLE CONDSTORE\r\n")
    assert s.out() == b"* ENABLED\r\nb OK Enabled\r\n"
    s.send(b"c SELECT INBOX\r\n")
    s.core.complete("OK", "SELECT completed")
    s.out()
    event = s.send(b"d ENABLE QRESYNC\r\ne NOOP\r\n")  # RFC 5161 §3.1: not once selected
    assert s.out() == b"d BAD ENABLE is not valid in this state\r\n"
    assert isinstance(event, ev.Request)  # and the session goes on with NOOP


def test_id_namespace_capability_logout() -> None:
    s = Session()
    s.send(b'a ID ("name" "client")\r\n')
    assert s.out() == b'* ID ("name" "mailhouse")\r\na OK ID completed\r\n'
    s.login()
    s.send(b"b NAMESPACE\r\n")
    assert s.out() == b'* NAMESPACE (("" "/")) NIL NIL\r\nb OK Namespace completed\r\n'
    assert isinstance(s.send(b"c LOGOUT\r\nd NOOP\r\n"), ev.Closed)
    assert s.out() == b"* BYE Logging out\r\nc OK Logout completed\r\n"
    assert s.core.state is State.LOGOUT


def test_append_literal_is_accepted_only_when_authenticated() -> None:
    s = Session()
    assert isinstance(s.send(b"a APPEND INBOX {5}\r\n"), ev.NeedData)
    assert s.out() == b"a BAD APPEND is not valid in this state\r\n"
    s.login()
    assert isinstance(s.send(b"b APPEND INBOX (\\Seen) {5}\r\n"), ev.NeedData)
    assert s.out() == b"+ Ready for literal data\r\n"
    event = s.send(b"hello\r\n")
    assert isinstance(event, ev.AppendChunk) and event.data == b"hello" and event.last
    request = s.core.next_event()
    assert isinstance(request, ev.Request) and request.command.name == "APPEND"


def test_append_too_big_is_refused_before_the_octets() -> None:
    config = ImapServerConfig(hostname="h", parser=ParserConfig(max_append_size=10))
    s = Session(config)
    s.login()
    s.send(b"a APPEND INBOX {11}\r\n")
    out = s.out()
    assert out.startswith(b"a NO [TOOBIG]") and b"+ " not in out


def test_too_many_errors_end_the_session() -> None:
    s = Session()
    for i in range(4):
        assert isinstance(s.send(b"x%d BOGUS\r\n" % i), ev.NeedData)
    assert isinstance(s.send(b"x5 BOGUS\r\n"), ev.Closed)
    assert s.out().endswith(b"* BYE Too many invalid commands\r\n")


def test_timeout_and_shutdown_say_bye() -> None:
    s = Session()
    s.core.timeout()
    assert s.out() == b"* BYE Autologout; idle for too long\r\n"
    assert isinstance(s.core.next_event(), ev.Closed)
    s = Session()
    s.login()
    s.send(b"a NOOP\r\n")
    assert not s.core.shutdown()  # a request is being served
    s.core.complete("OK", "NOOP completed")
    assert s.core.shutdown()
    assert s.out().endswith(b"* BYE Server shutting down\r\n")


def test_any_split_of_the_input_gives_the_same_replies() -> None:
    script = (b"a CAPABILITY\r\nb LOGIN {5}\r\nalice {6}\r\nsecret\r\nc NOOP\r\n"
              b"d BOGUS\r\ne LOGOUT\r\n")

    def run(chunks: list[bytes]) -> bytes:
        return serve(Session().core, chunks)

    whole = run([script])
    assert whole.count(b"+ Ready for literal data") == 2
    assert run([bytes([b]) for b in script]) == whole


WORDS = [b"a ", b"b ", b"LOGIN ", b"alice ", b"pw", b"SELECT ", b"INBOX", b"IDLE", b"DONE",
         b"NOOP", b"FETCH 1:* FLAGS", b"APPEND INBOX ", b"{3}", b"{3+}", b"abc", b"STARTTLS",
         b"AUTHENTICATE PLAIN", b"*", b"LOGOUT", b"ENABLE IMAP4rev2", b" ", b"\r\n", b"\n",
         b"(", b")", b'"', b"\x00", b"\xff"]


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(st.sampled_from(WORDS), max_size=40), cuts=st.lists(st.integers(1, 20)))
def test_command_soup_never_raises_and_any_split_answers_the_same(
        parts: list[bytes], cuts: list[int]) -> None:
    data = b"".join(parts)
    whole = serve(Session().core, [data])
    chunks, rest = [], data
    for cut in cuts:
        chunks.append(rest[:cut])
        rest = rest[cut:]
    chunks.append(rest)
    assert serve(Session().core, chunks) == whole
    # Every line is untagged, a continuation, or a tagged status (literals aside: none here).
    status = re.compile(rb"(\* |\+ |[^ ]+ (OK|NO|BAD) )")
    assert all(status.match(line) for line in whole.split(b"\r\n")[:-1]), whole


def test_commands_pipelined_behind_enable_are_parsed_the_new_way() -> None:
    """Found by fuzz/imap_server.py: a mailbox name sent right behind ENABLE IMAP4rev2 decoded
    as modified UTF-7 when both came in one read, as UTF-8 when they came apart."""
    script = 'a LOGIN alice pw\r\nb ENABLE IMAP4rev2\r\nc SELECT "Café"\r\n'.encode()

    def first_select(chunks: list[bytes]) -> ev.ServerEvent:
        s = Session()
        for chunk in chunks:
            s.core.receive_data(chunk)
            while True:
                event = s.core.next_event()
                if isinstance(event, ev.Credentials):
                    s.core.login_result(LoginOutcome.OK)
                elif isinstance(event, ev.Request):
                    return event
                else:
                    break
        raise AssertionError("no SELECT")

    together = first_select([script])
    apart = first_select([script[:44], script[44:]])
    assert together == apart
    assert isinstance(together, ev.Request) and together.command.args.mailbox == "Café"  # type: ignore[union-attr]
