"""A session speaks without being spoken to (net/session.py `wake`): what IMAP IDLE and
mailbox change notifications need. Driven with a minimal core and a fake transport."""

from __future__ import annotations

import asyncio

from mailhouse.net.listener import ConnectionLimits, ConnectionTracker
from mailhouse.net.session import Core, CoreProtocol, Deadlines
from tests.net.test_session_turns import FakeTransport


class Announcer:
    """A core with nothing to say until told (like IMAP's untagged EXISTS during IDLE)."""

    def __init__(self) -> None:
        self.out = bytearray(b"* OK ready\r\n")
        self.buffered = 0

    def receive_data(self, data: bytes) -> None:
        pass

    def data_to_send(self) -> bytes:
        out, self.out = bytes(self.out), bytearray()
        return out

    def timeout(self) -> None:
        pass

    def shutdown(self) -> bool:
        return True

    def tls_established(self) -> None:
        pass


class AnnouncerProtocol(CoreProtocol):
    def __init__(self) -> None:
        pool = ConnectionTracker(10).pool("test", ConnectionLimits(10, 10))
        super().__init__(pool, None, idle_timeout=60, lifetime=600, implicit_tls=False,
                         deadlines=Deadlines())
        self.announcer = Announcer()
        self.busy = False

    def _new_core(self) -> Core:
        return self.announcer

    def _pump(self) -> None:
        if self.core is not None and not self.busy:
            self._need_data()


def test_wake_flushes_what_the_core_has_to_say() -> None:
    async def run() -> None:
        proto = AnnouncerProtocol()
        transport = FakeTransport()
        proto.connection_made(transport)  # type: ignore[arg-type]
        await asyncio.sleep(0)
        assert b"".join(transport.written) == b"* OK ready\r\n"
        proto.announcer.out += b"* 4 EXISTS\r\n"
        proto.wake()
        proto.wake()  # several wakes before the turn: one turn
        assert b"".join(transport.written) == b"* OK ready\r\n"  # not synchronously
        await asyncio.sleep(0)
        assert b"".join(transport.written) == b"* OK ready\r\n* 4 EXISTS\r\n"

    asyncio.run(run())


def test_wake_after_close_writes_nothing() -> None:
    async def run() -> None:
        proto = AnnouncerProtocol()
        transport = FakeTransport()
        proto.connection_made(transport)  # type: ignore[arg-type]
        await asyncio.sleep(0)
        proto.connection_lost(None)
        proto.announcer.out += b"* 5 EXISTS\r\n"
        proto.wake()
        await asyncio.sleep(0)
        assert b"EXISTS" not in b"".join(transport.written)

    asyncio.run(run())
