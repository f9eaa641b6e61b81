"""mbsync (isync), offlineimap3 and curl (the Debian packages) against a real IMAP server.

Each test gets a fresh user on the server holding the same six messages: in INBOX a plain
one, one with an attachment (a text part with raw 8-bit bytes and a base64 part of random
binary bytes) and one already \\Seen; in the folder ``Projects`` one \\Seen and one not; in its
child ``Projects/2026`` one more (the hierarchy separator is "/"). Then:

- mbsync and offlineimap (a Maildir on the client side, both directions) pull all three
  folders: every message arrives once, with the same bytes (compared with LF line endings, as
  Maildirs hold them; mbsync's own X-TUID header aside) and \\Seen exactly where the server had
  it (Maildir info ``:2,S``). Locally the plain message is then marked \\Seen and \\Flagged, a
  Projects message is deleted and a new one is written into Projects; a second sync must leave
  the server with those flags, without the deleted message (expunged), with the new one byte
  for byte, and ``Projects/2026`` untouched;
- curl lists the mailboxes (all three), EXAMINEs INBOX, finds the attachment's UID with
  ``UID SEARCH HEADER Message-ID`` and fetches it by UID: the bytes must be exactly what the
  server holds; without the server's certificate curl refuses to connect.

The servers are parametrized (`IMAP_SERVERS`): a private Dovecot 2.3 (tests/helpers/dovecot.py,
root only) as the reference, and mailhouse (`mailhouse serve` with IMAP, as
tests/helpers/mailhouse_imap.py starts it). The server's side is read without IMAP (Dovecot:
its Maildir files and their flags; mailhouse: `mailhouse export --maildir`, flags in the
Maildir info), so a client's round trip is checked against what was stored, not against what
the same server says.

TLS: the sync clients run over STARTTLS and implicit TLS, trusting exactly the server's
self-signed certificate (never "verification off"; but offlineimap3 does not verify after
STARTTLS at all, see tests/helpers/imap_clients.py, so the server's log must show every one of
its logins encrypted). A missing program or not being root skips the tests, except under
CI=true, where it fails. Each test takes a few seconds. Loopback only.
"""

from __future__ import annotations

import base64
import imaplib
import random
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.dovecot import DovecotPop3, imap_flags, maildir_info, to_crlf, to_lf
from tests.helpers.imap_clients import (
    ClientRun,
    ImapAccount,
    TlsMode,
    curl_examine,
    curl_fetch_uid,
    curl_imap,
    curl_list,
    curl_url,
    mbsync_folder,
    mbsync_sync,
    offlineimap_folder,
    offlineimap_sync,
)
from tests.helpers.mailhouse_imap import start_mailhouse_imap
from tests.helpers.net import LOOPBACK
from tests.helpers.tools import missing_programs, require_root, require_tools, under_ci

pytestmark = pytest.mark.interop

DOMAIN = "example.test"
PASSWORD = "imap-interop-password"  # throwaway accounts on a loopback-only test server
SUBFOLDER = "Projects"
NESTED = "Projects/2026"  # a child of SUBFOLDER: the hierarchy separator is "/"
SEEN = "\\Seen"
FLAGGED = "\\Flagged"

# Every server the tests run against; each name needs a fixture NAME_imap -> ImapServer.
IMAP_SERVERS = ["dovecot", "mailhouse"]

_MESSAGE_ID = re.compile(rb"^Message-ID:\s*<([^>]+)>", re.IGNORECASE | re.MULTILINE)


# --------------------------------------------------------------------------- the servers


@dataclass(frozen=True)
class ServerMessage:
    """A message as the server stores it: IMAP system flags and bytes (CRLF)."""

    flags: frozenset[str]
    data: bytes


@dataclass
class ImapServer:
    """An IMAP server as the tests see it, whatever implements it.

    ports: TLS mode -> port; cafile: its certificate (self-signed, trusted as a CA);
    new_user(): a fresh (address, password) whose mailbox has INBOX, `SUBFOLDER` and `NESTED`;
    deliver(user, folder, data, flags): put a message in (flags: "", or IMAP system flags);
    stored(user, folder): what the server holds, read without IMAP;
    tls_logins(user): for each successful login of the user so far, whether it was over TLS
    (the server's own record: offlineimap3 says nothing about STARTTLS);
    diagnostics(): the server's log tail, for failure messages.
    """

    name: str
    host: str
    ports: dict[TlsMode, int]
    cafile: Path
    new_user: Callable[[], tuple[str, str]]
    deliver: Callable[[str, str, bytes, frozenset[str]], None]
    stored: Callable[[str, str], list[ServerMessage]]
    tls_logins: Callable[[str], list[bool]]
    diagnostics: Callable[[], str]


@dataclass
class ImapTarget:
    """One test's view: a fresh user on one server in one TLS mode (the brief's tuple)."""

    server: ImapServer
    host: str
    port: int
    user: str
    password: str
    tls: TlsMode

    @property
    def account(self) -> ImapAccount:
        return ImapAccount(
            self.host, self.port, self.user, self.password, self.tls, self.server.cafile
        )

    def deliver(self, folder: str, data: bytes, flags: frozenset[str] = frozenset()) -> None:
        self.server.deliver(self.user, folder, data, flags)

    def list_server_messages(self, folder: str) -> list[ServerMessage]:
        return self.server.stored(self.user, folder)


DOVECOT_USERS = {f"user{n:02d}@{DOMAIN}": PASSWORD for n in range(1, 41)}
_LETTER = {"\\Seen": "S", "\\Flagged": "F", "\\Answered": "R", "\\Draft": "D", "\\Deleted": "T"}


@pytest.fixture(scope="module")
def dovecot_imap() -> Iterator[ImapServer]:
    """A private Dovecot serving IMAP (imap with STARTTLS, imaps) to DOVECOT_USERS."""
    if missing_programs("dovecot", "openssl") or not Path("/usr/lib/dovecot/imap").exists():
        reason = "missing Dovecot IMAP: install dovecot-core dovecot-imapd openssl"
        if under_ci():
            pytest.fail(f"CI=true and {reason}", pytrace=False)
        pytest.skip(reason)
    require_root("a private Dovecot instance")
    server = DovecotPop3(DOVECOT_USERS, tls=True, imap=True)
    users = iter(DOVECOT_USERS)
    assert server.cert is not None

    def new_user() -> tuple[str, str]:
        user = next(users)
        server.create_folder(user, NESTED)  # and its parent, SUBFOLDER
        return user, PASSWORD

    def deliver(user: str, folder: str, data: bytes, flags: frozenset[str]) -> None:
        server.deliver(user, [data], folder=folder, flags="".join(_LETTER[f] for f in flags))

    def stored(user: str, folder: str) -> list[ServerMessage]:
        return [ServerMessage(f, d) for f, d in server.maildir_messages(user, folder)]

    try:
        server.start()
        yield ImapServer(
            name="dovecot",
            host=LOOPBACK,
            ports={"starttls": server.port("imap"), "implicit": server.port("imaps")},
            cafile=server.cert[0],
            new_user=new_user,
            deliver=deliver,
            stored=stored,
            tls_logins=lambda user: [", TLS," in line for line in server.logins(user)],
            diagnostics=lambda: server.log_tail(40),
        )
    finally:
        print(server.log_tail(100))
        server.close()


@pytest.fixture(scope="module")
def mailhouse_imap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImapServer]:
    """mailhouse serving IMAP (imap with STARTTLS, imaps); folders made and mail put in over
    IMAP with imaplib, what it holds read back with `mailhouse export --maildir`."""
    instance = start_mailhouse_imap(tmp_path_factory.mktemp("mailhouse-imap-interop"))
    server = instance.server

    def session(user: str, password: str) -> imaplib.IMAP4_SSL:
        client = imaplib.IMAP4_SSL(instance.host, instance.ports["implicit"],
                                   ssl_context=instance.ssl_context(), timeout=20)
        client.login(user, password)
        return client

    def new_user() -> tuple[str, str]:
        user, password = instance.new_user(PASSWORD)
        with session(user, password) as client:
            for folder in (SUBFOLDER, NESTED):
                typ, data = client.create(folder)
                assert typ == "OK", data
        return user, password

    def deliver(user: str, folder: str, data: bytes, flags: frozenset[str]) -> None:
        with session(user, PASSWORD) as client:
            typ, answer = client.append(folder, "(" + " ".join(sorted(flags)) + ")", None, data)
            assert typ == "OK", answer

    def stored(user: str, folder: str) -> list[ServerMessage]:
        dest = Path(tempfile.mkdtemp(prefix="mh-export-", dir="/tmp"))
        try:
            server.export(user, dest / "maildir")
            path = dest / "maildir"
            if folder != "INBOX":
                path = path / ("." + folder.replace("/", "."))
            files = sorted(p for sub in ("new", "cur") if (path / sub).is_dir()
                           for p in (path / sub).iterdir() if p.is_file())
            return [ServerMessage(imap_flags(maildir_info(p.name)), to_crlf(p.read_bytes()))
                    for p in files]
        finally:
            shutil.rmtree(dest, ignore_errors=True)

    def tls_logins(user: str) -> list[bool]:
        text = server.log_path.read_text(errors="replace")
        return ["tls=yes" in line for line in text.splitlines()
                if "event=imap.login " in line and "result=OK" in line and f"user={user}" in line]

    try:
        yield ImapServer(
            name="mailhouse",
            host=instance.host,
            ports={"starttls": instance.ports["starttls"], "implicit": instance.ports["implicit"]},
            cafile=instance.cafile,
            new_user=new_user,
            deliver=deliver,
            stored=stored,
            tls_logins=tls_logins,
            diagnostics=lambda: server.log_tail(40),
        )
    finally:
        print(server.log_tail(100))
        instance.close()


@pytest.fixture(params=IMAP_SERVERS)
def imap_server(request: pytest.FixtureRequest) -> ImapServer:
    server: ImapServer = request.getfixturevalue(f"{request.param}_imap")
    return server


def make_target(server: ImapServer, tls: TlsMode) -> ImapTarget:
    user, password = server.new_user()
    return ImapTarget(server, server.host, server.ports[tls], user, password, tls)


@pytest.fixture
def work() -> Iterator[Path]:
    """The client's private directory (config, HOME, local Maildir); kept after a failure."""
    path = Path(tempfile.mkdtemp(prefix="mh-imapc-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- the messages


def message_id(data: bytes) -> str:
    match = _MESSAGE_ID.search(data)
    assert match is not None, data[:400]
    return match.group(1).decode()


def build_message(mid: str, subject: str, body: bytes, extra: str = "") -> bytes:
    head = (
        "From: Sender <sender@remote.test>\n"
        f"To: <someone@{DOMAIN}>\n"
        f"Subject: {subject}\n"
        f"Message-ID: <{mid}>\n"
        "Date: Fri, 04 Dec 2026 09:00:00 +0000\n"
        "MIME-Version: 1.0\n" + extra
    )
    return to_crlf(head.encode() + b"\n" + body)


def attachment_message(mid: str) -> bytes:
    """multipart/mixed: an 8-bit text part (UTF-8 and Latin-1 octets) and a base64 part of
    random binary bytes (every octet value)."""
    blob = bytes(range(256)) + random.Random(mid).randbytes(60_000)
    body = (
        b"This is a multi-part message in MIME format.\n"
        b"--=-=imap-boundary=-=\n"
        b"Content-Type: text/plain; charset=utf-8\n"
        b"Content-Transfer-Encoding: 8bit\n\n"
        + "Grüße aus Köln, naïve café, ☃, 日本語\n".encode()
        + b"Latin-1 octets: \xe9t\xe9 \xe0 la plage\n"
        + b"--=-=imap-boundary=-=\n"
        b"Content-Type: application/octet-stream\n"
        b'Content-Disposition: attachment; filename="blob.bin"\n'
        b"Content-Transfer-Encoding: base64\n\n"
        + base64.encodebytes(blob)
        + b"--=-=imap-boundary=-=--\n"
    )
    extra = 'Content-Type: multipart/mixed; boundary="=-=imap-boundary=-="\n'
    return build_message(mid, "attachment", body, extra)


@dataclass
class Mailbox:
    """What a test delivered: Message-ID -> (folder, bytes, flags), and the names it uses."""

    messages: dict[str, tuple[str, bytes, frozenset[str]]]
    plain: str  # INBOX, unseen: marked \Seen \Flagged locally
    attachment: str  # INBOX, unseen
    seen: str  # INBOX, \Seen
    sub_seen: str  # Projects, \Seen
    sub_unseen: str  # Projects, unseen: deleted locally
    nested: str  # Projects/2026, unseen: left alone

    def in_folder(self, folder: str) -> dict[str, tuple[bytes, frozenset[str]]]:
        return {m: (d, f) for m, (fo, d, f) in self.messages.items() if fo == folder}


def fill(target: ImapTarget) -> Mailbox:
    tag = uuid.uuid4().hex[:12]
    text = "Content-Type: text/plain; charset=us-ascii\n"
    specs = [
        ("plain", "INBOX", build_message(f"{tag}.plain@remote.test", "plain", b"Hi.\n", text)),
        ("attachment", "INBOX", attachment_message(f"{tag}.attachment@remote.test")),
        ("seen", "INBOX", build_message(f"{tag}.seen@remote.test", "seen", b"Read.\n", text)),
        ("sub_seen", SUBFOLDER, build_message(f"{tag}.sub1@remote.test", "sub 1", b"A\n", text)),
        ("sub_unseen", SUBFOLDER, build_message(f"{tag}.sub2@remote.test", "sub 2", b"B\n", text)),
        ("nested", NESTED, build_message(f"{tag}.nested@remote.test", "nested", b"C\n", text)),
    ]
    names: dict[str, str] = {}
    messages: dict[str, tuple[str, bytes, frozenset[str]]] = {}
    for role, folder, data in specs:
        flags = frozenset({SEEN}) if role in ("seen", "sub_seen") else frozenset()
        target.deliver(folder, data, flags)
        mid = message_id(data)
        names[role] = mid
        messages[mid] = (folder, data, flags)
    return Mailbox(messages=messages, **names)


# --------------------------------------------------------------------------- local Maildirs


def local_messages(folder_dir: Path) -> dict[str, tuple[Path, frozenset[str], bytes]]:
    """Message-ID -> (file, IMAP flags, bytes) of a client's local Maildir folder."""
    found: dict[str, tuple[Path, frozenset[str], bytes]] = {}
    for sub in ("new", "cur"):
        for path in sorted((folder_dir / sub).iterdir()):
            data = path.read_bytes()
            mid = message_id(data)
            assert mid not in found, f"{mid} twice in {folder_dir}"
            found[mid] = (path, imap_flags(maildir_info(path.name)), data)
    return found


def set_local_flags(path: Path, letters: str) -> None:
    """Mark a local message the way a mail reader does: into cur/ with ``:2,LETTERS``."""
    base = path.name.split(":2,", 1)[0]
    path.rename(path.parent.parent / "cur" / f"{base}:2,{''.join(sorted(letters))}")


def add_local_message(folder_dir: Path, data: bytes) -> None:
    """A message written by a local mail reader into new/ (LF line endings)."""
    name = f"{int(time.time())}.M{uuid.uuid4().hex[:8]}P1.client"
    tmp = folder_dir / "tmp" / name
    tmp.write_bytes(to_lf(data))
    tmp.rename(folder_dir / "new" / name)


# --------------------------------------------------------------------------- checks


def explain(target: ImapTarget, run: ClientRun) -> str:
    return f"[{target.server.name}, {target.tls}] {run.describe()}\n{target.server.diagnostics()}"


def server_view(target: ImapTarget, folder: str) -> dict[str, ServerMessage]:
    view: dict[str, ServerMessage] = {}
    for message in target.list_server_messages(folder):
        mid = message_id(message.data)
        assert mid not in view, f"{mid} twice on the server in {folder}"
        view[mid] = message
    return view


_X_TUID = re.compile(rb"^X-TUID: [^\n]*\n", re.MULTILINE)


def without_x_tuid(data: bytes) -> bytes:
    """mbsync adds its tracking header ``X-TUID:`` at the end of the header of each message
    it stores locally (isync's documented behaviour); the rest must be unchanged."""
    end = data.find(b"\n\n") + 1  # the header, with its last line's LF
    return _X_TUID.sub(b"", data[:end], count=1) + data[end:]


def assert_pulled(
    target: ImapTarget,
    run: ClientRun,
    mailbox: Mailbox,
    folder_of: Callable[[Path, str], Path],
    normalize: Callable[[bytes], bytes] = lambda data: data,
) -> None:
    """Both folders arrived: same Message-IDs, same bytes (LF, after `normalize`), \\Seen
    where it was set."""
    assert run.maildir is not None
    for folder in ("INBOX", SUBFOLDER, NESTED):
        local = local_messages(folder_of(run.maildir, folder))
        expected = mailbox.in_folder(folder)
        assert set(local) == set(expected), explain(target, run)
        for mid, (data, flags) in expected.items():
            _path, local_flags, local_data = local[mid]
            assert normalize(to_lf(local_data)) == to_lf(data), (
                f"{mid} differs\n{explain(target, run)}"
            )
            assert (SEEN in local_flags) == (SEEN in flags), f"{mid}: {local_flags}"


def change_locally(run: ClientRun, mailbox: Mailbox, folder_of: Callable[[Path, str], Path]) -> str:
    """Mark the plain message \\Seen \\Flagged, delete sub_unseen, add one to the subfolder;
    returns the new message's Message-ID (its bytes are in mailbox.messages)."""
    assert run.maildir is not None
    inbox = local_messages(folder_of(run.maildir, "INBOX"))
    set_local_flags(inbox[mailbox.plain][0], "FS")
    sub_dir = folder_of(run.maildir, SUBFOLDER)
    local_messages(sub_dir)[mailbox.sub_unseen][0].unlink()
    new_mid = f"{uuid.uuid4().hex[:12]}.local@{DOMAIN}"
    data = build_message(new_mid, "written locally", b"Stored by the client.\n")
    add_local_message(sub_dir, data)
    mailbox.messages[new_mid] = (SUBFOLDER, data, frozenset())
    return new_mid


def assert_pushed(
    target: ImapTarget,
    run: ClientRun,
    mailbox: Mailbox,
    new_mid: str,
    normalize: Callable[[bytes], bytes] | None = None,
) -> None:
    """The server has the local changes: flags, the deletion (expunged), the new message
    (byte for byte; with `normalize`, after it, compared with LF line endings)."""
    inbox = server_view(target, "INBOX")
    assert set(inbox) == {mailbox.plain, mailbox.attachment, mailbox.seen}, explain(target, run)
    assert {SEEN, FLAGGED} <= inbox[mailbox.plain].flags, explain(target, run)
    assert inbox[mailbox.seen].flags == frozenset({SEEN}), explain(target, run)
    assert SEEN not in inbox[mailbox.attachment].flags, explain(target, run)
    sub = server_view(target, SUBFOLDER)
    assert set(sub) == {mailbox.sub_seen, new_mid}, explain(target, run)  # deleted = expunged
    assert set(server_view(target, NESTED)) == {mailbox.nested}, explain(target, run)
    uploaded = sub[new_mid].data
    if normalize is not None:
        uploaded = to_crlf(normalize(to_lf(uploaded)))
    assert uploaded == to_crlf(mailbox.messages[new_mid][1]), explain(target, run)


SYNC_TLS: list[TlsMode] = ["starttls", "implicit"]


# --------------------------------------------------------------------------- mbsync


@pytest.mark.parametrize("tls", SYNC_TLS)
def test_mbsync_round_trip(imap_server: ImapServer, tls: TlsMode, work: Path) -> None:
    require_tools("mbsync")
    target = make_target(imap_server, tls)
    mailbox = fill(target)

    first = mbsync_sync(target.account, work)
    assert first.returncode == 0, explain(target, first)
    assert "Connection is now encrypted" in first.log, explain(target, first)
    assert_pulled(target, first, mailbox, mbsync_folder, without_x_tuid)

    new_mid = change_locally(first, mailbox, mbsync_folder)
    second = mbsync_sync(target.account, work)
    assert second.returncode == 0, explain(target, second)
    assert_pushed(target, second, mailbox, new_mid, without_x_tuid)

    # A third run has nothing left to do, and the local side matches the server.
    third = mbsync_sync(target.account, work)
    assert third.returncode == 0, explain(target, third)
    assert third.maildir is not None
    sub_local = local_messages(mbsync_folder(third.maildir, SUBFOLDER))
    assert set(sub_local) == set(server_view(target, SUBFOLDER)), explain(target, third)


# --------------------------------------------------------------------------- offlineimap


@pytest.mark.parametrize("tls", SYNC_TLS)
def test_offlineimap_round_trip(imap_server: ImapServer, tls: TlsMode, work: Path) -> None:
    require_tools("offlineimap")
    target = make_target(imap_server, tls)
    mailbox = fill(target)

    first = offlineimap_sync(target.account, work)
    assert first.returncode == 0, explain(target, first)
    assert not first.extra["errors"], explain(target, first)
    assert_pulled(target, first, mailbox, offlineimap_folder)

    new_mid = change_locally(first, mailbox, offlineimap_folder)
    second = offlineimap_sync(target.account, work)
    assert second.returncode == 0, explain(target, second)
    assert not second.extra["errors"], explain(target, second)
    assert_pushed(target, second, mailbox, new_mid)
    # offlineimap3 does not verify the certificate after STARTTLS (it calls starttls() without
    # its CA file): the server's log is the proof that both sessions were encrypted at all.
    logins = imap_server.tls_logins(target.user)
    assert len(logins) >= 2 and all(logins), (logins, imap_server.diagnostics())


# --------------------------------------------------------------------------- curl


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
def test_curl_list_examine_fetch(imap_server: ImapServer, tls: TlsMode, work: Path) -> None:
    require_tools("curl")
    target = make_target(imap_server, tls)
    mailbox = fill(target)
    account = target.account

    listed = curl_list(account, work)
    assert listed.returncode == 0, explain(target, listed)
    names = re.findall(
        rb'^\* LIST \([^)]*\) (?:"[^"]*"|NIL) "?([^"\r\n]+)"?\r$', listed.output, re.M
    )
    assert {b"INBOX", SUBFOLDER.encode(), NESTED.encode()} <= set(names), explain(target, listed)
    if tls == "starttls":
        assert "STARTTLS" in listed.log, explain(target, listed)

    examined = curl_examine(account, work, "INBOX")
    assert examined.returncode == 0, explain(target, examined)
    assert b"* 3 EXISTS\r\n" in examined.output, explain(target, examined)
    assert re.search(rb"\[UIDVALIDITY \d+\]", examined.output), explain(target, examined)

    search = curl_imap(
        account,
        work,
        curl_url(account, "INBOX"),
        request=f'UID SEARCH HEADER Message-ID "<{mailbox.attachment}>"',
    )
    assert search.returncode == 0, explain(target, search)
    found = re.search(rb"^\* SEARCH (\d+)\r$", search.output, re.M)
    assert found is not None, explain(target, search)
    uid = int(found.group(1))

    fetched = curl_fetch_uid(account, work, "INBOX", uid)
    assert fetched.returncode == 0, explain(target, fetched)
    assert f"UID FETCH {uid} BODY[]" in fetched.log, explain(target, fetched)
    stored = server_view(target, "INBOX")[mailbox.attachment].data
    assert stored == mailbox.messages[mailbox.attachment][1]  # the server kept it as given
    assert fetched.output == stored, explain(target, fetched)


def test_curl_rejects_an_untrusted_certificate(imap_server: ImapServer, work: Path) -> None:
    """The drivers really verify: curl with the system CAs only refuses the server's
    self-signed certificate, so the green runs above used the pinned one."""
    require_tools("curl")
    target = make_target(imap_server, "implicit")
    account = ImapAccount(target.host, target.port, target.user, target.password, "implicit")
    run = curl_imap(account, work, curl_url(account), insecure=False, timeout=20)
    assert run.returncode == 60, explain(target, run)  # CURLE_PEER_FAILED_VERIFICATION
