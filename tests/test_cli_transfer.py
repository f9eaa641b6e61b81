"""`mailhouse export` / `import` as root (cli_transfer.py): the frames between the root parent
and the unprivileged store child, the split path forced in this process (the child is a real
fork), its failures (a child killed mid-transfer, a frame over the limit, a protocol error), and
as the real thing: root exporting to and importing from root-only places while the store
belongs to the service account."""

from __future__ import annotations

import os
import pwd
import signal
import socket
import stat
import struct
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailhouse import cli_transfer
from mailhouse.cli_transfer import (
    FRAME_LIMIT,
    Channel,
    Done,
    Failure,
    Message,
    Ready,
    StoreSideFailed,
    TransferBroken,
    decode,
    encode,
)
from mailhouse.service.mailfiles import (
    Data,
    ExportMailbox,
    ExportMessage,
    Folder,
    ImportEnd,
    ImportMessage,
    MessageEnd,
    Problem,
    TransferReport,
)
from mailhouse.store.base import MessageInfo
from tests import test_cli, test_privileges
from tests.helpers.mailhouse import MailhouseServer
from tests.helpers.service_user import SERVICE_USER, SharedPython
from tests.service.fake_store import FakeStore
from tests.test_cli import CHEAP, mh

# Fixtures shared with test_cli (the fake store, its config) and test_privileges (the service
# account, a Python it can run, a directory it can traverse); pytest finds them by name here.
globals().update({name: getattr(test_cli, name) for name in ("store", "config", "populated")})
globals().update({name: getattr(test_privileges, name) for name in ("account", "python", "base")})

MBOX = (b"From a Thu Jan  1 00:00:00 2004\nStatus: RO\nSubject: a\n\n>From x\n\n"
        b"From b Thu Jan  1 00:00:01 2004\nSubject: b\n\nb\n")


# --- frames -----------------------------------------------------------------------------------

EXAMPLES: list[Message] = [
    Ready("alice@example.test", ("INBOX", "Archive")), Failure(1, "no user x@example.test"),
    Done(), TransferReport(2, 3, ["a problem"]), ExportMailbox("Lists/Py", ("$Junk",)),
    ExportMessage(("\\Seen",), 1_700_000_000.5, 42), Data(b"\x00\r\n" * 3), MessageEnd(),
    Problem("/x/cur/\udcff: skipped"), Folder("INBOX"), ImportMessage("/m message 1"),
    ImportEnd(("\\Seen",), None, "empty"), ImportEnd((), 12.0, "empty file"),
]


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_survives_its_frame(message: Message) -> None:
    frame = encode(message)
    kind, length = struct.unpack(">cI", frame[:5])
    assert length == len(frame) - 5
    assert decode(kind, frame[5:]) == message


texts = st.text(max_size=20)
messages = st.one_of(
    st.builds(Ready, texts, st.tuples(texts, texts)),
    st.builds(ExportMailbox, texts, st.lists(texts, max_size=3).map(tuple)),
    st.builds(ExportMessage, st.lists(texts, max_size=3).map(tuple),
              st.floats(min_value=-1e9, max_value=1e9), st.integers(0, 2**40)),
    st.builds(Data, st.binary(max_size=64)),
    st.builds(Problem, texts), st.builds(Folder, texts), st.builds(ImportMessage, texts),
    st.builds(ImportEnd, st.lists(texts, max_size=3).map(tuple),
              st.none() | st.floats(min_value=-1e9, max_value=1e9), texts),
    st.builds(TransferReport, st.integers(0, 99), st.integers(0, 99), st.lists(texts)))


@given(messages)
def test_frames_round_trip(message: Message) -> None:
    frame = encode(message)
    assert decode(frame[:1], frame[5:]) == message


@given(st.binary(min_size=1, max_size=1), st.binary(max_size=200))
def test_any_payload_decodes_or_is_refused_cleanly(kind: bytes, payload: bytes) -> None:
    try:
        decode(kind, payload)
    except TransferBroken as exc:
        assert "\n" not in str(exc)


@pytest.mark.parametrize(("kind", "payload", "why"), [
    (b"S", b'{"flags": [], "date": 1, "size": -1}', "size is not a count"),
    (b"S", b'{"flags": [], "date": 1e300, "size": 1}', "date is out of range"),
    (b"S", b'{"flags": [1], "date": 1, "size": 1}', "flags is not a list of strings"),
    (b"F", b'{"mailbox": "INBOX", "more": 1}', "unexpected more"),
    (b"F", b"[]", "not a JSON object"),
    (b"F", b"[" * 100_000, "not JSON"),
    (b"?", b"{}", "unknown frame type"),
])
def test_malformed_frames_are_named(kind: bytes, payload: bytes, why: str) -> None:
    with pytest.raises(TransferBroken, match=why):
        decode(kind, payload)


def _pair() -> tuple[socket.socket, Channel]:
    writer, reader = socket.socketpair()
    return writer, Channel(reader)


def test_a_frame_over_the_limit_is_refused_by_both_ends() -> None:
    with pytest.raises(TransferBroken, match=f"exceeds the limit of {FRAME_LIMIT}"):
        encode(Data(b"x" * (FRAME_LIMIT + 1)))
    encode(Data(b"x" * FRAME_LIMIT))  # the limit itself is allowed
    writer, channel = _pair()
    writer.sendall(struct.pack(">cI", b"D", FRAME_LIMIT + 1))
    with pytest.raises(TransferBroken, match="exceeds the limit"):
        channel.receive()
    writer.close()
    channel.close()


def test_a_truncated_frame_and_an_early_end_are_named() -> None:
    writer, channel = _pair()
    writer.sendall(encode(Folder("INBOX")) + struct.pack(">cI", b"D", 100) + b"short")
    writer.close()
    assert channel.receive() == Folder("INBOX")
    with pytest.raises(TransferBroken, match="truncated frame"):
        channel.receive()
    channel.close()
    writer, channel = _pair()
    writer.close()
    with pytest.raises(TransferBroken, match="ended the transfer early"):
        channel.receive()
    channel.close()


def test_a_failure_frame_raises_with_the_child_s_line() -> None:
    writer, channel = _pair()
    writer.sendall(encode(Failure(2, "bad")))
    with pytest.raises(StoreSideFailed) as caught:
        channel.receive()
    assert caught.value.failure == Failure(2, "bad")
    writer.close()
    channel.close()


# --- the split path in this process (forced; the child is a real fork) ----------------------

@pytest.fixture
def split(monkeypatch: pytest.MonkeyPatch) -> None:
    if threading.active_count() != 1:
        pytest.skip("another thread runs in this test process: fork is not safe")
    monkeypatch.setattr(cli_transfer, "splits", lambda config: True)


@pytest.fixture
def real_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The real store (the child's deliveries must outlive it), as the try-it-now user."""
    monkeypatch.setattr("mailhouse.service.accounts.default_hasher", lambda: CHEAP)
    path = tmp_path / "real.toml"
    path.write_text(f'hostname = "mx.example.test"\ndata_dir = "{tmp_path / "data"}"\n'
                    'user = "root"\n')
    return path


def _tree(top: Path) -> dict[str, bytes]:
    """A maildir's files by folder and flags (the unique part of a name differs per run)."""
    found: dict[str, bytes] = {}
    for path in sorted(top.rglob("*")):
        if path.is_file():
            relative = path.relative_to(top)
            key = str(relative.parent / path.name.rpartition(":2,")[2]) if ":2," in path.name \
                else str(relative)
            found[f"{key}#{len(found)}"] = path.read_bytes()
    return found


def _modes(top: Path) -> dict[str, int]:
    return {str(p.relative_to(top)): stat.S_IMODE(p.lstat().st_mode) for p in top.rglob("*")}


def test_split_round_trip_equals_the_in_process_path(
        split: None, real_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert mh(capsys, real_config, "domain", "add", "example.test").code == 0
    for user in ("alice", "bob"):
        assert mh(capsys, real_config, "user", "add", f"{user}@example.test",
                  "--password-stdin", stdin="pw\n", monkeypatch=monkeypatch).code == 0
    mbox = tmp_path / "in.mbox"
    mbox.write_bytes(MBOX)
    result = mh(capsys, real_config, "import", "alice@example.test", "--mbox", str(mbox))
    assert (result.code, result.err) == (0, "")
    assert result.out == f"imported 2 messages in 1 mailbox from {mbox} into alice@example.test\n"

    split_out = tmp_path / "split"
    result = mh(capsys, real_config, "export", "alice@example.test", "--maildir", str(split_out))
    assert (result.code, result.err) == (0, "")
    assert result.out.startswith("exported 2 messages in ")
    monkeypatch.setattr(cli_transfer, "splits", lambda config: False)
    plain_out = tmp_path / "plain"
    plain = mh(capsys, real_config, "export", "alice@example.test", "--maildir", str(plain_out))
    assert plain.out == result.out.replace(str(split_out), str(plain_out))
    assert _tree(split_out) == _tree(plain_out)
    assert _modes(split_out) == _modes(plain_out)
    assert b"From x\n" in b"".join(_tree(split_out).values())

    monkeypatch.setattr(cli_transfer, "splits", lambda config: True)
    result = mh(capsys, real_config, "import", "bob@example.test", "--maildir", str(split_out))
    assert (result.code, result.err) == (0, "")
    assert result.out.startswith("imported 2 messages in ")
    bob_out = tmp_path / "bob"
    assert mh(capsys, real_config, "export", "bob@example.test", "--maildir",
              str(bob_out)).code == 0
    assert _tree(bob_out) == _tree(split_out)


def test_split_errors_read_as_in_process(split: None, populated: FakeStore, config: Path,
                                         tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    result = mh(capsys, config, "export", "nobody@example.test", "--maildir", str(tmp_path / "x"))
    assert (result.code, result.err) == (1, "mailhouse: no user nobody@example.test\n")
    assert not (tmp_path / "x").exists()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").touch()
    result = mh(capsys, config, "export", "alice@example.test", "--maildir",
                str(tmp_path / "busy"))
    assert result.code == 1 and "not empty" in result.err
    result = mh(capsys, config, "import", "alice@example.test", "--mbox", str(tmp_path / "no"))
    assert result.code == 1 and "cannot open" in result.err
    mbox = tmp_path / "in.mbox"
    mbox.write_bytes(MBOX)
    result = mh(capsys, config, "import", "alice@example.test", "--mbox", str(mbox),
                "--mailbox", "Nope")
    assert result.code == 1 and "mailbox 'Nope' does not exist" in result.err
    result = mh(capsys, config, "import", "alice@example.test", "--maildir", str(tmp_path),
                "--mailbox", "X")
    assert result.code == 2 and "--mailbox goes with --mbox" in result.err
    result = mh(capsys, config, "import", "alice@example.test", "--mbox", str(mbox))
    assert result.code == 0, result.err  # delivered into the child's copy of the fake store
    assert result.out == f"imported 2 messages in 1 mailbox from {mbox} into alice@example.test\n"


def _with_messages(tmp_path: Path, capsys: pytest.CaptureFixture[str], config: Path,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    mbox = tmp_path / "in.mbox"
    mbox.write_bytes(MBOX)
    monkeypatch.setattr(cli_transfer, "splits", lambda config: False)
    assert mh(capsys, config, "import", "alice@example.test", "--mbox", str(mbox)).code == 0
    monkeypatch.setattr(cli_transfer, "splits", lambda config: True)


def test_a_child_killed_mid_export_gives_exit_1_and_leaves_no_half_file(
        split: None, populated: FakeStore, config: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    _with_messages(tmp_path, capsys, config, monkeypatch)

    async def dying(message: MessageInfo) -> AsyncIterator[bytes]:
        yield b"Subject: half\r\n\r\n" + b"x" * 100_000  # more than the buffers: sent
        os.kill(os.getpid(), signal.SIGKILL)  # runs in the child only

    monkeypatch.setattr(populated, "read_message", dying)
    out = tmp_path / "out"
    result = mh(capsys, config, "export", "alice@example.test", "--maildir", str(out))
    assert result.code == 1
    assert result.err == ("mailhouse: transfer broken off: the other side ended the transfer "
                          "early (the store process was killed by signal 9); nothing more was "
                          "transferred\n")
    assert list((out / "tmp").iterdir()) == [] and list((out / "cur").iterdir()) == []


def test_a_child_killed_mid_import_gives_exit_1(
        split: None, populated: FakeStore, config: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    async def dying(*args: object) -> None:
        os.kill(os.getpid(), signal.SIGKILL)  # runs in the child only

    monkeypatch.setattr(populated, "deliver", dying)
    mbox = tmp_path / "in.mbox"
    mbox.write_bytes(MBOX)
    result = mh(capsys, config, "import", "alice@example.test", "--mbox", str(mbox))
    assert result.code == 1 and result.out == ""
    assert result.err.startswith("mailhouse: transfer broken off: ")
    assert result.err.endswith("(the store process was killed by signal 9); nothing more was "
                               "transferred\n")


def test_a_frame_over_the_limit_ends_the_transfer_with_the_reason(
        split: None, populated: FakeStore, config: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    mbox = tmp_path / "big.mbox"
    mbox.write_bytes(b"From a Thu Jan  1 00:00:00 2004\nSubject: big\n\n" + b"x" * 5000 + b"\n")
    monkeypatch.setattr(cli_transfer, "FRAME_LIMIT", 1000)
    result = mh(capsys, config, "import", "alice@example.test", "--mbox", str(mbox))
    assert result.code == 1
    assert result.err == ("mailhouse: transfer broken off: a Data frame of 5018 octets exceeds "
                          "the limit of 1000 (the store process exited with status 1); nothing "
                          "more was transferred\n")


def test_records_out_of_order_are_an_error(
        split: None, populated: FakeStore, config: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    async def wrong(store: object, account: object) -> AsyncIterator[Data]:
        yield Data(b"no mailbox yet")

    monkeypatch.setattr(cli_transfer, "export_records", wrong)
    result = mh(capsys, config, "export", "alice@example.test", "--maildir",
                str(tmp_path / "out"))
    assert (result.code, result.err) == (1, "mailhouse: export record Data outside a mailbox\n")


# --- as root, for real: the store is the service account's, the files root's ----------------

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="runs mailhouse as root")


@pytest.fixture
def service(base: Path, python: SharedPython) -> Iterator[MailhouseServer]:
    instance = MailhouseServer(base / "mh", protocols=("smtp",), user=SERVICE_USER,
                               python=python.python, env=python.env)
    os.chmod(instance.base, 0o755)
    instance.add_domain("example.test")
    instance.add_user("alice@example.test")
    instance.add_user("bob@example.test")
    yield instance


def _everything(top: Path) -> list[Path]:
    return [top, *top.rglob("*")]


@ROOT_ONLY
def test_root_exports_to_and_imports_from_root_only_places(
        service: MailhouseServer, base: Path, account: pwd.struct_passwd) -> None:
    closed = base / "root-only"
    closed.mkdir(mode=0o700)
    mbox = closed / "alice.mbox"
    mbox.write_bytes(MBOX)
    os.chmod(mbox, 0o600)
    result = service.cli("import", "alice@example.test", "--mbox", str(mbox), check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == (f"imported 2 messages in 1 mailbox from {mbox} into "
                                      "alice@example.test\n")

    out = closed / "export"
    result = service.cli("export", "alice@example.test", "--maildir", str(out), check=False)
    assert result.returncode == 0, result.stderr
    files = sorted((out / "cur").iterdir())
    assert [f.read_bytes() for f in files] == [b"Status: RO\nSubject: a\n\nFrom x\n",
                                               b"Subject: b\n\nb\n"]
    assert files[0].name.endswith(":2,S")
    for path in _everything(out):
        st_ = path.lstat()
        assert st_.st_uid == 0, path
        assert stat.S_IMODE(st_.st_mode) == (0o700 if path.is_dir() else 0o600), path

    result = service.cli("import", "bob@example.test", "--maildir", str(out), check=False)
    assert result.returncode == 0, result.stderr
    again = closed / "bob"
    assert service.cli("export", "bob@example.test", "--maildir", str(again),
                       check=False).returncode == 0
    assert _tree(again) == _tree(out)
    root_owned = [p for p in _everything(service.data_dir) if p.lstat().st_uid != account.pw_uid]
    assert root_owned == []
