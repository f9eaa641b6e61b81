"""`mailhouse backup` and `restore`: a consistent copy of a data directory (also while it is
being written), put back into an empty one; every refusal is one line and exit 1."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from pathlib import Path

import pytest

import mailhouse.__main__ as cli
from mailhouse.cli_backup import MANIFEST, register
from mailhouse.config import Config, load_config
from mailhouse.store import open_store
from mailhouse.store.base import DeliveryTarget, QueueRequest, Store
from mailhouse.store.schema import latest_version
from tests.helpers.cli import run_group
from tests.store.conftest import deliver_bytes


def _config(tmp_path: Path, name: str) -> Config:
    path = tmp_path / f"{name}.toml"
    # user = "root": run as root, the commands stay root (never switch this test process).
    path.write_text(f'hostname = "mx.example.test"\ndata_dir = "{tmp_path / name}"\n'
                    'user = "root"\n')
    return load_config(path)


def mh(capsys: pytest.CaptureFixture[str], config: Config, *argv: str) -> tuple[int, str, str]:
    run = run_group(register, capsys, config, *argv)
    return run.code, run.out, run.err


def message(n: int) -> bytes:
    return f"From: bob@example.net\r\nSubject: number {n}\r\n\r\nbody {n}\r\n".encode()


async def _fill(config: Config, count: int = 5) -> None:
    store = open_store(config.data_dir)
    await store.open()
    try:
        await store.add_domain("example.org")
        alice = await store.add_account("alice@example.org", "hash")
        for n in range(count):
            await deliver_bytes(store, message(n), [DeliveryTarget(alice.id)])
        spool = store.new_spool()
        await spool.write(message(99))
        await store.deliver(spool, [], queue=QueueRequest("alice@example.org",
                                                          ("carol@remote.example",)))
    finally:
        await store.close()
    (config.data_dir / "dkim" / "example.org").mkdir(parents=True)
    (config.data_dir / "dkim" / "example.org" / "mh1.key").write_text("KEY\n")
    (config.data_dir / "tls").mkdir()
    (config.data_dir / "tls" / "cert.pem").write_text("CERT\n")


async def _contents(config: Config) -> dict[str, object]:
    """Everything a client could see, to compare two data directories."""
    store: Store = open_store(config.data_dir)
    await store.open()
    try:
        account = await store.get_account("alice@example.org")
        assert account is not None
        seen: dict[str, object] = {}
        for box in await store.list_mailboxes(account.id):
            rows = await store.list_messages(box.id)
            data = [await store.read_range(row, 0, row.size) for row in rows]
            seen[box.name] = (box.message_count, box.unseen, box.size, box.uidnext,
                              box.uidvalidity, [(r.uid, sorted(r.flags)) for r in rows], data)
        seen["queue"] = [(m.sender, [r.address for r in m.recipients])
                         for m in await store.queue_list()]
        return seen
    finally:
        await store.close()


def test_backup_and_restore_round_trip(capsys: pytest.CaptureFixture[str],
                                       tmp_path: Path) -> None:
    live, fresh = _config(tmp_path, "live"), _config(tmp_path, "fresh")
    asyncio.run(_fill(live))
    code, out, err = mh(capsys, live, "backup", str(tmp_path / "copy"))
    assert (code, err) == (0, "")
    assert "6 message files" in out and "2 other files" in out
    manifest = json.loads((tmp_path / "copy" / MANIFEST).read_text())
    assert manifest["schema"] == latest_version() and manifest["hostname"] == "mx.example.test"
    assert not list((tmp_path / "copy").glob("*-wal"))  # one self-contained database file

    code, out, err = mh(capsys, fresh, "restore", str(tmp_path / "copy"))
    assert (code, err) == (0, "")
    assert asyncio.run(_contents(fresh)) == asyncio.run(_contents(live))
    assert (fresh.data_dir / "dkim" / "example.org" / "mh1.key").read_text() == "KEY\n"
    assert (fresh.data_dir / "tls" / "cert.pem").read_text() == "CERT\n"


def test_a_backup_taken_while_mail_arrives_is_consistent(capsys: pytest.CaptureFixture[str],
                                                         tmp_path: Path) -> None:
    live, fresh = _config(tmp_path, "live"), _config(tmp_path, "fresh")
    asyncio.run(_fill(live, 1))
    stop = threading.Event()

    def writer() -> None:
        async def go() -> None:
            store = open_store(live.data_dir)
            await store.open()
            try:
                alice = await store.get_account("alice@example.org")
                assert alice is not None
                for n in range(1000):
                    if stop.is_set():
                        return
                    await deliver_bytes(store, message(n), [DeliveryTarget(alice.id)])
                    inbox = await store.get_mailbox(alice.id, "INBOX")
                    assert inbox is not None
                    if n % 3 == 0:  # expunges unlink files while the backup copies
                        await store.expunge(inbox.id, [n // 2 + 1])
            finally:
                await store.close()

        asyncio.run(go())

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for i in range(3):
            code, _, err = mh(capsys, live, "backup", str(tmp_path / f"copy{i}"))
            assert (code, err) == (0, "")
    finally:
        stop.set()
        thread.join(30)
    code, _, err = mh(capsys, fresh, "restore", str(tmp_path / "copy2"))
    assert (code, err) == (0, "")
    restored = asyncio.run(_contents(fresh))
    count, _, size, _, _, rows, data = restored["INBOX"]  # type: ignore[misc]
    assert count == len(rows) == len(data) and size == sum(map(len, data))


def test_rows_whose_file_went_during_the_backup_are_left_out(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    live, fresh = _config(tmp_path, "live"), _config(tmp_path, "fresh")
    asyncio.run(_fill(live))
    with sqlite3.connect(live.data_dir / "mailhouse.db") as conn:
        (blob_id,) = conn.execute("SELECT blob_id FROM messages WHERE uid = 2").fetchone()
    (live.data_dir / "blobs" / blob_id).unlink()  # as an EXPUNGE just after the snapshot
    code, out, _ = mh(capsys, live, "backup", str(tmp_path / "copy"))
    assert code == 0 and "1 messages removed while the backup ran" in out
    assert mh(capsys, fresh, "restore", str(tmp_path / "copy"))[0] == 0
    inbox = asyncio.run(_contents(fresh))["INBOX"]
    count, unseen, size, _, _, rows, data = inbox  # type: ignore[misc]
    assert [uid for uid, _ in rows] == [1, 3, 4, 5]
    assert (count, unseen, size) == (4, 4, sum(map(len, data)))  # STATUS counters recomputed


def test_refusals_are_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    live, fresh = _config(tmp_path, "live"), _config(tmp_path, "fresh")
    empty = _config(tmp_path, "nothing")
    assert mh(capsys, empty, "backup", str(tmp_path / "x"))[0] == 1  # no database
    asyncio.run(_fill(live))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "something").write_text("x")
    code, _, err = mh(capsys, live, "backup", str(tmp_path / "full"))
    assert code == 1 and "is not empty" in err and len(err.splitlines()) == 1
    code, _, err = mh(capsys, fresh, "restore", str(tmp_path / "full"))
    assert code == 1 and "not a mailhouse backup" in err

    assert mh(capsys, live, "backup", str(tmp_path / "copy"))[0] == 0
    code, _, err = mh(capsys, live, "restore", str(tmp_path / "copy"))
    assert code == 1 and "is not empty" in err  # never into existing data

    manifest = tmp_path / "copy" / MANIFEST
    good = manifest.read_text()
    manifest.write_text(good.replace(f'"schema": {latest_version()}', '"schema": 999'))
    code, _, err = mh(capsys, fresh, "restore", str(tmp_path / "copy"))
    assert code == 1 and "newer mailhouse" in err
    manifest.write_text(good)
    blob = next(p for p in (tmp_path / "copy" / "blobs").glob("*/*"))
    blob.unlink()
    code, _, err = mh(capsys, fresh, "restore", str(tmp_path / "copy"))
    assert code == 1 and "message files are missing" in err
    assert not any(fresh.data_dir.iterdir())  # checked before anything was copied
    (tmp_path / "copy" / "mailhouse.db").write_bytes(b"not a database" * 100)
    code, _, err = mh(capsys, fresh, "restore", str(tmp_path / "copy"))
    assert code == 1 and "mailhouse.db" in err


def test_wired_into_the_mailhouse_command(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    live = _config(tmp_path, "live")
    asyncio.run(_fill(live, 1))
    code = cli.main(["backup", str(tmp_path / "copy"), "--config", str(tmp_path / "live.toml")])
    assert code == 0 and "backed up" in capsys.readouterr().out
    code = cli.main(["restore", str(tmp_path / "copy"), "--config", str(tmp_path / "x.toml")])
    assert code == 2  # no such config file: a usage error
