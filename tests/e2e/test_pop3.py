"""POP3 end to end: poplib against the real server over 110+STLS and 995 (issue 4)."""

from __future__ import annotations

import poplib
import smtplib
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Running, make_config, start_server

LISTEN = {"pop3": ("127.0.0.1:0",), "pop3s": ("127.0.0.1:0",)}


def tls_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@pytest.fixture
def pop(tmp_path: Path) -> Iterator[Running]:
    yield from start_server(make_config(tmp_path, listen=LISTEN))


def deliver(server: Running, body: bytes, to: str = "alice@example.test") -> None:
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=10) as smtp:
        assert smtp.sendmail("a@sender.test", [to], body) == {}


def stls(server: Running) -> poplib.POP3:
    client = poplib.POP3("127.0.0.1", server.port("pop3"), timeout=10)
    client.stls(context=tls_context())
    return client


MESSAGES = [
    b"Subject: one\r\n\r\nfirst\r\n",
    b"Subject: two\r\n\r\n.\r\n..two dots\r\n.x\r\n",
    b"Subject: three\r\n\r\n" + b"line\r\n" * 2000,
]


def test_download_keep_and_delete_over_stls_and_995(pop: Running) -> None:
    for body in MESSAGES:
        deliver(pop, body)
    stored = pop.messages("alice@example.test")
    client = stls(pop)
    assert {b"STLS"}.isdisjoint(client.capa())  # not offered again inside TLS
    client.user("alice@example.test")
    client.pass_("password-alice")
    count, size = client.stat()
    assert (count, size) == (3, sum(len(m) for m in stored))
    listing = client.list()[1]
    assert [int(line.split()[1]) for line in listing] == [len(m) for m in stored]
    uidls = [line.split()[1] for line in client.uidl()[1]]
    assert len(set(uidls)) == 3
    for i, expected in enumerate(stored, start=1):
        lines = client.retr(i)[1]
        assert b"\r\n".join(lines) + b"\r\n" == expected  # poplib un-stuffs the dots
    head = client.top(3, 2)[1]
    assert head[-3:] == [b"", b"line", b"line"]
    client.dele(1)
    client.quit()
    assert len(pop.messages("alice@example.test")) == 2

    client = poplib.POP3_SSL("127.0.0.1", pop.port("pop3s"), context=tls_context(), timeout=10)
    client.user("alice@example.test")
    client.pass_("password-alice")
    assert [line.split()[1] for line in client.uidl()[1]] == uidls[1:]  # stable UIDLs
    client.dele(1)
    client.dele(2)
    client.quit()
    assert pop.messages("alice@example.test") == []


def test_dropped_connection_deletes_nothing_and_frees_the_lock(pop: Running) -> None:
    deliver(pop, MESSAGES[0])
    client = stls(pop)
    client.user("alice@example.test")
    client.pass_("password-alice")
    second = stls(pop)
    second.user("alice@example.test")
    with pytest.raises(poplib.error_proto, match=r"IN-USE"):
        second.pass_("password-alice")
    client.dele(1)
    client.file.close()  # no QUIT: never the UPDATE state
    client.sock.close()
    for _ in range(50):  # the server notices the close and releases the maildrop
        third = stls(pop)
        third.user("alice@example.test")
        try:
            third.pass_("password-alice")
            break
        except poplib.error_proto:
            third.quit()
            time.sleep(0.1)
    else:
        pytest.fail("the maildrop lock was never released")
    assert third.stat()[0] == 1
    third.quit()


def test_no_login_before_stls_and_stls_discards_pipelined_input(pop: Running) -> None:
    client = poplib.POP3("127.0.0.1", pop.port("pop3"), timeout=10)
    capa = client.capa()
    assert "STLS" in capa and "USER" not in capa and "SASL" not in capa
    with pytest.raises(poplib.error_proto):
        client.user("alice@example.test")
    client.quit()
    sock = socket.create_connection(("127.0.0.1", pop.port("pop3")), timeout=10)
    f = sock.makefile("rb")
    assert f.readline().startswith(b"+OK")
    sock.sendall(b"STLS\r\nCAPA\r\n")
    assert f.readline().startswith(b"+OK")
    tls = tls_context().wrap_socket(sock, server_hostname="mx.example.test")
    tls.sendall(b"NOOP\r\n")
    assert tls.recv(1000).startswith(b"-ERR")  # NOOP before login; no CAPA listing first
    tls.close()


def test_failed_logins_look_alike(pop: Running) -> None:
    replies = []
    for user, password in (("alice@example.test", "wrong"), ("nobody@example.test", "x")):
        client = stls(pop)
        client.user(user)
        with pytest.raises(poplib.error_proto) as exc:
            client.pass_(password)
        replies.append(exc.value.args[0])
        client.quit()
    assert replies[0] == replies[1] and replies[0].startswith(b"-ERR [AUTH]")
