"""Wake-ups across processes (store/wakeup.py): hints that a mailbox changed."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from pathlib import Path

from mailhouse.store.wakeup import WAKEUP_DIR, LocalWakeups, SocketWakeups


def test_local_watches_get_their_account_only_coalesced() -> None:
    async def run() -> None:
        wakeups = LocalWakeups()
        alice, bob = wakeups.watch(1), wakeups.watch(2)
        wakeups.publish(1, 10, 5)
        wakeups.publish(1, 10, 7)
        wakeups.publish(1, 11, 2)
        assert await alice.wait(1) == {10: 7, 11: 2}
        assert await bob.wait(0.01) == {}
        bob.close()
        wakeups.publish(2, 20, 1)  # nobody listens: nothing to do
        assert alice.take() == {}

    asyncio.run(run())


def test_two_processes_on_one_data_directory_wake_each_other(tmp_path: Path) -> None:
    async def run() -> None:
        main, worker = SocketWakeups(tmp_path), SocketWakeups(tmp_path)
        await main.start()
        await worker.start()
        try:
            session = worker.watch(1)
            own = main.watch(1)
            started = time.monotonic()
            main.publish(1, 3, 9)
            assert await session.wait(2) == {3: 9}
            assert time.monotonic() - started < 1.0
            assert own.take() == {3: 9}  # the publisher's own sessions too
        finally:
            await main.close()
            await worker.close()
        assert list((tmp_path / WAKEUP_DIR).iterdir()) == []  # closed sockets leave no file

    asyncio.run(run())


def test_a_process_that_never_started_publishes_too(tmp_path: Path) -> None:
    """The CLI (an import) publishes without listening itself: a real second process."""
    async def run() -> None:
        server = SocketWakeups(tmp_path)
        await server.start()
        try:
            watch = server.watch(4)
            code = ("import sys; from pathlib import Path; "
                    "from mailhouse.store.wakeup import SocketWakeups; "
                    "SocketWakeups(Path(sys.argv[1])).publish(4, 8, 15)")
            proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code,
                                                        str(tmp_path))
            assert await asyncio.wait_for(proc.wait(), 30) == 0
            assert await watch.wait(5) == {8: 15}
        finally:
            await server.close()

    asyncio.run(run())


def test_the_socket_of_a_dead_process_is_removed(tmp_path: Path) -> None:
    async def run() -> None:
        directory = tmp_path / WAKEUP_DIR
        directory.mkdir(parents=True)
        dead = directory / "1-deadbeef.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(dead))
        sock.close()  # killed: the file stays, nobody reads it
        wakeups = SocketWakeups(tmp_path)
        await wakeups.start()
        try:
            wakeups.publish(1, 1, 1)
            assert not dead.exists()
        finally:
            await wakeups.close()

    asyncio.run(run())


def test_a_subscriber_that_never_reads_never_blocks_the_publisher(tmp_path: Path) -> None:
    async def run() -> None:
        directory = tmp_path / WAKEUP_DIR
        directory.mkdir(parents=True)
        stuck = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        stuck.bind(str(directory / "2-stuck0000.sock"))  # alive, never reads
        wakeups = SocketWakeups(tmp_path)
        await wakeups.start()
        try:
            started = time.monotonic()
            for modseq in range(20_000):  # far more than its receive buffer holds
                wakeups.publish(1, 1, modseq)
            assert time.monotonic() - started < 10
        finally:
            await wakeups.close()
            stuck.close()

    asyncio.run(run())


def test_a_data_directory_deeper_than_sun_path_works(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    async def run() -> None:
        main, worker = SocketWakeups(deep), SocketWakeups(deep)
        await main.start()
        await worker.start()
        try:
            watch = worker.watch(1)
            main.publish(1, 2, 3)
            assert await watch.wait(2) == {2: 3}
        finally:
            await main.close()
            await worker.close()

    asyncio.run(run())


def test_foreign_datagrams_are_ignored(tmp_path: Path) -> None:
    async def run() -> None:
        wakeups = SocketWakeups(tmp_path)
        await wakeups.start()
        try:
            watch = wakeups.watch(1)
            (target,) = (tmp_path / WAKEUP_DIR).iterdir()
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as other:
                other.sendto(b"garbage", str(target))
            await asyncio.sleep(0.05)
            assert watch.take() == {}
        finally:
            await wakeups.close()

    asyncio.run(run())

