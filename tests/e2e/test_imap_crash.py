"""kill -9 of a server busy with IMAP APPEND, COPY, MOVE and EXPUNGE: whatever was acknowledged
(the tagged OK) is there after the restart, byte for byte, and nothing is half done — each
message is whole or absent, a MOVE leaves it in exactly one of the two mailboxes, counters agree
with the messages (RFC 9051 §6.3.12, §6.4.3, RFC 6851 §3.3; the durability rule of
docs/decisions.md: OK only after fsync).

A client thread works as fast as it can while the main thread kills the whole server process
group (SIGKILL) at a random moment; then the server starts again on the same data directory and
a fresh session checks. Loopback only; each case takes a few seconds.
"""

from __future__ import annotations

import email
import imaplib
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers.mailhouse_imap import MailhouseImap, start_mailhouse_imap

TIMEOUT = 20.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MailhouseImap]:
    instance = start_mailhouse_imap(tmp_path, protocols=("imap", "imaps"))
    try:
        yield instance
    finally:
        print(instance.server.log_tail(80))
        instance.close()


def connect(instance: MailhouseImap) -> imaplib.IMAP4_SSL:
    client = imaplib.IMAP4_SSL(instance.host, instance.ports["implicit"],
                               ssl_context=instance.ssl_context(), timeout=TIMEOUT)
    client.login(instance.user, instance.password)
    return client


def message(n: int, rng: random.Random) -> bytes:
    # Some are past the spool's memory buffer (256 KiB), so they take the file path.
    size = rng.choice((200, 3_000, 40_000, 300_000))
    body = b"".join(b"%07d line of message %d\r\n" % (i, n) for i in range(size // 30))
    return (b"From: crash@example.test\r\nSubject: crash %d\r\nMessage-ID: <crash-%d@test>\r\n"
            b"\r\n" % (n, n)) + body


def crash_while(instance: MailhouseImap, work: Callable[[imaplib.IMAP4_SSL], None],
                seed: int) -> None:
    """Run `work` in a thread on its own session, SIGKILL the server in mid-flight, restart."""
    rng = random.Random(seed)
    client = connect(instance)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            work(client)
        except (OSError, imaplib.IMAP4.abort, imaplib.IMAP4.error, EOFError):
            pass  # the server died under it: expected
        except BaseException as exc:  # an assertion on an acknowledged reply
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    time.sleep(rng.uniform(0.3, 1.2))
    instance.server.kill()
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    if failure:
        raise failure[0]
    instance.server.start()


def uids_and_ids(client: imaplib.IMAP4_SSL, mailbox: str) -> dict[int, str]:
    typ, data = client.select(mailbox)
    assert typ == "OK", data
    count = int(data[0])  # type: ignore[arg-type]
    if not count:
        return {}
    typ, data = client.uid("FETCH", "1:*", "(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    assert typ == "OK", data
    found: dict[int, str] = {}
    for item in data:
        if isinstance(item, tuple):
            uid = int(re.search(rb"UID (\d+)", item[0]).group(1))  # type: ignore[union-attr]
            found[uid] = email.message_from_bytes(item[1])["Message-ID"]
    assert len(found) == count  # every numbered message is whole enough to be read
    return found


def status(client: imaplib.IMAP4_SSL, mailbox: str) -> int:
    typ, data = client.status(mailbox, "(MESSAGES)")
    assert typ == "OK", data
    return int(re.search(rb"MESSAGES (\d+)", data[0]).group(1))  # type: ignore[arg-type, union-attr]


def fill(instance: MailhouseImap, count: int) -> None:
    rng = random.Random(count)
    with connect(instance) as client:
        for n in range(count):
            typ, data = client.append("INBOX", "", None, message(n, rng))
            assert typ == "OK", data


@pytest.mark.parametrize("seed", [1, 2])
def test_kill_during_appends(server: MailhouseImap, seed: int) -> None:
    acknowledged: dict[int, bytes] = {}

    def work(client: imaplib.IMAP4_SSL) -> None:
        rng = random.Random(seed)
        for n in range(100_000):
            data = message(n, rng)
            typ, answer = client.append("INBOX", "(\\Seen)", None, data)
            assert typ == "OK", answer
            uid = int(re.search(rb"APPENDUID \d+ (\d+)", answer[0]).group(1))  # type: ignore[arg-type, union-attr]
            acknowledged[uid] = data

    crash_while(server, work, seed)
    with connect(server) as client:
        stored = uids_and_ids(client, "INBOX")
        assert set(acknowledged) <= set(stored)
        assert status(client, "INBOX") == len(stored)
        for uid in sorted(acknowledged)[-5:] + sorted(acknowledged)[:5]:
            typ, data = client.uid("FETCH", str(uid), "(BODY.PEEK[] BODYSTRUCTURE)")
            assert typ == "OK", data
            assert data[0][1] == acknowledged[uid]  # type: ignore[index]
            typ, data = client.uid("FETCH", str(uid), "(FLAGS)")
            assert b"\\Seen" in data[0]  # type: ignore[operator]
    assert acknowledged, "the kill came before any APPEND finished"


@pytest.mark.parametrize("command", ["MOVE", "COPY"])
def test_kill_during_move_and_copy(server: MailhouseImap, command: str) -> None:
    fill(server, 60)
    acknowledged: list[int] = []  # UIDs in INBOX whose MOVE/COPY was acknowledged

    def work(client: imaplib.IMAP4_SSL) -> None:
        client.select("INBOX")
        for _ in range(100_000):
            for uid in range(1, 61):
                typ, answer = client.uid(command, str(uid), "Archive")
                assert typ == "OK", answer
                acknowledged.append(uid)
            if command == "MOVE":
                return
            typ, _ = client.select("INBOX")  # COPY again and again until killed

    crash_while(server, work, len(command))
    with connect(server) as client:
        inbox = uids_and_ids(client, "INBOX")
        archive = uids_and_ids(client, "Archive")
        assert status(client, "INBOX") == len(inbox)
        assert status(client, "Archive") == len(archive)
        everything = {f"<crash-{n}@test>" for n in range(60)}
        if command == "MOVE":
            # Each message in exactly one of the two: nothing lost, nothing doubled.
            assert sorted(inbox.values()) + sorted(archive.values()) != []
            assert set(inbox.values()) | set(archive.values()) == everything
            assert not set(inbox.values()) & set(archive.values())
            assert len(inbox) + len(archive) == 60
            assert not set(acknowledged) & set(inbox)
        else:
            assert set(inbox.values()) == everything and len(inbox) == 60
            copied = {f"<crash-{uid - 1}@test>" for uid in acknowledged}
            assert copied <= set(archive.values())


def test_kill_during_expunges(server: MailhouseImap) -> None:
    fill(server, 60)
    acknowledged: set[int] = set()

    def work(client: imaplib.IMAP4_SSL) -> None:
        client.select("INBOX")
        for uid in range(1, 61, 3):
            typ, answer = client.uid("STORE", f"{uid}:{uid + 2}", "+FLAGS.SILENT", "(\\Deleted)")
            assert typ == "OK", answer
            typ, answer = client.uid("EXPUNGE", f"{uid}:{uid + 2}")
            assert typ == "OK", answer
            acknowledged.update(range(uid, uid + 3))

    crash_while(server, work, 7)
    with connect(server) as client:
        inbox = uids_and_ids(client, "INBOX")
        assert not acknowledged & set(inbox)
        assert status(client, "INBOX") == len(inbox)
        assert len(inbox) + len(acknowledged) <= 60
        for uid in inbox:  # whatever is left is whole
            typ, data = client.uid("FETCH", str(uid), "(RFC822.SIZE BODY.PEEK[TEXT]<0.20>)")
            assert typ == "OK", data
