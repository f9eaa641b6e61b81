"""Sending for real: a user submits over 465 with AUTH, mailhouse finds the recipient's MX through
a DNS server the test runs, and delivers to a real Postfix listening as that MX on 127.0.0.2
(port 25 when we may bind it). The DKIM signature must verify; a 5xx comes back to the sender as
an RFC 3464 bounce; a queue survives kill -9 and a restart (issue 3, "Done when")."""

from __future__ import annotations

import email
import email.policy
import os
import smtplib
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dkim
import dns.resolver
import pytest

from tests.helpers.dns import DnsServer
from tests.helpers.mailhouse import MailhouseServer
from tests.helpers.net import free_port
from tests.helpers.postfix import PostfixInstance
from tests.helpers.tools import require_tools

pytestmark = pytest.mark.interop

PASSWORD = "correct horse battery"
MX_IP = "127.0.0.2"
LATER_IP = "127.0.0.3"


def mx_port() -> int:
    """Port 25 on the MX address when we may bind it (root, nothing there), else a free one."""
    if os.geteuid() == 0:
        with socket.socket() as sock:
            try:
                sock.bind((MX_IP, 25))
                return 25
            except OSError:
                pass
    return free_port()


class MxPostfix(PostfixInstance):
    """A Postfix that also listens on another loopback address, as a remote domain's MX."""

    def __init__(self, mx_ip: str, mx_port: int, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.mx_ip, self.mx_port = mx_ip, mx_port

    def master_cf(self) -> str:
        return f"{self.mx_ip}:{self.mx_port} inet n - n - - smtpd\n" + super().master_cf()


def wait_until(predicate: object, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return False


def maildir_files(directory: Path) -> list[Path]:
    return sorted(p for sub in ("new", "cur") if (directory / sub).is_dir()
                  for p in (directory / sub).iterdir())


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[MailhouseServer, DnsServer, int]]:
    require_tools("postfix")
    port = mx_port()
    zones: dict[str, object] = {
        "remote.test": {"MX": [(10, "mx.remote.test")]},
        "mx.remote.test": {"A": [MX_IP]},
        "later.test": {"MX": [(10, "mx.later.test")]},
        "mx.later.test": {"A": [LATER_IP]},
    }
    with DnsServer(zones) as dns:  # type: ignore[arg-type]
        server = MailhouseServer(
            tmp_path / "mh", protocols=("smtp", "submissions"), hostname="mx.example.test",
            extra_toml=(f'[delivery]\nport = {port}\nconnect_timeout = 5\n'
                        f'[dns]\nnameservers = ["{dns.nameserver}"]\n'
                        "[queue]\nmin_backoff = 1\nmax_backoff = 2\n"))
        server.add_domain("example.test")
        server.add_user("alice@example.test", PASSWORD)
        records = server.cli("dns-records", "example.test").stdout.decode()
        for line in records.splitlines():
            if "._domainkey." in line:
                name, _, rest = line.partition(" IN TXT ")
                parts = [p for p in rest.split('"') if p.strip()]
                dns.set(name.rstrip("."), "TXT", [tuple(parts)])
        server.start()
        try:
            yield server, dns, port
        finally:
            server.close()


def submit(server: MailhouseServer, to: str, subject: str) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    body = (f"From: Alice <alice@example.test>\r\nTo: <{to}>\r\nSubject: {subject}\r\n\r\n"
            "Hello from mailhouse.\r\n.leading dot line\r\n").encode()
    with smtplib.SMTP_SSL("127.0.0.1", server.port("submissions"), context=ctx,
                          timeout=30) as smtp:
        smtp.login("alice@example.test", PASSWORD)
        assert smtp.sendmail("alice@example.test", [to], body) == {}


def dkim_dns(server: DnsServer) -> Callable[..., bytes]:
    """A dkimpy `dnsfunc` that asks the test's DNS server, as a verifying receiver would."""
    resolver = dns.resolver.Resolver(configure=False)
    host, port = server.nameserver.rsplit(":", 1)
    resolver.nameservers = [host]
    resolver.port = int(port)

    def lookup(name: bytes, timeout: int = 5) -> bytes:
        answer = resolver.resolve(name.decode().rstrip("."), "TXT")
        return b"".join(b"".join(r.strings) for r in answer)

    return lookup


def test_submitted_mail_reaches_postfix_mx_with_valid_dkim(
        world: tuple[MailhouseServer, DnsServer, int]) -> None:
    server, dns_server, port = world
    with MxPostfix(MX_IP, port, mailboxes=["bob@remote.test"]) as mx:
        submit(server, "bob@remote.test", "over the wire")
        inbox = mx.mailbox_dir("bob@remote.test")
        assert wait_until(lambda: maildir_files(inbox)), server.log_tail()
        [path] = maildir_files(inbox)
        raw = path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert message["Subject"] == "over the wire"
        assert b"\r\n.leading dot line\r\n" in raw  # dot-unstuffed by Postfix: we stuffed it
        signatures = message.get_all("DKIM-Signature") or []
        assert any("a=rsa-sha256" in str(s) for s in signatures)
        assert any("a=ed25519-sha256" in str(s) for s in signatures)
        lookup = dkim_dns(dns_server)
        verifier = dkim.DKIM(raw)
        for index in range(len(signatures)):
            assert verifier.verify(idx=index, dnsfunc=lookup), f"signature {index} fails"
        assert any(d.status == "sent" for d in mx.deliveries())


def test_remote_5xx_comes_back_as_a_bounce(
        world: tuple[MailhouseServer, DnsServer, int]) -> None:
    server, _, port = world
    with MxPostfix(MX_IP, port, mailboxes=["bob@remote.test"]):
        submit(server, "nobody@remote.test", "to nobody")

        def bounced() -> bool:
            return any(b"multipart/report" in m.data for m in server.export(
                "alice@example.test"))

        assert wait_until(bounced), server.log_tail()
        [dsn] = [m for m in server.export("alice@example.test")
                 if b"multipart/report" in m.data]
        text = dsn.data.decode("utf-8", "replace")
        assert "Final-Recipient: rfc822; nobody@remote.test" in text
        assert "Action: failed" in text and "Status: 5.1.1" in text
        assert "Subject: to nobody" in text  # the original headers come back
        assert server.cli("queue", "list").stdout.strip().count(b"\n") <= 1


def test_queue_survives_kill_and_is_delivered_after_restart(
        world: tuple[MailhouseServer, DnsServer, int]) -> None:
    server, _, port = world
    for i in range(5):
        submit(server, "carol@later.test", f"queued {i}")  # nobody listens on 127.0.0.3 yet
    listing = server.cli("queue", "list").stdout.decode()
    assert "5 messages, 5 recipients" in listing, listing
    assert "carol@later.test" in server.cli("queue", "show", "1").stdout.decode()
    server.kill()
    with MxPostfix(LATER_IP, port, mailboxes=["carol@later.test"]) as mx:
        server.start()
        server.cli("queue", "flush")
        inbox = mx.mailbox_dir("carol@later.test")
        assert wait_until(lambda: len(maildir_files(inbox)) >= 5), server.log_tail()
        subjects = sorted(email.message_from_bytes(p.read_bytes())["Subject"]
                          for p in maildir_files(inbox))
        assert subjects == [f"queued {i}" for i in range(5)]
