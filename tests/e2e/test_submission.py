"""Submission end to end: the real App in-process, smtplib over 587-style STARTTLS and 465
implicit TLS (security checklist 4-8, 11, 12, 27)."""

from __future__ import annotations

import asyncio
import base64
import smtplib
import socket
import ssl
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from mailhouse.app import App
from mailhouse.config import ListenConfig, SubmissionConfig
from mailhouse.service.accounts import Accounts, Passwords
from mailhouse.store.base import RecipientStatus
from tests.e2e.conftest import CHEAP_HASHER, Running, make_config, new_loop

DELAY = 0.1  # auth_failure_delay for these tests
LIMIT = 10
ALICE = ("alice@example.test", "password-alice")
MESSAGE = (b"From: Alice <alice@example.test>\r\nTo: bob@example.test\r\nSubject: hi\r\n\r\n"
           b"Hello.\r\n")


@dataclass
class Submission(Running):
    ports: dict[str, int] = field(default_factory=dict)
    woken: list[float] = field(default_factory=list)


def start(tmp_path: Path) -> Iterator[Submission]:
    config = make_config(tmp_path)
    config = replace(
        config,
        listen=replace(ListenConfig(), smtp=("127.0.0.1:0",), submission=("127.0.0.1:0",),
                       submissions=("127.0.0.1:0",), imap=(), imaps=(), pop3=(), pop3s=()),
        submission=replace(SubmissionConfig(), auth_failure_delay=DELAY,
                           auth_failure_limit=LIMIT,
                           senders={"alice@example.test": ("ceo@example.test",
                                                           "@partner.test")}),
    )
    loop = new_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    woken: list[float] = []
    # The cheap hasher for stored hashes *and* the dummy hash: timing compares like with like.
    app = App(config, passwords=Passwords(CHEAP_HASHER), on_queued=lambda: woken.append(1.0))

    async def setup() -> None:
        await app.start()
        accounts = Accounts(app.store, Passwords(CHEAP_HASHER))
        await accounts.add_domain("example.test")
        for user in ("alice", "bob"):
            await accounts.add_user(f"{user}@example.test", "password-" + user)
        await accounts.add_alias("team@example.test", ["alice@example.test", "bob@example.test"])
        await app.directory.refresh()

    asyncio.run_coroutine_threadsafe(setup(), loop).result(30)
    ports = {listener.name: listener.bound_ports()[0] for listener in app.listeners}
    try:
        yield Submission(app, loop, ports["smtp"], config.data_dir, ports, woken)
    finally:
        asyncio.run_coroutine_threadsafe(app.stop(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Submission]:
    yield from start(tmp_path)


def client_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the self-signed certificate of the test server
    return ctx


def starttls(server: Submission) -> smtplib.SMTP:
    smtp = smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=10)
    smtp.ehlo("client.test")
    smtp.starttls(context=client_context())
    smtp.ehlo("client.test")
    return smtp


def implicit(server: Submission) -> smtplib.SMTP_SSL:
    smtp = smtplib.SMTP_SSL("127.0.0.1", server.ports["submissions"], timeout=10,
                            context=client_context())
    smtp.ehlo("client.test")
    return smtp


def plain(authzid: str, user: str, password: str) -> str:
    return "PLAIN " + base64.b64encode(f"{authzid}\0{user}\0{password}".encode()).decode()


def test_no_auth_before_tls(server: Submission) -> None:
    # Checklist 6: not advertised, refused (530 5.7.0, RFC 3207 §4), MAIL before AUTH → 530.
    with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=10) as smtp:
        smtp.ehlo("client.test")
        assert smtp.has_extn("starttls") and not smtp.has_extn("auth")
        code, text = smtp.docmd("AUTH", plain("", *ALICE))
        assert (code, text[:5]) == (530, b"5.7.0")
        code, text = smtp.mail(ALICE[0])
        assert (code, text[:5]) == (530, b"5.7.0")
        smtp.starttls(context=client_context())
        smtp.ehlo("client.test")
        assert smtp.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        assert not smtp.has_extn("starttls")
        code, _ = smtp.mail(ALICE[0])
        assert code == 530  # TLS alone is not enough


def test_send_to_local_user_over_starttls(server: Submission) -> None:
    with starttls(server) as smtp:
        smtp.login(*ALICE)  # smtplib picks PLAIN with an initial response
        assert smtp.sendmail(ALICE[0], ["bob@example.test"], MESSAGE) == {}
        # STARTTLS after AUTH → 503 (checklist 7).
        assert smtp.docmd("STARTTLS")[0] == 503
    [stored] = server.messages("bob@example.test")
    head, _, body = stored.partition(b"\r\n\r\n")
    assert stored.startswith(b"Received: from client.test ([127.0.0.1])\r\n\tby mx.example.test "
                             b"(mailhouse) with ESMTPSA id ")
    assert b"\r\n\t(TLSv1." in head and b"for <bob@example.test>;" in head
    assert b"Return-Path" not in head  # final delivery adds it, not submission
    assert head.count(b"\r\nMessage-ID: <") == 1 and head.count(b"@mx.example.test>") == 1
    assert head.count(b"\r\nDate: ") == 1
    assert stored.endswith(MESSAGE)
    assert body == b"Hello.\r\n"
    assert server.messages("alice@example.test") == []  # no copy to Sent or anywhere else


def test_existing_message_id_and_date_are_kept(server: Submission) -> None:
    message = (b"Message-ID: <own@client.test>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
               + MESSAGE)
    with implicit(server) as smtp:
        smtp.login(*ALICE)
        smtp.sendmail(ALICE[0], ["bob@example.test"], message)
    [stored] = server.messages("bob@example.test")
    assert stored.count(b"Message-ID:") == 1 and stored.count(b"Date:") == 1
    assert stored.endswith(message)


def test_mechanisms_over_implicit_tls(server: Submission) -> None:
    # RFC 8314: port 465 starts in TLS; PLAIN without initial response and LOGIN both work.
    with implicit(server) as smtp:
        assert smtp.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        smtp.user, smtp.password = ALICE
        code, _ = smtp.auth("PLAIN", smtp.auth_plain, initial_response_ok=False)
        assert code == 235
    with implicit(server) as smtp:
        smtp.user, smtp.password = ALICE
        code, _ = smtp.auth("LOGIN", smtp.auth_login, initial_response_ok=False)
        assert code == 235
        assert smtp.sendmail(ALICE[0], ["team@example.test"], MESSAGE) == {}
    assert len(server.messages("bob@example.test")) == 1


def test_authzid_other_than_login_is_refused(server: Submission) -> None:
    # Checklist 12 (RFC 4616).
    with starttls(server) as smtp:
        code, text = smtp.docmd("AUTH", plain("bob@example.test", *ALICE))
        assert (code, text[:5]) == (535, b"5.7.8")
        # The same bytes as a wrong password: nothing tells which part was refused.
        assert smtp.docmd("AUTH", plain("", ALICE[0], "wrong")) == (code, text)
        assert smtp.docmd("AUTH", plain(ALICE[0], *ALICE))[0] == 235


def test_failures_delayed_then_locked_and_indistinguishable(server: Submission) -> None:
    # Checklist 11: each bad attempt answered 535 after the delay; unknown user and wrong
    # password give the same reply in the same time; then the lock, even for the right password.
    timings: dict[str, list[float]] = {"unknown": [], "wrong": []}
    replies = set()
    with starttls(server) as smtp:
        for i in range(LIMIT):
            kind = "unknown" if i % 2 else "wrong"
            user = "ghost@example.test" if kind == "unknown" else ALICE[0]
            start = time.monotonic()
            code, text = smtp.docmd("AUTH", plain("", user, "not-the-password"))
            timings[kind].append(time.monotonic() - start)
            replies.add((code, text))
        assert replies == {(535, b"5.7.8 Authentication credentials invalid")}
        assert min(timings["unknown"] + timings["wrong"]) >= DELAY * 0.9
        gap = abs(statistics.median(timings["unknown"]) - statistics.median(timings["wrong"]))
        assert gap < DELAY / 2, timings
        start = time.monotonic()
        code, text = smtp.docmd("AUTH", plain("", *ALICE))
        assert (code, text[:5]) == (454, b"4.7.0")
        assert time.monotonic() - start >= DELAY * 0.9
    with implicit(server) as smtp:  # the lock is per IP, not per connection
        assert smtp.docmd("AUTH", plain("", *ALICE))[0] == 454


def test_sender_must_be_owned(server: Submission) -> None:
    with starttls(server) as smtp:
        smtp.login(*ALICE)
        for sender, code in (("bob@example.test", 553), ("BOB@EXAMPLE.TEST", 553),
                             ("team@example.test", 250), ("alice+lists@example.test", 250),
                             ("Alice@Example.Test", 250), ("ceo@example.test", 250),
                             ("anyone@partner.test", 250), ("alice@elsewhere.test", 553),
                             ("", 553)):
            got, text = smtp.mail(sender)
            assert got == code, (sender, text)
            if code == 553:
                assert text.startswith(b"5.7.1 ")
            smtp.rset()


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        (b"From: bob@example.test\r\n", 550),  # not hers
        (b"From: alice@example.test\r\nFrom: bob@example.test\r\n", 554),  # two From fields
        (b"From: alice@example.test, bob@example.test\r\n", 554),  # two addresses
        (b"Subject: no from\r\n", 554),
        (b"From : bob@example.test\r\nFrom: alice@example.test\r\n", 554),  # obs spacing
        (b"From: bob@example.test <alice@example.test>\r\n", 554),  # an address as a name
        (b"From: Team <team@example.test>\r\n", 250),  # her alias
        (b"From: \"Alice, A.\" <alice@example.test> (home)\r\n", 250),
    ],
)
def test_header_from_rules(server: Submission, headers: bytes, code: int) -> None:
    # Checklist 27 ("Composition Kills"): exactly one From, and one she may use.
    with implicit(server) as smtp:
        smtp.login(*ALICE)
        smtp.mail(ALICE[0])
        smtp.rcpt("bob@example.test")
        got, text = smtp.data(headers + b"Subject: x\r\n\r\nbody\r\n")
        assert got == code, text
        if code == 554:
            assert text.startswith(b"5.6.0 ")
        elif code == 550:
            assert text.startswith(b"5.7.1 ")
    assert len(server.messages("bob@example.test")) == (1 if code == 250 else 0)


def test_unknown_local_user_refused_remote_queued(server: Submission) -> None:
    with starttls(server) as smtp:
        smtp.login(*ALICE)
        smtp.mail(ALICE[0])
        code, text = smtp.rcpt("nobody@example.test")
        assert (code, text[:5]) == (550, b"5.1.1")
        assert smtp.rcpt("carol@remote.test")[0] == 250
        assert smtp.rcpt("bob@example.test")[0] == 250
        code, _ = smtp.data(MESSAGE)
        assert code == 250
    assert len(server.messages("bob@example.test")) == 1
    queued = server.call(server.app.store.queue_list())
    assert isinstance(queued, list) and len(queued) == 1
    entry = queued[0]
    assert entry.sender == ALICE[0]
    assert [(r.address, r.status) for r in entry.recipients] == [
        ("carol@remote.test", RecipientStatus.PENDING)]
    assert server.woken == [1.0]  # the queue worker was told


def test_pipelined_auth_after_starttls_is_discarded(server: Submission) -> None:
    # Checklist 4: credentials injected before the handshake never run inside TLS.
    sock = socket.create_connection(("127.0.0.1", server.ports["submission"]), timeout=10)
    f = sock.makefile("rb")
    assert f.readline().startswith(b"220 ")
    sock.sendall(b"EHLO c\r\n")
    while not f.readline().startswith(b"250 "):
        pass
    sock.sendall(b"STARTTLS\r\nAUTH " + plain("", *ALICE).encode() + b"\r\n")
    assert f.readline().startswith(b"220 ")
    tls = client_context().wrap_socket(sock, server_hostname="mx.example.test")
    tls.sendall(b"MAIL FROM:<alice@example.test>\r\n")
    assert tls.recv(1000).startswith(b"503 ")  # no EHLO yet, and no 235 was ever sent
    tls.sendall(b"EHLO c\r\n")
    time.sleep(0.2)
    tls.sendall(b"MAIL FROM:<alice@example.test>\r\n")
    data = b""
    while not data.endswith(b"\r\n") or b"530 " not in data:
        chunk = tls.recv(1000)
        assert chunk, data
        data += chunk
    assert b"235" not in data
    tls.close()


def test_mx_port_still_never_authenticates_or_relays(server: Submission) -> None:
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=10) as smtp:
        smtp.ehlo("client.test")
        smtp.starttls(context=client_context())
        smtp.ehlo("client.test")
        assert not smtp.has_extn("auth")
        assert smtp.docmd("AUTH", plain("", *ALICE))[0] == 503
        smtp.mail(ALICE[0])
        code, text = smtp.rcpt("carol@remote.test")
        assert (code, text[:5]) == (554, b"5.7.1")
    assert server.call(server.app.store.queue_list()) == []
