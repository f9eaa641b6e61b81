"""Maildir++ and mbox import/export: names, flags, line endings, round trips, path safety."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from mailhouse.model import Account
from mailhouse.service.mailfiles import (
    CrlfToLf,
    LfToCrlf,
    MailFileError,
    decode_mutf7,
    encode_mutf7,
    export_maildir,
    flags_from_info,
    from_line_date,
    import_maildir,
    import_mbox,
    info_for,
    mailbox_from_folder,
    maildir_folder_name,
)
from mailhouse.store.base import DeliveryTarget
from tests.service.fake_store import FakeStore

T = TypeVar("T")
HOST = "mx.example.test"
ADDRESS = "alice@example.test"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
def account(store: FakeStore) -> Account:
    store.domains.add("example.test")
    return run(store.add_account(ADDRESS, "x"))


def write(path: Path, data: bytes, mtime: float | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def message_files(maildir: Path) -> dict[str, tuple[bytes, str, float]]:
    """Subject → (bytes, info letters, mtime) for every message in cur/ and new/."""
    out = {}
    for sub in ("cur", "new"):
        for path in (maildir / sub).iterdir():
            data = path.read_bytes()
            subject = re.search(rb"^Subject: (.*)$", data, re.M)
            assert subject is not None
            info = path.name.partition(":2,")[2]
            out[subject.group(1).decode()] = (data, info, path.stat().st_mtime)
    return out


# --- names ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "encoded"), [
    ("INBOX", "INBOX"),
    ("Entwürfe", "Entw&APw-rfe"),
    ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),  # RFC 3501 §5.1.3
    ("Tom & Jerry", "Tom &- Jerry"),
    ("😀", "&2D3eAA-"),
])
def test_modified_utf7(text: str, encoded: str) -> None:
    assert encode_mutf7(text) == encoded
    assert decode_mutf7(encoded) == text


@pytest.mark.parametrize("bad", ["&", "&U,BTFw", "&Jjo!-", "caf\u00e9", "a\x01"])
def test_modified_utf7_rejects_garbage(bad: str) -> None:
    with pytest.raises(ValueError):
        decode_mutf7(bad)


@pytest.mark.parametrize("name", [
    "Sent", "Lists/Python", "Entwürfe", "a.b", "100%", "%2E", "..", ".", "../../etc/passwd",
    "a/../../b", "tmp", "new", "x\0y", "line\nbreak", "/leading", "trailing/", "Tom & Jerry",
])
def test_folder_names_are_one_safe_component_and_round_trip(name: str) -> None:
    folder = maildir_folder_name(name)
    assert folder.startswith(".") and folder not in (".", "..")
    assert "/" not in folder and "\0" not in folder and folder.isascii() and folder.isprintable()
    assert folder not in (".", "..", "tmp", "new", "cur")
    assert mailbox_from_folder(folder) == name


def test_folder_name_examples() -> None:
    assert maildir_folder_name("Lists/Python") == ".Lists.Python"
    assert maildir_folder_name("a.b") == ".a%2Eb"
    assert mailbox_from_folder(".Entw&APw-rfe") == "Entwürfe"
    with pytest.raises(ValueError):
        maildir_folder_name("")
    for bad in ("cur", "..", "."):
        with pytest.raises(ValueError):
            mailbox_from_folder(bad)


def test_flag_letters() -> None:
    letters = {"$label1": "a", "work": "b"}
    flags = {"\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft", "$Forwarded", "work",
             "\\Recent"}
    assert info_for(flags, letters) == "DFPRSTb"  # ASCII order, as maildir(5) wants
    assert set(flags_from_info("DFPRSTbz", {"a": "$label1", "b": "work"})) == flags - {"\\Recent"}


# --- line endings -----------------------------------------------------------------------------

@pytest.mark.parametrize("data", [b"a\r\nb\r\n", b"\r\n\r\n", b"x\ry\r\n", b"\r", b"no end"])
def test_crlf_to_lf_across_any_chunk_split(data: bytes) -> None:
    expected = data.replace(b"\r\n", b"\n")
    for cut in range(len(data) + 1):
        convert = CrlfToLf()
        out = convert.feed(data[:cut]) + convert.feed(data[cut:]) + convert.finish()
        assert out == expected


@pytest.mark.parametrize("data", [b"a\nb\n", b"a\r\nb\n", b"\n\n", b"x\ry\n", b"\r", b"end\r"])
def test_lf_to_crlf_across_any_chunk_split(data: bytes) -> None:
    expected = re.sub(rb"(?<!\r)\n", b"\r\n", data)
    for cut in range(len(data) + 1):
        convert = LfToCrlf()
        out = convert.feed(data[:cut]) + convert.feed(data[cut:]) + convert.finish()
        assert out == expected


# --- maildir round trip -----------------------------------------------------------------------

def sample_maildir(root: Path) -> dict[str, tuple[bytes, str, float]]:
    """Subject → (file bytes, info, mtime) of what sample_maildir wrote."""
    files = {
        "cur/1000000001.M1P1Q1.old,S=1:2,S": (b"Subject: seen\n\nbody\n", "S", 1_000_000_001.0),
        "cur/1000000002.M1P1Q2.old:2,FRS": (b"Subject: replied\n\n>From x\n", "FRS",
                                            1_000_000_002.5),
        "cur/1000000003.M1P1Q3.old:2,DPTa": (b"Subject: kw\n\nx\n", "DPTa", 1_000_000_003.0),
        "new/1000000004.M1P1Q4.old": (b"Subject: new\n\nunread\n\n", "", 1_000_000_004.0),
        ".Lists.Python/cur/1000000005.M1P1Q5.old:2,S": (b"Subject: list\n\npy\n", "S",
                                                        1_000_000_005.0),
        ".Entw&APw-rfe/new/1000000006.M1P1Q6.old": (b"Subject: draft\n\nd\n", "", 1_000_000_006.0),
        ".a%2Eb/cur/1000000007.M1P1Q7.old:2,": (b"Subject: dotted\n\nno final newline",
                                                "", 1_000_000_007.0),
    }
    for sub in ("tmp", "new", "cur"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for name, (data, _, mtime) in files.items():
        write(root / name, data, mtime)
    (root / "dovecot-keywords").write_text("0 $Important\n")
    out = {}
    for data, info, mtime in files.values():
        subject = re.search(rb"^Subject: (.*)$", data, re.M)
        assert subject is not None
        out[subject.group(1).decode()] = (data, info, mtime)
    return out


def test_maildir_import_export_round_trip_is_byte_for_byte(tmp_path: Path, store: FakeStore,
                                                           account: Account) -> None:
    source = tmp_path / "source"
    expected = sample_maildir(source)
    for name in ("Lists/Python", "Entwürfe", "a.b"):
        store.create_mailbox(account.id, name)

    report = run(import_maildir(store, account, source))
    assert report.problems == []
    assert report.messages == len(expected)
    # Stored in wire form: CRLF only.
    inbox = store.stored(ADDRESS)
    assert b"Subject: seen\r\n\r\nbody\r\n" in inbox
    assert all(b"\n" not in m.replace(b"\r\n", b"") for m in inbox)
    assert store.stored(ADDRESS, "Entwürfe") == [b"Subject: draft\r\n\r\nd\r\n"]
    flags = {m.uid: m.flags for m in store.messages[store.mailbox(ADDRESS).id]}
    assert sorted(flags.values(), key=len)[-1] == {"\\Draft", "$Forwarded", "\\Deleted",
                                                   "$Important"}

    dest = tmp_path / "export"
    report = run(export_maildir(store, account, dest, hostname=HOST))
    assert report.problems == []
    assert report.messages == len(expected)
    got = {**message_files(dest), **message_files(dest / ".Lists.Python"),
           **message_files(dest / ".Entw&APw-rfe"), **message_files(dest / ".a%2Eb")}
    assert {k: v[0] for k, v in got.items()} == {k: v[0] for k, v in expected.items()}
    assert {k: v[1] for k, v in got.items()} == {k: v[1] for k, v in expected.items()}
    assert {k: v[2] for k, v in got.items()} == {k: v[2] for k, v in expected.items()}
    assert (dest / "dovecot-keywords").read_text() == "0 $Important\n"
    assert (dest / ".Lists.Python" / "maildirfolder").exists()
    for folder in (dest, dest / ".Sent", dest / ".Lists.Python"):
        assert {p.name for p in folder.iterdir()} >= {"cur", "new", "tmp"}
        assert not list((folder / "tmp").iterdir())


def test_export_file_names_come_from_server_data_only(tmp_path: Path, store: FakeStore,
                                                      account: Account) -> None:
    evil = b"Subject: ../../../etc/passwd\r\nMessage-ID: <x/y:z@evil>\r\n\r\n/..:\r\n"
    spool = store.new_spool()
    run(spool.write(evil))
    run(store.deliver(spool, [_target(account, flags=("\\Seen",), date=1_700_000_000.25)]))
    run(export_maildir(store, account, tmp_path / "out", hostname="host/with:odd,chars"))
    [path] = (tmp_path / "out" / "cur").iterdir()
    assert re.fullmatch(
        rf"1700000000\.M250000P{os.getpid()}Q\d+\.host\\057with\\072odd\\054chars"
        rf",S={len(evil) - 4},W={len(evil)}:2,S", path.name), path.name
    assert path.read_bytes() == evil.replace(b"\r\n", b"\n")
    assert path.stat().st_mtime == 1_700_000_000.25
    assert [p for p in tmp_path.rglob("*") if "etc" in p.name or "evil" in p.name] == []


def test_export_names_sort_in_delivery_order(tmp_path: Path, store: FakeStore,
                                             account: Account) -> None:
    for i, date in enumerate([1_700_000_000.000009, 1_700_000_000.00001, 1_700_000_001.0]):
        spool = store.new_spool()
        run(spool.write(b"Subject: %d\r\n\r\n" % i))
        run(store.deliver(spool, [_target(account, date=date)]))
    run(export_maildir(store, account, tmp_path / "out", hostname=HOST))
    names = sorted(p.name for p in (tmp_path / "out" / "cur").iterdir())
    assert [(tmp_path / "out" / "cur" / n).read_bytes()[9:10] for n in names] == [b"0", b"1",
                                                                                  b"2"]


def test_export_refuses_a_used_destination(tmp_path: Path, store: FakeStore,
                                           account: Account) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "something").write_text("x")
    with pytest.raises(MailFileError, match="not empty"):
        run(export_maildir(store, account, tmp_path / "full", hostname=HOST))
    (tmp_path / "file").write_text("x")
    with pytest.raises(MailFileError, match="not a directory"):
        run(export_maildir(store, account, tmp_path / "file", hostname=HOST))
    (tmp_path / "empty").mkdir()
    report = run(export_maildir(store, account, tmp_path / "empty", hostname=HOST))
    assert report.mailboxes == 6 and report.messages == 0


def test_import_never_follows_symlinks(tmp_path: Path, store: FakeStore,
                                       account: Account) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"Subject: secret\n\nroot only\n")
    source = tmp_path / "maildir"
    write(source / "cur" / "1.M1P1Q1.h:2,S", b"Subject: fine\n\nok\n")
    (source / "new").mkdir()
    os.symlink(secret, source / "cur" / "2.M1P1Q1.h:2,S")
    os.symlink(secret, source / "new" / "3.M1P1Q1.h")
    other = tmp_path / "elsewhere"
    write(other / "cur" / "4.M1P1Q1.h:2,", b"Subject: elsewhere\n\nx\n")
    os.symlink(other, source / ".Sent")  # a linked folder
    os.symlink(secret, source / "dovecot-keywords")

    report = run(import_maildir(store, account, source))
    assert report.messages == 1
    assert len(report.problems) == 2 and all("not a regular file" in p for p in report.problems)
    assert store.stored(ADDRESS) == [b"Subject: fine\r\n\r\nok\r\n"]
    assert store.stored(ADDRESS, "Sent") == []


def test_import_into_missing_mailbox_is_reported(tmp_path: Path, store: FakeStore,
                                                 account: Account) -> None:
    write(tmp_path / "md" / ".Nope" / "cur" / "1.M1P1Q1.h:2,S", b"Subject: x\n\n")
    write(tmp_path / "md" / "cur" / "1.M1P1Q1.h:2,S", b"Subject: y\n\n")
    report = run(import_maildir(store, account, tmp_path / "md"))
    assert report.messages == 1
    assert report.problems == [
        "folder '.Nope': mailbox 'Nope' does not exist and cannot be created from the command "
        "line yet; its messages were not imported"]


def test_import_refuses_what_is_not_a_maildir(tmp_path: Path, store: FakeStore,
                                              account: Account) -> None:
    with pytest.raises(MailFileError, match="not a maildir"):
        run(import_maildir(store, account, tmp_path))
    with pytest.raises(MailFileError, match="not a directory"):
        run(import_maildir(store, account, tmp_path / "missing"))


# --- mbox -------------------------------------------------------------------------------------

MESSAGES = [
    b"From: a@x\nSubject: one\nStatus: RO\nX-Status: A\n\nFrom the start\n>From escaped\n"
    b">>From twice\n",
    b"From: b@x\nSubject: two\n\nends with a blank line\n\n",
    b"From: c@x\nSubject: three\nDate: Tue, 01 Aug 2023 12:00:00 +0200\n\nlast\n",
]


def mboxrd(messages: list[bytes], from_lines: list[bytes]) -> bytes:
    """What an mboxrd writer (Python's mailbox, mutt) produces."""
    out = b""
    for message, from_line in zip(messages, from_lines, strict=True):
        escaped = re.sub(rb"(?m)^(>*From )", rb">\1", message)
        out += from_line + b"\n" + escaped + b"\n"
    return out


def test_mbox_import_export_round_trip(tmp_path: Path, store: FakeStore,
                                       account: Account) -> None:
    mbox = tmp_path / "in.mbox"
    mbox.write_bytes(mboxrd(MESSAGES, [b"From MAILER-DAEMON Thu Jan  1 00:00:00 2004",
                                       b"From b@x Sat Jun 15 10:30:05 2024 +0200",
                                       b"From c@x"]))
    report = run(import_mbox(store, account, mbox))
    assert (report.messages, report.problems) == (3, [])
    stored = store.stored(ADDRESS)
    assert stored == [m.replace(b"\n", b"\r\n") for m in MESSAGES]
    infos = store.messages[store.mailbox(ADDRESS).id]
    assert [m.internal_date for m in infos] == [1072915200.0, 1718447405.0 - 7200, 1690884000.0]
    assert [m.flags for m in infos] == [{"\\Seen", "\\Answered"}, frozenset(), frozenset()]

    run(export_maildir(store, account, tmp_path / "out", hostname=HOST))
    exported = sorted((tmp_path / "out" / "cur").iterdir())
    assert [p.read_bytes() for p in exported] == sorted(MESSAGES, key=lambda m: {
        0: 0, 1: 2, 2: 1}[MESSAGES.index(m)])
    assert [p.name.partition(":2,")[2] for p in exported] == ["RS", "", ""]


def test_mbox_into_another_mailbox_and_crlf_file(tmp_path: Path, store: FakeStore,
                                                 account: Account) -> None:
    mbox = tmp_path / "crlf.mbox"
    mbox.write_bytes(b"From x Mon Jan  2 03:04:05 2006\r\nSubject: crlf\r\n\r\nbody\r\n\r\n"
                     b"From y Mon Jan  2 03:04:06 2006\r\nSubject: last\r\n\r\nno newline")
    report = run(import_mbox(store, account, mbox, mailbox="Archive"))
    assert report.messages == 2
    assert store.stored(ADDRESS, "Archive") == [b"Subject: crlf\r\n\r\nbody\r\n",
                                                b"Subject: last\r\n\r\nno newline"]


def test_mbox_must_start_with_from_line(tmp_path: Path, store: FakeStore,
                                        account: Account) -> None:
    (tmp_path / "x").write_bytes(b"\n\nSubject: not mbox\n\n")
    with pytest.raises(MailFileError, match="not an mbox"):
        run(import_mbox(store, account, tmp_path / "x"))
    (tmp_path / "empty").write_bytes(b"")
    assert run(import_mbox(store, account, tmp_path / "empty")).messages == 0
    with pytest.raises(MailFileError, match="cannot open"):
        run(import_mbox(store, account, tmp_path / "missing"))


def test_mbox_into_missing_mailbox_is_reported(tmp_path: Path, store: FakeStore,
                                               account: Account) -> None:
    (tmp_path / "m").write_bytes(b"From x\nSubject: a\n\n")
    with pytest.raises(MailFileError, match="'Nope' does not exist"):
        run(import_mbox(store, account, tmp_path / "m", mailbox="Nope"))
    assert run(import_mbox(store, account, tmp_path / "m", mailbox="inbox")).messages == 1
    assert store.stored(ADDRESS) == [b"Subject: a\r\n"]  # the last blank line separates


@pytest.mark.parametrize(("line", "expected"), [
    (b"From a@b Thu Jan  1 00:00:00 2004", 1072915200.0),
    (b"From a@b Thu Jan  1 00:00 2004", 1072915200.0),
    (b"From a@b  Thu Jan 1 01:00:00 +0100 2004", 1072915200.0),
    (b"From a@b Thu Jan  1 00:00:00 UTC 2004", 1072915200.0),
    (b"From a@b", None),
    (b"From a@b Thu Foo  1 00:00:00 2004", None),
])
def test_from_line_dates(line: bytes, expected: float | None) -> None:
    assert from_line_date(line) == expected


def _target(account: Account, *, flags: tuple[str, ...] = (), date: float | None = None,
            mailbox: str = "INBOX") -> DeliveryTarget:
    return DeliveryTarget(account.id, mailbox, flags, date)
