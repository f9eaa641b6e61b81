"""The MX listener end to end: smtplib against the real server, mail checked in the store."""

from __future__ import annotations

import smtplib
import socket
import ssl

import pytest

from tests.e2e.conftest import Running

MESSAGE = b"From: a@sender.test\r\nTo: alice@example.test\r\nSubject: hi\r\n\r\nHello.\r\n"


def connect(server: Running) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=10)


def test_deliver_one_message(server: Running) -> None:
    with connect(server) as smtp:
        code, _ = smtp.ehlo("client.test")
        assert code == 250
        for keyword in ("pipelining", "size", "8bitmime", "smtputf8", "enhancedstatuscodes",
                        "chunking", "starttls"):
            assert smtp.has_extn(keyword), keyword
        assert not smtp.has_extn("auth")
        refused = smtp.sendmail("a@sender.test", ["alice@example.test"], MESSAGE)
        assert refused == {}
    [stored] = server.messages("alice@example.test")
    assert stored.startswith(b"Return-Path: <a@sender.test>\r\nReceived: from client.test ")
    assert b"by mx.example.test (mailhouse) with ESMTP id " in stored
    assert b"for <alice@example.test>;" in stored
    assert stored.endswith(MESSAGE)


def test_relay_denied_and_unknown_user(server: Running) -> None:
    with connect(server) as smtp:
        smtp.ehlo("client.test")
        smtp.mail("a@sender.test")
        code, text = smtp.rcpt("someone@elsewhere.test")
        assert (code, text[:5]) == (554, b"5.7.1")
        code, text = smtp.rcpt("nobody@example.test")
        assert (code, text[:5]) == (550, b"5.1.1")
        for trick in ("someone%elsewhere.test@example.test", "elsewhere.test!someone",
                      "@example.test:someone@elsewhere.test", '"someone@elsewhere.test"',
                      "someone@[127.0.0.1]"):
            code, _ = smtp.rcpt(trick)
            assert code in (550, 554, 501), trick
        code, _ = smtp.rcpt("alice+news@example.test")
        assert code == 250


def test_alias_and_plus_address_share_one_copy_per_account(server: Running) -> None:
    with connect(server) as smtp:
        smtp.sendmail("a@sender.test", ["team@example.test", "alice+x@example.test",
                                        "BOB@Example.TEST"], MESSAGE)
    assert len(server.messages("alice@example.test")) == 1
    assert len(server.messages("bob@example.test")) == 1


def test_starttls_then_mail(server: Running) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with connect(server) as smtp:
        smtp.starttls(context=ctx)
        smtp.ehlo("client.test")
        assert not smtp.has_extn("starttls")
        smtp.sendmail("a@sender.test", ["bob@example.test"], MESSAGE)
    [stored] = server.messages("bob@example.test")
    assert b"with ESMTPS id" in stored and b"(TLSv1." in stored


def test_starttls_injection_is_discarded(server: Running) -> None:
    # Checklist 4: commands sent in the same segment as STARTTLS never run inside TLS.
    sock = socket.create_connection(("127.0.0.1", server.smtp_port), timeout=10)
    f = sock.makefile("rb")
    f.readline()
    sock.sendall(b"EHLO c\r\n")
    while f.readline()[3:4] == b"-":
        pass
    sock.sendall(b"STARTTLS\r\nNOOP\r\nNOOP\r\n")
    assert f.readline().startswith(b"220 ")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    tls = ctx.wrap_socket(sock, server_hostname="mx.example.test")
    tls.sendall(b"QUIT\r\n")
    assert tls.recv(1000).startswith(b"221 ")  # not a NOOP's 250
    tls.close()


def test_smtputf8_message(server: Running) -> None:
    body = "From: jürgen@sender.test\r\nSubject: grüße\r\n\r\nÄpfel\r\n".encode()
    with connect(server) as smtp:
        smtp.ehlo("client.test")
        smtp.sendmail("jürgen@sender.test", ["alice@example.test"], body,
                      mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    [stored] = server.messages("alice@example.test")
    assert stored.endswith(body)
    assert "Return-Path: <jürgen@sender.test>".encode() in stored
    assert b"with UTF8SMTP id" in stored


@pytest.mark.parametrize("size", [0, 1, 70_000, 3_000_000])
def test_bdat_sizes(server: Running, size: int) -> None:
    body = MESSAGE + (b"x" * 76 + b"\r\n") * (size // 78)
    sock = socket.create_connection(("127.0.0.1", server.smtp_port), timeout=30)
    f = sock.makefile("rb")
    f.readline()
    half = len(body) // 2
    sock.sendall(b"EHLO c\r\nMAIL FROM:<a@sender.test>\r\nRCPT TO:<alice@example.test>\r\n"
                 + b"BDAT %d\r\n" % half + body[:half]
                 + b"BDAT %d LAST\r\n" % (len(body) - half) + body[half:] + b"QUIT\r\n")
    replies = [line for line in f if line[3:4] == b" "]
    assert [r[:3] for r in replies] == [b"250", b"250", b"250", b"250", b"250", b"221"]
    assert server.messages("alice@example.test")[0].endswith(body)


def test_new_user_seen_without_restart(server: Running) -> None:
    from mailhouse.service.accounts import Accounts, Passwords
    from tests.e2e.conftest import CHEAP_HASHER

    server.call(Accounts(server.app.store, Passwords(CHEAP_HASHER)).add_user(
        "carol@example.test", "password-carol"))
    # No refresh: a refusal is confirmed against the store, so the new user is seen at once.
    with connect(server) as smtp:
        smtp.sendmail("a@sender.test", ["carol@example.test"], MESSAGE)
    assert len(server.messages("carol@example.test")) == 1


def test_u_label_and_a_label_domains_reach_the_same_mailbox(server: Running) -> None:
    # Checklist 35: bücher.example and xn--bcher-kva.example are one domain.
    from mailhouse.service.accounts import Accounts, Passwords
    from tests.e2e.conftest import CHEAP_HASHER

    accounts = Accounts(server.app.store, Passwords(CHEAP_HASHER))
    server.call(accounts.add_domain("bücher.example"))
    server.call(accounts.add_user("anna@xn--bcher-kva.example", "password-anna"))
    with connect(server) as smtp:
        smtp.ehlo("client.test")
        smtp.sendmail("a@sender.test", ["anna@bücher.example"], MESSAGE,
                      mail_options=["SMTPUTF8"])
        smtp.sendmail("a@sender.test", ["anna@xn--bcher-kva.example"], MESSAGE)
    assert len(server.messages("anna@xn--bcher-kva.example")) == 2
