"""The real server, in-process on loopback with kernel-chosen ports, driven by smtplib."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from mailhouse.app import App
from mailhouse.config import (
    Config,
    LimitsConfig,
    ListenConfig,
    QueueConfig,
    config_from_table,
)
from mailhouse.service.accounts import Accounts, Passwords

CHEAP_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


@dataclass
class Running:
    app: App
    loop: asyncio.AbstractEventLoop
    smtp_port: int
    data_dir: Path

    def call(self, coro: object, timeout: float = 30) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def messages(self, address: str) -> list[bytes]:
        """Every stored message of one account's INBOX, oldest first."""

        async def read() -> list[bytes]:
            store = self.app.store
            account = await store.get_account(address)
            assert account is not None
            inbox = next(m for m in await store.list_mailboxes(account.id) if m.name == "INBOX")
            out = []
            for msg in await store.list_messages(inbox.id):
                out.append(b"".join([chunk async for chunk in store.read_message(msg)]))
            return out

        return self.call(read())  # type: ignore[return-value]

    def port(self, listener: str) -> int:
        """The kernel-chosen port of a listener ("smtp", "pop3s" …)."""
        return next(lst.bound_ports()[0] for lst in self.app.listeners if lst.name == listener)

    def refresh_directory(self) -> None:
        self.call(self.app.directory.refresh())


def make_config(tmp_path: Path, *, listen: dict[str, tuple[str, ...]] | None = None,
                **limits: object) -> Config:
    base = config_from_table({"hostname": "mx.example.test", "data_dir": str(tmp_path / "data")},
                             base_dir=tmp_path)
    endpoints: dict[str, tuple[str, ...]] = {
        "smtp": ("127.0.0.1:0",), "submission": (), "submissions": (), "imap": (), "imaps": (),
        "pop3": (), "pop3s": ()}
    endpoints.update(listen or {})
    listen_config = replace(ListenConfig(), **endpoints)
    # The queue on the test's own loop: tests look at the App's store and worker directly.
    # `serve`'s default, a separate queue process, is tested in tests/test_queue_process.py.
    # POP3 on the same loop too (`[pop3] workers = 1`); workers > 1: tests/test_pop3_workers.py.
    return replace(base, user=None, listen=listen_config, limits=replace(LimitsConfig(), **limits),
                   queue=replace(QueueConfig(), process="inline"),
                   pop3=replace(base.pop3, workers=1))


def new_loop() -> asyncio.AbstractEventLoop:
    """The loop production runs on: uvloop when installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def start_server(config: Config) -> Iterator[Running]:
    loop = new_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    app = App(config)

    async def setup() -> None:
        await app.start()
        accounts = Accounts(app.store, Passwords(CHEAP_HASHER))
        await accounts.add_domain("example.test")
        for user in ("alice", "bob"):
            await accounts.add_user(f"{user}@example.test", "password-" + user)
        await accounts.add_alias("team@example.test", ["alice@example.test", "bob@example.test"])
        await app.directory.refresh()

    asyncio.run_coroutine_threadsafe(setup(), loop).result(30)
    port = app.listeners[0].bound_ports()[0]
    try:
        yield Running(app, loop, port, config.data_dir)
    finally:
        asyncio.run_coroutine_threadsafe(app.stop(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Running]:
    yield from start_server(make_config(tmp_path))
