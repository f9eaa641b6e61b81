"""Store.lock_maildrop, the POP3 exclusive-access lock (RFC 1939 §8): one holder per account in
every store, across store instances and processes for SQLite (a flock on
data_dir/locks/pop3/<account id>, store/maildrop_lock.py), never kept after a release, a
cancellation, a failure or the holder's death."""

from __future__ import annotations

import asyncio
import signal
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from mailhouse.errors import MailError
from mailhouse.store import maildrop_lock, open_store
from mailhouse.store.base import Store
from tests.helpers.locks import is_flocked
from tests.store.conftest import TwoProcesses


def lock_path(data_dir: Path, account_id: int) -> Path:
    return data_dir / "locks" / "pop3" / str(account_id)


# --- the contract, every store --------------------------------------------------------------
async def test_one_holder_per_account_until_released(store: Store) -> None:
    first = await store.lock_maildrop(1)
    assert first is not None
    assert await store.lock_maildrop(1) is None
    other = await store.lock_maildrop(2)  # the lock is per account
    assert other is not None
    first.release()
    second = await store.lock_maildrop(1)
    assert second is not None
    first.release()  # idempotent: an old session's late release frees nothing now
    assert await store.lock_maildrop(1) is None
    second.release()
    second.release()
    other.release()
    again = await store.lock_maildrop(1)
    assert again is not None
    again.release()


async def test_parallel_lockers_get_one_lock(store: Store) -> None:
    results = await asyncio.gather(*(store.lock_maildrop(7) for _ in range(6)))
    held = [lock for lock in results if lock is not None]
    assert len(held) == 1
    held[0].release()
    relocked = await store.lock_maildrop(7)
    assert relocked is not None
    relocked.release()


async def test_two_instances_exclude_each_other_as_two_processes(tmp_path: Path) -> None:
    store = TwoProcesses(tmp_path / "data")  # two store instances on one data directory
    await store.open()
    try:
        mine = await store.writer.lock_maildrop(1)
        assert mine is not None
        assert await store.reader.lock_maildrop(1) is None
        mine.release()
        theirs = await store.reader.lock_maildrop(1)
        assert theirs is not None
        assert await store.writer.lock_maildrop(1) is None
        theirs.release()
    finally:
        await store.close()


async def test_a_closed_store_holds_no_lock(tmp_path: Path) -> None:
    for kind in ("memory", "sqlite"):
        store = open_store(tmp_path / kind, kind)
        await store.open()
        held = await store.lock_maildrop(1)
        assert held is not None
        await store.close()
        held.release()  # after close: harmless
        if kind == "sqlite":
            assert not is_flocked(lock_path(tmp_path / kind, 1))


# --- SQLite: the file -----------------------------------------------------------------------
async def test_the_lock_file_is_private_and_named_by_the_account_id(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = open_store(data, "sqlite")
    await store.open()
    try:
        assert not (data / "locks").exists()  # made on first use only
        held = await store.lock_maildrop(42)
        assert held is not None
        path = lock_path(data, 42)
        assert is_flocked(path)
        for directory in (data / "locks", data / "locks" / "pop3"):
            assert stat.S_IMODE(directory.stat().st_mode) & 0o077 == 0
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0
        held.release()
        assert not is_flocked(path)  # the file stays (harmless), unlocked
    finally:
        await store.close()


@pytest.mark.parametrize("planted", ["locks", "locks/pop3", "locks/pop3/1"])
async def test_a_planted_link_is_never_followed(tmp_path: Path, planted: str) -> None:
    data = tmp_path / "data"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    store = open_store(data, "sqlite")
    await store.open()
    try:
        link = data / planted
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(elsewhere / "target")
        (elsewhere / "target").mkdir()
        with pytest.raises(MailError):
            await store.lock_maildrop(1)
        assert list((elsewhere / "target").iterdir()) == []
        link.unlink()  # repaired: the failed attempt kept no reservation
        held = await store.lock_maildrop(1)
        assert held is not None
        held.release()
    finally:
        await store.close()


def slow_lock_file(monkeypatch: pytest.MonkeyPatch
                   ) -> tuple[threading.Event, threading.Event, Callable[[Path, int], int | None]]:
    """maildrop_lock.lock_file made to wait for `gate` once `started`; returns the real one."""
    started, gate = threading.Event(), threading.Event()
    real = maildrop_lock.lock_file

    def slow(data_dir: Path, account_id: int) -> int | None:
        started.set()
        assert gate.wait(10)
        return real(data_dir, account_id)

    monkeypatch.setattr(maildrop_lock, "lock_file", slow)
    return started, gate, real


async def test_a_lock_taken_after_its_caller_was_cancelled_is_let_go(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    store = open_store(data, "sqlite")
    await store.open()
    started, gate, real = slow_lock_file(monkeypatch)
    try:
        task = asyncio.create_task(store.lock_maildrop(1))
        assert await asyncio.to_thread(started.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        gate.set()  # the thread now takes the flock for nobody
        monkeypatch.setattr(maildrop_lock, "lock_file", real)
        async with asyncio.timeout(10):
            while not lock_path(data, 1).exists() or is_flocked(lock_path(data, 1)):
                await asyncio.sleep(0.005)
        held = await store.lock_maildrop(1)
        assert held is not None
        held.release()
    finally:
        gate.set()
        await store.close()


async def test_a_lock_the_store_closes_under_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    store = open_store(data, "sqlite")
    await store.open()
    started, gate, _ = slow_lock_file(monkeypatch)
    try:
        task = asyncio.create_task(store.lock_maildrop(1))
        assert await asyncio.to_thread(started.wait, 10)
        closing = asyncio.create_task(store.close())
        await asyncio.sleep(0.01)
        gate.set()
        await closing
        with pytest.raises(MailError):
            await task
        assert not is_flocked(lock_path(data, 1))
    finally:
        gate.set()


HOLDER = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from mailhouse.store import open_store

    async def main():
        store = open_store(Path(sys.argv[1]))
        await store.open()
        held = await store.lock_maildrop(int(sys.argv[2]))
        print("held" if held is not None else "refused", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
""")


def test_a_lock_held_by_another_process_dies_with_it(tmp_path: Path) -> None:
    data = tmp_path / "data"

    async def try_lock() -> bool:
        store = open_store(data, "sqlite")
        await store.open()
        try:
            held = await store.lock_maildrop(3)
            if held is None:
                return False
            held.release()
            return True
        finally:
            await store.close()

    assert asyncio.run(try_lock())
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(data), "3"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        assert not asyncio.run(try_lock())
        holder.send_signal(signal.SIGKILL)  # no release(): the kernel drops the flock
        holder.wait(10)
        assert asyncio.run(try_lock())
        assert asyncio.run(try_lock())  # and each release lets go again
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)
