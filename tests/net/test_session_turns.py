"""The shared transport (net/session.py) against a fake transport: one connection's pipelined
input is served a bounded slice per event-loop turn, nothing is served while writes are backed
up, and a stuck download wakes when the connection goes."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from mailhouse.net.listener import ConnectionLimits, ConnectionTracker
from mailhouse.net.session import CLOSE_GRACE, FEED_SLICE, TURN_FEEDS, Deadlines
from mailhouse.net.smtp import SmtpEndpoint, SmtpProtocol, SmtpTimeouts
from mailhouse.proto.smtp.server import SmtpServerConfig

NOOP = b"NOOP\r\n"


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.reading = True
        self.closing = False
        self.aborted = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("192.0.2.1", 2525) if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def replies(self) -> int:
        return b"".join(self.written).count(b"\r\n")

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.aborted = self.closing = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


class Idle:
    """A session that is never asked anything but to forget (NOOPs never reach it)."""

    tls: str | None = None

    def reset(self) -> None:
        pass


class NoService:
    def session(self, peer: str) -> Idle:
        return Idle()


def protocol() -> tuple[SmtpProtocol, FakeTransport]:
    pool = ConnectionTracker(10).pool("smtp", ConnectionLimits(10, 10))
    # No junk-command limit here: these tests count how NOOPs are served, not when they stop.
    core = SmtpServerConfig(hostname="mx.example.test", junk_command_limit=10**9)
    endpoint = SmtpEndpoint(core, NoService(),  # type: ignore[arg-type]
                            pool, None, SmtpTimeouts(), deadlines=Deadlines())
    proto = endpoint.factory()
    transport = FakeTransport()
    proto.connection_made(transport)  # type: ignore[arg-type]
    return proto, transport


def test_pipelined_commands_are_served_a_bounded_slice_per_turn() -> None:
    async def run() -> None:
        proto, transport = protocol()
        assert transport.replies() == 1  # the greeting
        per_turn = TURN_FEEDS * FEED_SLICE // len(NOOP)
        proto.data_received(NOOP * 100_000)  # 600 kB in one read
        served = transport.replies() - 1
        assert 0 < served <= per_turn + 1, served  # then it yields to other connections
        assert not transport.reading  # and stops reading: input piles up
        for _ in range(2000):
            await asyncio.sleep(0)
            if transport.replies() == 100_001:
                break
        assert transport.replies() == 100_001
        assert transport.reading

    asyncio.run(run())


def test_nothing_is_served_while_writes_are_backed_up() -> None:
    async def run() -> None:
        proto, transport = protocol()
        proto.pause_writing()  # the peer does not read
        assert not transport.reading
        proto.data_received(NOOP * 1000)
        for _ in range(10):
            await asyncio.sleep(0)
        assert transport.replies() == 1  # not one reply more than the greeting
        proto.resume_writing()
        for _ in range(10):
            await asyncio.sleep(0)
        assert transport.replies() == 1001
        assert transport.reading

    asyncio.run(run())


def test_write_stall_aborts_and_wakes_a_waiting_download() -> None:
    async def run() -> None:
        proto, transport = protocol()
        proto.pause_writing()
        waiter = asyncio.ensure_future(proto._drain())
        await asyncio.sleep(0)
        assert not waiter.done()
        now = asyncio.get_running_loop().time()
        proto.check_timers(now + Deadlines().write_stall - 1)
        assert not transport.aborted
        proto.check_timers(now + Deadlines().write_stall + 1)
        assert transport.aborted
        proto.connection_lost(None)  # what abort() leads to
        assert await asyncio.wait_for(waiter, 1) is False  # stop writing: the session is gone
        assert proto.pool.total == 0

    asyncio.run(run())


def test_lifetime_ends_a_session_whose_task_never_finishes_then_aborts_after_grace() -> None:
    async def run() -> None:
        proto, transport = protocol()
        proto._run(asyncio.sleep(3600))  # e.g. a download the peer keeps slow
        await asyncio.sleep(0)
        now = asyncio.get_running_loop().time()
        proto.check_timers(now + proto.idle_timeout + 1)
        assert not transport.closing  # a task in flight is not idleness …
        proto.check_timers(now + proto.lifetime + 1)
        assert transport.closing and not transport.aborted  # … but the lifetime holds
        proto.check_timers(now + proto.lifetime + 1 + CLOSE_GRACE + 1)
        assert transport.aborted  # the peer did not take the last bytes: no waiting forever
        task = proto._task
        assert task is not None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(run())
