"""SMTP AUTH (RFC 4954) in the server core, as transcripts: client lines in, replies out."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

import pytest

from mailhouse.errors import Reply
from mailhouse.proto.smtp import events as ev
from mailhouse.proto.smtp.server import SmtpServer, SmtpServerConfig, State
from tests.proto.smtp_driver import Driver, codes

GOOD = ("alice@example.test", "secret")
OK_235 = Reply(235, "2.7.0", "Authentication successful")
BAD_535 = Reply(535, "5.7.8", "Authentication credentials invalid")


@dataclass
class AuthDriver(Driver):
    """Driver answering AuthCredentials the way the submission service would."""

    credentials: list[ev.AuthCredentials] = field(default_factory=list)
    answer: Reply | None = None  # force a reply (e.g. 454 while throttled)

    def _handle(self, event: ev.Event) -> None:
        if isinstance(event, ev.AuthCredentials):
            self.credentials.append(event)
            if self.answer is not None:
                self.core.respond(self.answer)
            else:
                right = (event.username, event.password) == GOOD
                self.core.respond(OK_235 if right else BAD_535)
        else:
            super()._handle(event)


def submission(*, tls: bool = True, **config: object) -> AuthDriver:
    cfg = SmtpServerConfig(hostname="mail.example.test", auth_mechanisms=("PLAIN", "LOGIN"),
                           require_auth=True, **config)  # type: ignore[arg-type]
    d = AuthDriver(SmtpServer(cfg, tls_active=tls))
    assert codes(d.core.data_to_send()) == [220]
    return d


def plain(authzid: str, user: str, password: str) -> bytes:
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode())


def b64(text: str) -> bytes:
    return base64.b64encode(text.encode())


def test_ehlo_announces_auth_only_inside_tls() -> None:
    d = submission(tls=False)
    out = d.feed(b"EHLO c\r\n")
    assert b"AUTH" not in out and b"250 STARTTLS\r\n" in out
    # RFC 4954 §6: never take a password in cleartext, whatever the client tries.
    out = d.feed(b"AUTH PLAIN " + plain("", *GOOD) + b"\r\n")
    assert out.startswith(b"530 5.7.0 Must issue a STARTTLS")
    assert d.credentials == []
    assert d.feed(b"MAIL FROM:<alice@example.test>\r\n").startswith(b"530 5.7.0 ")
    d.feed(b"STARTTLS\r\n")
    d.start_tls()
    out = d.feed(b"EHLO c\r\n")
    assert out.endswith(b"250-CHUNKING\r\n250 AUTH PLAIN LOGIN\r\n")
    assert b"STARTTLS" not in out


def test_plain_with_initial_response_then_mail() -> None:
    d = submission()
    d.feed(b"EHLO c\r\n")
    out = d.feed(b"AUTH PLAIN " + plain("", *GOOD) + b"\r\n")
    assert out == b"235 2.7.0 Authentication successful\r\n"
    assert d.core.authenticated
    assert d.credentials == [ev.AuthCredentials("PLAIN", "", *GOOD)]
    assert "secret" not in repr(d.credentials[0])
    out = d.feed(b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
                 b"x\r\n.\r\n")
    assert codes(out) == [250, 250, 354, 250]
    # RFC 4954 §4: no second AUTH; STARTTLS after AUTH is refused too (checklist 7).
    assert d.feed(b"AUTH PLAIN " + plain("", *GOOD) + b"\r\n").startswith(b"503 ")
    assert d.feed(b"STARTTLS\r\n").startswith(b"503 ")
    assert len(d.credentials) == 1


def test_plain_without_initial_response() -> None:
    d = submission()
    d.feed(b"EHLO c\r\n")
    assert d.feed(b"AUTH plain\r\n") == b"334 \r\n"
    assert d.core.state is State.AUTH
    assert codes(d.feed(plain("", *GOOD) + b"\r\n")) == [235]


def test_login_and_login_with_initial_response() -> None:
    d = submission()
    d.feed(b"EHLO c\r\n")
    assert d.feed(b"AUTH LOGIN\r\n") == b"334 VXNlcm5hbWU6\r\n"
    assert d.feed(b64(GOOD[0]) + b"\r\n") == b"334 UGFzc3dvcmQ6\r\n"
    assert codes(d.feed(b64("wrong") + b"\r\n")) == [535]
    assert not d.core.authenticated
    assert d.feed(b"AUTH LOGIN " + b64(GOOD[0]) + b"\r\n") == b"334 UGFzc3dvcmQ6\r\n"
    assert codes(d.feed(b64(GOOD[1]) + b"\r\n")) == [235]


def test_authzid_other_than_login_fails_like_a_wrong_password() -> None:
    # Checklist 12 (RFC 4616): authz=bob, authc=alice → 535, and the service is never asked.
    d = submission()
    d.feed(b"EHLO c\r\n")
    out = d.feed(b"AUTH PLAIN " + plain("bob@example.test", *GOOD) + b"\r\n")
    assert out == BAD_535.to_bytes()
    assert d.credentials == []
    assert codes(d.feed(b"AUTH PLAIN " + plain(GOOD[0], *GOOD) + b"\r\n")) == [235]


def test_cancel_bad_base64_and_unknown_mechanism() -> None:
    d = submission()
    d.feed(b"EHLO c\r\n")
    assert d.feed(b"AUTH LOGIN\r\n").startswith(b"334 ")
    assert d.feed(b"*\r\n").startswith(b"501 5.7.0 ")  # RFC 4954 §4
    assert d.core.state is State.READY
    assert d.feed(b"AUTH PLAIN\r\n") == b"334 \r\n"
    assert d.feed(b"%%%\r\n").startswith(b"501 5.5.2 ")
    assert d.feed(b"AUTH PLAIN %%%\r\n").startswith(b"501 5.5.2 ")
    assert d.feed(b"AUTH CRAM-MD5\r\n").startswith(b"504 5.5.4 ")
    assert d.feed(b"AUTH\r\n").startswith(b"501 5.5.4 ")
    assert d.feed(b"AUTH PLAIN = extra\r\n").startswith(b"501 5.5.4 ")
    assert d.feed(b"AUTH PLAIN =\r\n").startswith(b"535 ")  # "=": an empty initial response
    assert d.credentials == []
    assert codes(d.feed(b"NOOP\r\n")) == [250]


def test_lines_inside_the_exchange_are_responses_not_commands() -> None:
    d = submission()
    d.feed(b"EHLO c\r\nAUTH LOGIN\r\n")
    out = d.feed(b"QUIT\r\n")  # valid base64: the user name, not a command
    assert out == b"334 UGFzc3dvcmQ6\r\n"
    assert not d.closed


def test_sasl_line_limit_is_12288() -> None:
    d = submission()
    d.feed(b"EHLO c\r\n")
    # Longer than a command line, shorter than RFC 4954's limit: accepted as a response.
    assert d.feed(b"AUTH LOGIN\r\n").startswith(b"334 ")
    assert d.feed(base64.b64encode(b"u" * 3000) + b"\r\n").startswith(b"334 ")
    assert codes(d.feed(b"*\r\n")) == [501]
    assert d.feed(b"AUTH LOGIN\r\n").startswith(b"334 ")
    assert d.feed(b"A" * 12300 + b"\r\n").startswith(b"500 5.5.6 ")
    assert d.core.state is State.READY
    assert d.feed(b"AUTH LOGIN\r\n").startswith(b"334 ")
    d.feed(b"A" * 20000)  # no newline yet: thrown away as it comes
    assert d.feed(b"AAAA\r\n").startswith(b"500 5.5.6 ")
    assert codes(d.feed(b"NOOP\r\n")) == [250]


def test_auth_sequence_rules() -> None:
    d = submission()
    assert d.feed(b"AUTH PLAIN " + plain("", *GOOD) + b"\r\n").startswith(b"503 ")  # no EHLO
    d.feed(b"HELO c\r\n")
    assert d.feed(b"AUTH PLAIN " + plain("", *GOOD) + b"\r\n").startswith(b"503 ")  # not ESMTP
    d.feed(b"EHLO c\r\n")
    assert codes(d.feed(b"AUTH PLAIN " + plain("", *GOOD) + b"\r\n")) == [235]
    d.feed(b"MAIL FROM:<alice@example.test>\r\n")
    # RFC 4954 §4: not during a transaction (and a second AUTH is refused anyway).
    assert d.feed(b"AUTH LOGIN\r\n").startswith(b"503 5.5.1 AUTH not allowed during")
    # EHLO and RSET keep the authentication (RFC 4954 §4 ties it to the session).
    d.feed(b"RSET\r\nEHLO again\r\n")
    assert d.core.authenticated
    assert codes(d.feed(b"MAIL FROM:<alice@example.test>\r\n")) == [250]


def test_mail_before_auth_is_530_and_auth_param_accepted() -> None:
    d = submission()
    d.feed(b"EHLO c\r\n")
    assert d.feed(b"MAIL FROM:<alice@example.test>\r\n") == (
        b"530 5.7.0 Authentication required\r\n")
    d.feed(b"AUTH PLAIN " + plain("", *GOOD) + b"\r\n")
    # RFC 4954 §5: a relaying client may pass AUTH=<>; a server announcing AUTH accepts it.
    assert codes(d.feed(b"MAIL FROM:<alice@example.test> AUTH=<>\r\n")) == [250]


def test_pipelined_auth_after_starttls_is_discarded() -> None:
    # Checklist 4 with a twist: credentials pipelined behind STARTTLS never reach the service.
    d = submission(tls=False)
    d.feed(b"EHLO c\r\n")
    out = d.feed(b"STARTTLS\r\nAUTH PLAIN " + plain("", *GOOD) + b"\r\n")
    assert codes(out) == [220]
    d.start_tls()
    assert d.feed(b"") == b""
    assert d.credentials == [] and not d.core.authenticated


def test_service_reply_is_relayed_and_failures_count_as_errors() -> None:
    d = submission(max_errors=3)
    d.answer = Reply(454, "4.7.0", "Too many failed logins, try again later")
    d.feed(b"EHLO c\r\n")
    assert d.feed(b"AUTH PLAIN " + plain("", *GOOD) + b"\r\n").startswith(b"454 4.7.0 ")
    assert not d.core.authenticated
    d.answer = None
    out = d.feed(b"AUTH PLAIN " + plain("", "x", "y") + b"\r\n"
                 + b"AUTH PLAIN " + plain("", "x", "y") + b"\r\n")
    assert codes(out) == [535, 535, 421]  # the session's error limit still applies
    assert d.closed


@pytest.mark.parametrize("tls", [False, True])
def test_mx_port_has_no_auth(tls: bool) -> None:
    d = Driver.new()
    d.core.tls_active = tls
    d.core.data_to_send()
    out = d.feed(b"EHLO c\r\n")
    assert b"AUTH" not in out
    assert d.feed(b"AUTH PLAIN " + plain("", *GOOD) + b"\r\n").startswith(
        b"503 5.5.1 Authentication not enabled")
    # An AUTH= parameter is not ours to accept there either.
    assert codes(d.feed(b"MAIL FROM:<a@sender.test> AUTH=<>\r\n")) == [555]
    assert not any(isinstance(e, ev.AuthCredentials) for e in d.events)


def test_shutdown_inside_exchange_and_while_deciding() -> None:
    d = submission()
    d.feed(b"EHLO c\r\nAUTH LOGIN\r\n")
    assert d.core.shutdown()
    assert d.core.data_to_send().startswith(b"421 4.3.2")
    cfg = SmtpServerConfig(hostname="h", auth_mechanisms=("PLAIN",))
    core = SmtpServer(cfg, tls_active=True)
    core.receive_data(b"EHLO c\r\nAUTH PLAIN " + plain("", *GOOD) + b"\r\n")
    while not isinstance(core.next_event(), ev.AuthCredentials):
        pass
    assert not core.shutdown()  # a login is being checked: answer it first
    core.respond(OK_235)
    assert core.shutdown()
