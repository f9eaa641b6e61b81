"""fetchmail and getmail6 (the Debian packages) download from a real mailhouse over POP3.

For each client, TLS mode and mode (keep / delete) a fresh user gets the same six messages by
SMTP on the server's ``smtp`` listener (smtplib): a plain one, one with a line that is a single
"." and lines starting with "." and "..", raw 8-bit bytes (UTF-8 and non-UTF-8), a 998-octet
line, a folded header and blank lines at the end, and a multipart one with a ~2 MB attachment.
Then:

- the expected bytes are what the server stored, read back with ``mailhouse export`` before the
  fetch (the submitted bytes after the server's Return-Path and Received; that is checked too);
- fetchmail (``set invisible``, ``no rewrite``, ``no stripcr``, an MDA writing one file per
  message) must deliver exactly those bytes (in keep mode it downloads with ``TOP n 99999999``,
  in delete mode, with ``fetchall``, with RETR, so both commands are covered); getmail6
  (Maildir destination) always replaces the Return-Path with its own, so it must deliver the
  same bytes after the trace fields, and a Return-Path with the same address;
- all six, in delivery order, once each;
- keep mode: the server's INBOX is unchanged afterwards, and a second keep-mode run with the
  same UIDL state (fetchmail's --idfile, getmail's oldmail file) downloads nothing;
- delete mode: the server's INBOX is empty afterwards.

Ports: fetchmail over the ``pop3`` listener with STLS required (``sslproto 'TLS1.2+'``) and over
``pop3s`` (implicit TLS), both with ``no sslcertck`` (the server's certificate is self-signed).
getmail6 6.18 has no STLS for POP3, so it runs over ``pop3s`` only; over the plain port it must
fail to log in (USER/PASS before STLS is refused by default) without touching the maildrop, and
it works there in plain text when the server sets ``[pop3] allow_plaintext_auth = true``.

The same client runs are made against a private **Dovecot** 2.3 POP3 server
(tests/helpers/dovecot.py, root only) holding the same messages, as the reference: a client
quirk shows up on both servers, a mailhouse bug only on mailhouse.

Each test takes a few seconds (the 2 MB message dominates). Loopback only.
"""

from __future__ import annotations

import base64
import random
import re
import shutil
import smtplib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from tests.helpers.dovecot import DovecotPop3
from tests.helpers.fixtures import MailhouseFactory, start_mailhouse
from tests.helpers.maildir import split_trace
from tests.helpers.mailhouse import MailhouseServer
from tests.helpers.pop3_clients import (
    FetchRun,
    Pop3Account,
    TlsMode,
    run_fetchmail,
    run_getmail,
    to_crlf,
    world_searchable_dir,
)
from tests.helpers.tools import require_root, require_tools

pytestmark = pytest.mark.interop

DOMAIN = "example.test"
SENDER = "sender@remote.test"
PASSWORD = "pop3-interop-password"  # a throwaway account on a loopback-only test server
ATTACHMENT_BYTES = 1_500_000  # base64: ~2 MB on the wire

_MESSAGE_ID = re.compile(rb"^Message-ID:\s*<([^>]+)>", re.IGNORECASE | re.MULTILINE)


# --------------------------------------------------------------------------- the messages


def crlf(text: bytes) -> bytes:
    return to_crlf(text)


def build_messages(tag: str, recipient: str) -> list[tuple[str, bytes]]:
    """The six test messages (CRLF, as submitted by SMTP): (Message-ID, bytes)."""

    def head(n: int, subject: str, extra: str = "") -> tuple[str, bytes]:
        mid = f"{tag}.{n}@remote.test"
        text = (
            f"From: Sender <{SENDER}>\n"
            f"To: <{recipient}>\n"
            f"Subject: {subject}\n"
            f"Message-ID: <{mid}>\n"
            "Date: Sat, 28 Nov 2026 09:00:00 +0000\n"
            "MIME-Version: 1.0\n" + extra
        )
        return mid, text.encode()

    messages: list[tuple[str, bytes]] = []

    mid, h = head(1, "plain", "Content-Type: text/plain; charset=us-ascii\n")
    messages.append((mid, crlf(h + b"\nHello over POP3.\n")))

    mid, h = head(2, "dots", "Content-Type: text/plain; charset=us-ascii\n")
    body = (
        b".\n"  # the first body line is a lone dot
        b"a line, then a line that is a single dot:\n"
        b".\n"
        b"..starts with two dots\n"
        b"...three\n"
        b".starts with one dot\n"
        b". dot space\n"
        b"..\n"  # a line of exactly two dots
        b"last line before a final lone dot\n"
        b".\n"
    )
    messages.append((mid, crlf(h + b"\n" + body)))

    mid, h = head(
        3,
        "=?utf-8?q?Gr=C3=BC=C3=9Fe?=",
        "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n",
    )
    body = (
        "UTF-8: Grüße aus Köln, naïve café, ☃, 日本語\n".encode()
        + b"Latin-1 octets: \xe9t\xe9 \xe0 la plage\n"
        + bytes(range(0x80, 0x100))
        + b"\nFrom the start of a line (an mbox From_ lookalike)\n"
    )
    messages.append((mid, crlf(h + b"\n" + body)))

    mid, h = head(
        4,
        "long lines and folding",
        "Content-Type: text/plain; charset=us-ascii\n"
        "X-Folded: first part of a folded header\n"
        "\tsecond part, after a tab\n"
        "  third part, after spaces\n",
    )
    body = (
        b"\ttab-indented\n"
        b" leading space, trailing space \n" + b"x" * 998 + b"\n" + b"." + b"y" * 997 + b"\n"
        b"\n\n"  # blank lines at the end of the body are content too
    )
    messages.append((mid, crlf(h + b"\n" + body)))

    mid, h = head(
        5,
        "large attachment",
        'Content-Type: multipart/mixed; boundary="=-=mh-boundary=-="\n',
    )
    blob = random.Random(tag).randbytes(ATTACHMENT_BYTES)
    b64 = base64.encodebytes(blob)  # 76-character lines, LF
    body = (
        b"This is a multi-part message in MIME format.\n"
        b"--=-=mh-boundary=-=\n"
        b"Content-Type: text/plain; charset=us-ascii\n\n"
        b"The attachment follows.\n.\n"
        b"--=-=mh-boundary=-=\n"
        b"Content-Type: application/octet-stream\n"
        b'Content-Disposition: attachment; filename="blob.bin"\n'
        b"Content-Transfer-Encoding: base64\n\n" + b64 + b"--=-=mh-boundary=-=--\n"
    )
    messages.append((mid, crlf(h + b"\n" + body)))

    mid, h = head(6, "last", "Content-Type: text/plain; charset=us-ascii\n")
    messages.append((mid, crlf(h + b"\nThe last one.\n")))
    return messages


def message_id(data: bytes) -> str:
    match = _MESSAGE_ID.search(data)
    assert match is not None, data[:400]
    return match.group(1).decode()


# --------------------------------------------------------------------------- the servers


class Target(Protocol):
    """A POP3 server with a per-user maildrop, as the tests see it."""

    name: str

    def new_user(self, address: str) -> None: ...
    def deliver(self, address: str, messages: list[tuple[str, bytes]]) -> None: ...
    def stored(self, address: str) -> dict[str, bytes]: ...
    def account(self, address: str, tls: TlsMode) -> Pop3Account: ...
    def diagnostics(self) -> str: ...


class MailhouseTarget:
    """mailhouse: users by the CLI, mail by SMTP, the stored copies by ``export``."""

    name = "mailhouse"

    def __init__(self, server: MailhouseServer) -> None:
        self.server = server

    def new_user(self, address: str) -> None:
        self.server.add_user(address, PASSWORD)

    def deliver(self, address: str, messages: list[tuple[str, bytes]]) -> None:
        with smtplib.SMTP("127.0.0.1", self.server.port("smtp"), timeout=60) as smtp:
            smtp.ehlo("client.remote.test")
            options = ["BODY=8BITMIME"] if smtp.has_extn("8bitmime") else []
            for _mid, data in messages:
                refused = smtp.sendmail(SENDER, [address], data, mail_options=options)
                assert not refused, refused

    def stored(self, address: str) -> dict[str, bytes]:
        exported = self.server.export(address)
        return {message_id(m.data): to_crlf(m.data) for m in exported}

    def account(self, address: str, tls: TlsMode) -> Pop3Account:
        port = self.server.port("pop3s" if tls == "implicit" else "pop3")
        return Pop3Account(port=port, user=address, password=PASSWORD, tls=tls)

    def diagnostics(self) -> str:
        return self.server.log_tail(80)


class DovecotTarget:
    """Dovecot: users in its passwd-file (all made up front), mail written into Maildirs with
    a Return-Path and Received in front, as a delivery agent would."""

    name = "dovecot"

    def __init__(self, server: DovecotPop3) -> None:
        self.server = server

    def new_user(self, address: str) -> None:
        if address not in self.server.users:
            raise AssertionError(f"{address} is not in the Dovecot fixture's USERS")

    def deliver(self, address: str, messages: list[tuple[str, bytes]]) -> None:
        trace = (
            f"Return-Path: <{SENDER}>\r\n"
            "Received: from client.remote.test ([127.0.0.1])\r\n"
            f"\tby dovecot.reference.test with ESMTP; Sat, 28 Nov 2026 09:00:00 +0000\r\n"
        ).encode()
        self.server.deliver(address, [trace + data for _mid, data in messages])

    def stored(self, address: str) -> dict[str, bytes]:
        return {message_id(m): m for m in self.server.messages(address)}

    def account(self, address: str, tls: TlsMode) -> Pop3Account:
        port = self.server.port("pop3s" if tls == "implicit" else "pop3")
        return Pop3Account(port=port, user=address, password=PASSWORD, tls=tls)

    def diagnostics(self) -> str:
        return self.server.log_tail(40)


# Every user any test makes: Dovecot's passwd-file is written before it starts.
CASES = [
    (client, tls, mode)
    for client, tlses in (("fetchmail", ("stls", "implicit")), ("getmail", ("implicit",)))
    for tls in tlses
    for mode in ("keep", "delete")
]


def user_for(client: str, tls: str, mode: str) -> str:
    return f"{client}-{tls}-{mode}@{DOMAIN}"


DOVECOT_USERS = {user_for(*case): PASSWORD for case in CASES}


@pytest.fixture(scope="module")
def mailhouse_pop3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailhouseServer]:
    """A mailhouse with smtp, pop3 (STLS required for logins) and pop3s listeners."""
    server = start_mailhouse(
        tmp_path_factory.mktemp("mailhouse-pop3"),
        users={},
        protocols=("smtp", "pop3", "pop3s"),
    )
    try:
        yield server
    finally:
        server.close()
        print(server.log_tail(200))


@pytest.fixture(scope="module")
def dovecot_pop3() -> Iterator[DovecotPop3]:
    require_tools("dovecot", "openssl")
    require_root("a private Dovecot instance")
    server = DovecotPop3(DOVECOT_USERS, tls=True)
    try:
        server.start()
        yield server
    finally:
        print(server.log_tail(100))
        server.close()


@pytest.fixture(params=["mailhouse", "dovecot"])
def target(request: pytest.FixtureRequest) -> Target:
    if request.param == "mailhouse":
        return MailhouseTarget(request.getfixturevalue("mailhouse_pop3"))
    return DovecotTarget(request.getfixturevalue("dovecot_pop3"))


@pytest.fixture
def work() -> Iterator[Path]:
    """A 0755 directory under /tmp for the client's files (getmail run as root delivers as
    nobody, who cannot enter pytest's 0700 tmp_path). Removed after a passing test."""
    path = world_searchable_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def fetchmail_tool() -> str:
    return require_tools("fetchmail")["fetchmail"]


@pytest.fixture(scope="session")
def getmail_tool() -> str:
    return require_tools("getmail")["getmail"]


# --------------------------------------------------------------------------- checks


@dataclass
class Delivered:
    user: str
    sent: list[tuple[str, bytes]]  # as submitted
    stored: dict[str, bytes]  # Message-ID -> what the server holds (CRLF)


def deliver_fresh(target: Target, client: str, tls: TlsMode, mode: str) -> Delivered:
    """A new user with the six messages; checks the stored copies are the submitted bytes after
    the server's trace fields."""
    user = user_for(client, tls, mode)
    target.new_user(user)
    sent = build_messages(f"{client}-{tls}-{mode}-{uuid.uuid4().hex[:12]}", user)
    target.deliver(user, sent)
    stored = target.stored(user)
    assert sorted(stored) == sorted(mid for mid, _ in sent), "stored Message-IDs differ"
    for mid, data in sent:
        trace, content = split_trace(stored[mid])
        assert content == data, f"{target.name} stored {mid} differently from what was sent"
        assert trace and trace[0].startswith(f"Return-Path: <{SENDER}>".encode()), trace
    return Delivered(user=user, sent=sent, stored=stored)


def explain(target: Target, run: FetchRun) -> str:
    return f"{run.describe()[-6000:]}\n--- {target.name}:\n{target.diagnostics()}"


def assert_fetched_exactly(
    target: Target,
    run: FetchRun,
    delivered: Delivered,
    compare: Callable[[bytes, bytes], bool],
) -> None:
    """Every message once, in delivery order, each `compare`-equal to the stored copy."""
    got = [message_id(m) for m in run.messages]
    assert got == [mid for mid, _ in delivered.sent], explain(target, run)
    for data in run.messages:
        mid = message_id(data)
        expected = delivered.stored[mid]
        if not compare(data, expected):
            raise AssertionError(
                f"{mid} differs: fetched {len(data)} bytes, stored {len(expected)}; first "
                f"difference at {_first_difference(data, expected)}\n{explain(target, run)}"
            )


def _first_difference(a: bytes, b: bytes) -> str:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"offset {i}: {a[max(0, i - 40) : i + 40]!r} vs {b[max(0, i - 40) : i + 40]!r}"
    return f"offset {min(len(a), len(b))} (one is a prefix of the other)"


def identical(fetched: bytes, stored: bytes) -> bool:
    """fetchmail hands the MDA the message exactly as the server sent it."""
    return fetched == stored


def same_after_return_path(fetched: bytes, stored: bytes) -> bool:
    """getmail writes its own Return-Path (same address) and drops the message's; the rest,
    the server's Received included, must be the stored bytes."""
    f_trace, f_content = split_trace(fetched)
    s_trace, s_content = split_trace(stored)
    if not f_trace or not f_trace[0].lower().startswith(b"return-path:"):
        return False
    addresses_match = f_trace[0].split(b":", 1)[1].strip() == s_trace[0].split(b":", 1)[1].strip()
    return addresses_match and f_trace[1:] == s_trace[1:] and f_content == s_content


def assert_unchanged(target: Target, delivered: Delivered) -> None:
    assert target.stored(delivered.user) == delivered.stored, (
        f"{target.name}: the maildrop changed\n{target.diagnostics()}"
    )


def assert_empty(target: Target, delivered: Delivered) -> None:
    left = target.stored(delivered.user)
    assert left == {}, f"{target.name}: {len(left)} messages left\n{target.diagnostics()}"


# --------------------------------------------------------------------------- fetchmail


@pytest.mark.parametrize("tls", ["stls", "implicit"])
def test_fetchmail_keep(fetchmail_tool: str, target: Target, tls: TlsMode, work: Path) -> None:
    delivered = deliver_fresh(target, "fetchmail", tls, "keep")
    account = target.account(delivered.user, tls)
    first = run_fetchmail(account, work, keep=True)
    assert first.returncode == 0, explain(target, first)
    assert_tls_used(first, tls, target)
    # In keep mode without fetchall, fetchmail downloads with "TOP n 99999999" (no \Seen).
    assert "POP3> TOP 1 99999999" in first.output, explain(target, first)
    assert_fetched_exactly(target, first, delivered, identical)
    assert_unchanged(target, delivered)

    # Same idfile: every UIDL was seen, nothing is new. Exit 1 = "no mail".
    second = run_fetchmail(account, work, keep=True)
    assert second.returncode == 1, explain(target, second)
    assert second.messages == [], explain(target, second)
    assert_unchanged(target, delivered)


@pytest.mark.parametrize("tls", ["stls", "implicit"])
def test_fetchmail_delete(fetchmail_tool: str, target: Target, tls: TlsMode, work: Path) -> None:
    delivered = deliver_fresh(target, "fetchmail", tls, "delete")
    account = target.account(delivered.user, tls)
    run = run_fetchmail(account, work, keep=False, fetchall=True)
    assert run.returncode == 0, explain(target, run)
    assert_tls_used(run, tls, target)
    assert "POP3> RETR 1" in run.output, explain(target, run)  # fetchall: RETR, not TOP
    assert_fetched_exactly(target, run, delivered, identical)
    assert run.output.count("flushed") >= len(delivered.sent), explain(target, run)
    assert_empty(target, delivered)

    again = run_fetchmail(account, work, keep=False)
    assert again.returncode == 1, explain(target, again)
    assert again.messages == []


def assert_tls_used(run: FetchRun, tls: TlsMode, target: Target) -> None:
    """fetchmail --verbose shows TLS negotiated before USER: after STLS on the plain port; at
    once on pop3s (no STLS there: the whole connection is TLS)."""
    before_login = run.output.split("POP3> USER", 1)[0]
    assert "SSL/TLS: using protocol TLSv1." in before_login, explain(target, run)
    if tls == "stls":
        assert "POP3> STLS" in before_login, explain(target, run)
        assert "upgrade to TLS succeeded" in before_login, explain(target, run)
    else:
        assert "POP3> STLS" not in run.output, explain(target, run)


# --------------------------------------------------------------------------- getmail6


def test_getmail_keep(getmail_tool: str, target: Target, work: Path) -> None:
    delivered = deliver_fresh(target, "getmail", "implicit", "keep")
    account = target.account(delivered.user, "implicit")
    first = run_getmail(account, work, delete=False, read_all=False)
    assert first.returncode == 0, explain(target, first)
    assert_fetched_exactly(target, first, delivered, same_after_return_path)
    assert_unchanged(target, delivered)

    # getmail's oldmail file remembers the UIDLs: nothing new the second time.
    second = run_getmail(account, work, delete=False, read_all=False)
    assert second.returncode == 0, explain(target, second)
    assert second.messages == [], explain(target, second)
    assert_unchanged(target, delivered)


def test_getmail_delete(getmail_tool: str, target: Target, work: Path) -> None:
    delivered = deliver_fresh(target, "getmail", "implicit", "delete")
    account = target.account(delivered.user, "implicit")
    run = run_getmail(account, work, delete=True, read_all=True)
    assert run.returncode == 0, explain(target, run)
    assert_fetched_exactly(target, run, delivered, same_after_return_path)
    assert_empty(target, delivered)


def test_getmail_plain_port_refused_before_stls(
    getmail_tool: str, mailhouse_pop3: MailhouseServer, work: Path
) -> None:
    """getmail6 cannot STLS; by default mailhouse refuses USER/PASS in clear on the pop3 port,
    so getmail fails to log in, and the maildrop is untouched."""
    target = MailhouseTarget(mailhouse_pop3)
    delivered = deliver_fresh(target, "getmail", "plain", "refused")
    account = target.account(delivered.user, "plain")
    run = run_getmail(account, work, delete=True, read_all=True)
    assert run.returncode != 0, explain(target, run)
    assert run.messages == [], explain(target, run)
    assert_unchanged(target, delivered)


def test_getmail_plain_port_when_allowed(
    getmail_tool: str, mailhouse_factory: MailhouseFactory, work: Path
) -> None:
    """With ``[pop3] allow_plaintext_auth = true`` getmail works on the plain port too."""
    server = mailhouse_factory(
        users={},
        protocols=("smtp", "pop3"),
        extra_toml="[pop3]\nallow_plaintext_auth = true\n",
    )
    target = MailhouseTarget(server)
    delivered = deliver_fresh(target, "getmail", "plain", "delete")
    run = run_getmail(target.account(delivered.user, "plain"), work, delete=True, read_all=True)
    assert run.returncode == 0, explain(target, run)
    assert_fetched_exactly(target, run, delivered, same_after_return_path)
    assert_empty(target, delivered)


# --------------------------------------------------------------------------- UIDL across restarts


def test_fetchmail_uidl_survives_restart(
    fetchmail_tool: str, mailhouse_factory: MailhouseFactory, work: Path
) -> None:
    """Keep mode, restart the server, keep mode again: fetchmail's idfile still matches every
    UIDL, so nothing is downloaded twice; a message that arrives after the restart is the only
    one fetched."""
    server = mailhouse_factory(users={}, protocols=("smtp", "pop3", "pop3s"))
    target = MailhouseTarget(server)
    delivered = deliver_fresh(target, "fetchmail", "implicit", "restart")
    account = target.account(delivered.user, "implicit")
    first = run_fetchmail(account, work, keep=True)
    assert first.returncode == 0, explain(target, first)
    assert len(first.messages) == len(delivered.sent), explain(target, first)

    server.restart()
    account = target.account(delivered.user, "implicit")  # same ports after a restart
    late_id = f"late-{uuid.uuid4().hex}@remote.test"
    late = crlf(
        f"From: <{SENDER}>\nTo: <{delivered.user}>\nSubject: late\n"
        f"Message-ID: <{late_id}>\n\nArrived after the restart.\n".encode()
    )
    target.deliver(delivered.user, [(late_id, late)])
    second = run_fetchmail(account, work, keep=True)
    assert second.returncode == 0, explain(target, second)
    assert [message_id(m) for m in second.messages] == [late_id], explain(target, second)
    assert split_trace(second.messages[0])[1] == late
