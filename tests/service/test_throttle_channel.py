"""The login throttle across processes (service/throttle_channel.py): worker-side clients share
the main process's count; garbage, oversize frames and dead workers never hurt the main process;
a worker that cannot reach it fails closed. Each channel here is a real socketpair."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import sys
import textwrap
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from mailhouse.model import Account
from mailhouse.service.throttle import CheckResult, LoginGuard, LoginThrottle, ip_key, user_key
from mailhouse.service.throttle_channel import (
    MAX_FRAME,
    Acquire,
    ChannelError,
    Release,
    RemoteThrottle,
    ThrottleServer,
    decode_reply,
    decode_request,
    encode_acquire,
    encode_release,
)

ALICE = Account(1, "alice@example.test", "hash")
IP = "192.0.2.1"


class FakeAccounts:
    def __init__(self, cost: float = 0.0) -> None:
        self.calls = 0
        self.cost = cost

    async def authenticate(self, username: str, password: str) -> Account | None:
        self.calls += 1
        await asyncio.sleep(self.cost)
        return ALICE if (username, password) == ("alice@example.test", "right") else None


async def client(server: ThrottleServer, timeout: float = 5.0,
                 on_lost: Callable[[], None] | None = None) -> RemoteThrottle:
    remote = RemoteThrottle(socket.socket(fileno=server.open_channel()), timeout=timeout,
                            on_lost=on_lost)
    await remote.start()
    return remote


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def run(body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(body(), 15))


def test_frames_round_trip_and_are_parsed_strictly() -> None:
    frame = encode_acquire(7, ip_key(IP), user_key("Alice@Example.TEST"))
    assert decode_request(frame[2:]) == Acquire(7, "ip:192.0.2.1", "user:alice@example.test")
    assert decode_request(encode_release(7, CheckResult.FAILURE)[2:]) == Release(
        7, CheckResult.FAILURE)
    head = struct.Struct("!cQ")
    for body in (b"", b"A", head.pack(b"Z", 1), head.pack(b"R", 1) + b"Q",
                 head.pack(b"R", 1) + b"SS", head.pack(b"A", 1) + b"\x00",
                 head.pack(b"A", 1) + b"\x00\x09ip:1",
                 head.pack(b"A", 1) + b"\x00\x04ip:\xffuser:x",
                 head.pack(b"A", 1) + b"\x00\x04xx:1user:x",
                 head.pack(b"A", 1) + b"\x00\x04ip:1nope:x",
                 head.pack(b"A", 1) + b"\x00\x04ip:1user:" + b"x" * 2000):
        with pytest.raises(ChannelError):
            decode_request(body)
    with pytest.raises(ChannelError):
        decode_reply(head.pack(b"A", 1))
    with pytest.raises(ChannelError):
        encode_acquire(1, "ip:1", "user:" + "x" * 2000)


def test_workers_share_one_count_and_checks_in_flight() -> None:
    # Three "workers", 10 parallel wrong guesses each: the allowance is counted once.
    async def body() -> None:
        throttle = LoginThrottle(4, 60.0)
        server = ThrottleServer(throttle, max_pending=100)
        accounts = FakeAccounts(cost=0.02)
        remotes = [await client(server) for _ in range(3)]
        guards = [LoginGuard(accounts, remote, delay=0.0) for remote in remotes]
        outcomes = await asyncio.gather(*(
            guards[i % 3].login(IP, "alice@example.test", f"guess{i}") for i in range(30)))
        assert accounts.calls == 4
        assert sum(o.throttled for o in outcomes) == 26
        assert (await guards[1].login(IP, "alice@example.test", "right")).throttled
        assert not throttle.check(IP, "x@example.test")  # the main process's own count
        for remote in remotes:
            await remote.close()
        await server.close()

    run(body)


def test_parallel_right_logins_through_workers_all_succeed() -> None:
    async def body() -> None:
        throttle = LoginThrottle(3, 60.0)
        server = ThrottleServer(throttle, max_pending=100)
        accounts = FakeAccounts(cost=0.02)
        remotes = [await client(server) for _ in range(2)]
        guards = [LoginGuard(accounts, remote, delay=0.0) for remote in remotes]
        outcomes = await asyncio.gather(*(
            guards[i % 2].login(IP, "alice@example.test", "right") for i in range(20)))
        assert all(o.account is ALICE for o in outcomes)
        await until(lambda: throttle.in_flight == 0)  # the releases are one-way frames
        for remote in remotes:
            await remote.close()
        await server.close()

    run(body)


WORKER = textwrap.dedent("""
    import asyncio, socket, sys
    from mailhouse.service.throttle_channel import RemoteThrottle

    async def main():
        remote = RemoteThrottle(socket.socket(fileno=int(sys.argv[1])), timeout=60.0)
        await remote.start()
        for i in range(2):
            assert await remote.acquire("192.0.2.1", f"u{i}@example.test") is not None
        print("held", flush=True)
        await remote.acquire("192.0.2.1", "w@example.test")  # waits for a slot

    asyncio.run(main())
""")


def test_a_killed_worker_releases_its_checks_in_flight_and_its_waiters() -> None:
    async def body() -> None:
        throttle = LoginThrottle(2, 60.0, queue_timeout=30.0)
        server = ThrottleServer(throttle, max_pending=100)
        fd = server.open_channel()
        try:
            worker = await asyncio.create_subprocess_exec(
                sys.executable, "-c", WORKER, str(fd), pass_fds=[fd],
                stdout=asyncio.subprocess.PIPE)
        finally:
            os.close(fd)
        assert worker.stdout is not None
        assert await worker.stdout.readline() == b"held\n"
        await until(lambda: throttle.in_flight == 2 and throttle.waiting == 1)
        worker.kill()  # no release ever comes
        await worker.wait()
        await until(lambda: throttle.in_flight == 0 and throttle.waiting == 0)
        await until(lambda: server.channels == 0)
        # Nothing was counted as a failure: a fresh worker gets the whole allowance.
        other = await client(server)
        assert await other.acquire(IP, "a@example.test") is not None
        assert await other.acquire(IP, "b@example.test") is not None
        await other.close()
        await server.close()

    run(body)


GARBAGE = [
    pytest.param(struct.pack("!H", MAX_FRAME + 1) + b"x" * 64, id="oversize"),
    pytest.param(struct.pack("!H", 0), id="empty-frame"),
    pytest.param(struct.pack("!H", 9) + struct.pack("!cQ", b"?", 1), id="unknown-kind"),
    pytest.param(struct.pack("!H", 20) + b"A" * 5, id="truncated"),
    pytest.param(b"GET / HTTP/1.0\r\n\r\n", id="http"),
    pytest.param(encode_release(99, CheckResult.SUCCESS), id="unknown-id"),
    pytest.param(encode_acquire(1, "ip:1", "user:x") * 2, id="duplicate-id"),
    pytest.param(struct.pack("!H", 17) + struct.pack("!cQ", b"A", 1) + b"\x00\x04ip:\xff"
                 + b"us", id="bad-utf8"),
]


@pytest.mark.parametrize("garbage", GARBAGE)
def test_garbage_ends_that_channel_only(garbage: bytes, caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        throttle = LoginThrottle(2, 60.0)
        server = ThrottleServer(throttle, max_pending=100)
        good = await client(server)
        evil = socket.socket(fileno=server.open_channel())
        reader, writer = await asyncio.open_connection(sock=evil)
        writer.write(garbage)
        await writer.drain()
        if garbage.startswith(struct.pack("!H", 20)):
            writer.write_eof()  # end of file inside a frame
        rest = await asyncio.wait_for(reader.read(), 5)  # the main process hangs up
        assert len(rest) % 11 == 0  # at most the grant of the first duplicate
        writer.close()
        await until(lambda: throttle.in_flight == 0)
        ticket = await good.acquire(IP, "a@example.test")  # the other worker is served
        assert ticket is not None
        good.release(ticket, CheckResult.FAILURE)
        await until(lambda: throttle.in_flight == 0)
        await good.close()
        await server.close()

    with caplog.at_level(logging.INFO, logger="mailhouse.auth"):
        run(body)
    assert "event=auth.channel_error" in caplog.text


def test_a_worker_fails_closed_when_the_main_process_is_gone(
        caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        server = ThrottleServer(LoginThrottle(5, 60.0), max_pending=100)
        lost: list[bool] = []
        remote = await client(server, on_lost=lambda: lost.append(True))
        accounts = FakeAccounts()
        guard = LoginGuard(accounts, remote, delay=0.0)
        await server.close()
        await until(lambda: remote.lost)
        outcome = await guard.login(IP, "alice@example.test", "right")
        assert outcome.throttled and accounts.calls == 0  # refused unchecked
        assert lost == [True]
        await remote.close()

    with caplog.at_level(logging.INFO, logger="mailhouse.auth"):
        run(body)
    assert "event=auth.throttle_unreachable" in caplog.text


def test_a_silent_main_process_is_a_refusal_and_a_late_grant_is_given_back() -> None:
    async def body() -> None:
        ours, theirs = socket.socketpair()
        remote = RemoteThrottle(theirs, timeout=0.2)
        await remote.start()
        reader, writer = await asyncio.open_connection(sock=ours)
        assert await remote.acquire(IP, "a@example.test") is None  # nobody answered in time
        frame = await reader.readexactly(2)
        body = await reader.readexactly(struct.unpack("!H", frame)[0])
        request = decode_request(body)
        writer.write(struct.pack("!H", 9) + struct.pack("!cQ", b"Y", request.id))  # late grant
        frame = await reader.readexactly(2)
        release = decode_request(await reader.readexactly(struct.unpack("!H", frame)[0]))
        assert release == Release(request.id, CheckResult.ABANDONED)
        await remote.close()
        writer.close()

    run(body)


def test_a_login_costs_one_round_trip() -> None:
    # Worker -> main: acquire, then a one-way release; main -> worker: one reply.
    async def body() -> None:
        ours, theirs = socket.socketpair()
        remote = RemoteThrottle(theirs, timeout=5.0)
        await remote.start()
        reader, writer = await asyncio.open_connection(sock=ours)
        seen: list[bytes] = []

        async def main_side() -> None:
            while True:
                head = await reader.readexactly(2)
                body = await reader.readexactly(struct.unpack("!H", head)[0])
                seen.append(body[:1])
                if body[:1] == b"A":
                    writer.write(struct.pack("!H", 9) + b"Y" + body[1:9])

        task = asyncio.create_task(main_side())
        outcome = await LoginGuard(FakeAccounts(), remote, 0.0).login(
            IP, "alice@example.test", "right")
        assert outcome.account is ALICE
        await until(lambda: len(seen) == 2)
        assert seen == [b"A", b"R"]
        task.cancel()
        await remote.close()
        writer.close()

    run(body)


def test_one_worker_cannot_hold_more_than_max_pending() -> None:
    async def body() -> None:
        throttle = LoginThrottle(100, 60.0)
        server = ThrottleServer(throttle, max_pending=3)
        remote = await client(server)
        got = [await remote.acquire(f"192.0.2.{i}", f"u{i}@example.test") for i in range(4)]
        assert [t is not None for t in got] == [True, True, True, False]
        await remote.close()
        await server.close()

    run(body)
