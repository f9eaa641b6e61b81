"""IDLE (RFC 2177, RFC 9051 §6.3.13): a delivery, another session's STORE and EXPUNGE reach an
idling session through the store's wake-ups, within a second (here: at once)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from mailhouse.store import STORE_KINDS, open_store
from mailhouse.store.wakeup import LocalWakeups
from tests.service.imap.conftest import message, put
from tests.service.imap.harness import Client


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_idle_hears_deliveries_flags_and_expunges(kind: str, tmp_path: Path) -> None:
    async def main() -> None:
        wakeups = LocalWakeups()
        store = open_store(tmp_path / "d", kind, wakeups=wakeups)
        await store.open()
        try:
            await store.add_domain("example.org")
            account = await store.add_account("alice@example.org", "x")
            await put(store, account, message(1))
            idler = Client(store, account, watch=wakeups.watch(account.id))
            other = Client(store, account)
            for c in (idler, other):
                await c.login()
                await c.ok(b"s SELECT INBOX")
            assert (await idler.cmd(b"i IDLE")).startswith(b"+ ")
            waiting = asyncio.ensure_future(idler.idle_changes())
            await asyncio.sleep(0.01)
            started = time.monotonic()
            await put(store, account, message(2))
            lines = await asyncio.wait_for(waiting, 2)
            assert lines == [b"2 EXISTS"]
            assert time.monotonic() - started < 1.0
            await other.ok(b"a STORE 1 +FLAGS (\\Flagged)")
            lines = await asyncio.wait_for(idler.idle_changes(), 2)
            assert lines == [b"1 FETCH (UID 1 FLAGS (\\Flagged))"]
            await other.ok(b"b STORE 1 +FLAGS (\\Deleted)")
            await other.ok(b"c EXPUNGE")
            lines = await asyncio.wait_for(idler.idle_changes(), 2)
            assert b"1 EXPUNGE" in lines
            out = await idler.raw(b"DONE\r\n")
            assert out.endswith(b"i OK IDLE terminated\r\n")
        finally:
            await store.close()

    asyncio.run(main())


def test_commands_look_at_the_store_when_woken_or_after_the_interval(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # With wake-ups a command skips the store round trip unless one named its mailbox; a
    # dropped wake-up is made up for by a look at least every FULL_SYNC_INTERVAL.
    from mailhouse.service.imap import session as session_module

    monkeypatch.setattr(session_module, "FULL_SYNC_INTERVAL", 0.2)

    async def main() -> None:
        wakeups = LocalWakeups()
        store = open_store(tmp_path / "d", "sqlite", wakeups=wakeups)
        await store.open()
        try:
            await store.add_domain("example.org")
            account = await store.add_account("alice@example.org", "x")
            client = Client(store, account, watch=wakeups.watch(account.id))
            await client.login()
            await client.ok(b"s SELECT INBOX")
            await put(store, account, message(1))  # announced: seen at once
            assert b"* 1 EXISTS" in await client.ok(b"a NOOP")
            silent = open_store(tmp_path / "d", "sqlite")  # another writer, no wake-up sent
            await silent.open()
            try:
                await put(silent, account, message(2))
            finally:
                await silent.close()
            assert b"EXISTS" not in await client.ok(b"b NOOP")
            await asyncio.sleep(0.25)
            assert b"* 2 EXISTS" in await client.ok(b"c NOOP")
        finally:
            await store.close()

    asyncio.run(main())
