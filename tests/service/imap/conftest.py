from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from mailhouse.model import Account
from mailhouse.store import STORE_KINDS, open_store
from mailhouse.store.base import Store
from mailhouse.store.memory import MemoryStore
from tests.service.imap.harness import Client

Scenario = Callable[[Store, Account], Awaitable[None]]
Runner = Callable[[Scenario], None]


def run_scenario(scenario: Scenario, tmp_path: Path, kind: str = "memory") -> None:
    async def main() -> None:
        store: Store = MemoryStore() if kind == "memory" else open_store(tmp_path / "d")
        await store.open()
        try:
            await store.add_domain("example.org")
            account = await store.add_account("alice@example.org", "x")
            await asyncio.wait_for(scenario(store, account), 60)
        finally:
            await store.close()

    asyncio.run(main())


@pytest.fixture(params=STORE_KINDS)
def imap(request: pytest.FixtureRequest, tmp_path: Path) -> Runner:
    """`imap(scenario)` runs `async def scenario(store, account)` on a fresh store of each
    kind."""
    return lambda scenario: run_scenario(scenario, tmp_path, request.param)


async def logged_in(store: Store, account: Account) -> Client:
    c = Client(store, account)
    await c.login()
    return c


def message(n: int, subject: str = "", sender: str = "bob@example.net", body: str = "",
            extra: str = "") -> bytes:
    subject = subject or f"Message {n}"
    text = (f"From: Bob <{sender}>\r\nTo: alice@example.org\r\nSubject: {subject}\r\n"
            f"Date: Mon, {n % 28 + 1} Jan 2026 10:00:00 +0000\r\n"
            f"Message-ID: <m{n}@example.net>\r\n{extra}\r\n{body or f'Body {n}'}\r\n")
    return text.encode()


async def put(store: Store, account: Account, data: bytes, mailbox: str = "INBOX",
              flags: tuple[str, ...] = ()) -> int:
    box = await store.get_mailbox(account.id, mailbox)
    assert box is not None
    spool = store.new_spool()
    await spool.write(data)
    _, uid = await store.append(box.id, spool, flags)
    return uid
