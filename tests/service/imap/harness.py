"""Drives the IMAP session core (proto/imap/server.py) and the IMAP service together, in
process, without sockets: bytes in, bytes out, as net/imap.py would."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

from mailhouse.model import Account
from mailhouse.proto.imap import server_events as ev
from mailhouse.proto.imap.server import ImapServer, ImapServerConfig, LoginOutcome
from mailhouse.service.imap import CAPABILITIES, ENABLEABLE, ImapSettings
from mailhouse.service.imap.session import ImapSession
from mailhouse.store.base import Store
from mailhouse.store.wakeup import Watch


class _Collect:
    def __init__(self, core: ImapServer) -> None:
        self.core = core

    async def send(self, lines: Iterable[bytes]) -> bool:
        self.core.untagged(lines)
        return True


class Client:
    """One session: `await c.cmd(b"a SELECT INBOX")` returns what the server wrote."""

    def __init__(self, store: Store, account: Account, *, settings: ImapSettings | None = None,
                 watch: Watch | None = None, config: ImapServerConfig | None = None) -> None:
        self.core = ImapServer(config or ImapServerConfig(
            hostname="mx.test", capabilities=CAPABILITIES, enableable=ENABLEABLE),
            tls_active=True)
        self.session = ImapSession(store, account, settings or ImapSettings(), watch)
        self.core.data_to_send()

    async def login(self) -> bytes:
        return await self.cmd(b"l LOGIN user pass")

    async def raw(self, data: bytes) -> bytes:
        core = self.core
        core.receive_data(data)
        for _ in range(100_000):
            event = core.next_event()
            if isinstance(event, ev.NeedData | ev.Closed):
                break
            if isinstance(event, ev.Credentials):
                core.login_result(LoginOutcome.OK)
            elif isinstance(event, ev.Request):
                done = await self.session.handle(event, _Collect(core))
                core.complete(done.status, done.text, done.code)
            elif isinstance(event, ev.AppendChunk):
                await self.session.append_chunk(event)
            elif isinstance(event, ev.AppendAborted):
                self.session.append_aborted(event.tag)
            elif isinstance(event, ev.IdleEnded):
                core.untagged(self.session.pending())
                core.complete("OK", "IDLE terminated")
        else:
            raise AssertionError("the core never asked for more input")
        return core.data_to_send()

    async def cmd(self, line: bytes) -> bytes:
        return await self.raw(line + b"\r\n")

    async def ok(self, line: bytes) -> bytes:
        out = await self.cmd(line)
        tag = line.split(b" ", 1)[0]
        assert (b"\r\n" + out).rfind(b"\r\n" + tag + b" OK") != -1, out
        return out

    async def idle_changes(self) -> list[bytes]:
        return await self.session.changes()


async def lines(chunks: AsyncIterator[bytes]) -> list[bytes]:
    return [c async for c in chunks]
