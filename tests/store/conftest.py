"""Fixtures for the store suites: one opened store per test, for every implementation.

Tests are plain `async def` functions; the hook below runs them on this directory's own event loop
(asyncio.Runner), so the suite needs no async plugin. The store is opened and closed on the same
loop the test runs on.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from mailhouse.store import STORE_KINDS, open_store
from mailhouse.store.base import DeliveryTarget, MessageInfo, Outcome, Store

HERE = Path(__file__).parent


@pytest.fixture
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as loop_runner:
        yield loop_runner


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if not inspect.iscoroutinefunction(pyfuncitem.obj) or "runner" not in pyfuncitem.funcargs:
        return None
    args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    loop_runner = pyfuncitem.funcargs["runner"]
    assert isinstance(loop_runner, asyncio.Runner)
    loop_runner.run(pyfuncitem.obj(**args))
    return True


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every async test in this directory needs the runner, whether it names it or not. (The hook
    sees the whole session's items: leave other directories' tests alone.)"""
    for item in items:
        if (
            isinstance(item, pytest.Function)
            and item.path.is_relative_to(HERE)
            and inspect.iscoroutinefunction(item.obj)
        ):
            item.fixturenames.insert(0, "runner")


class TwoProcesses:
    """Two embedded stores on one data directory, as the server and a worker process (or the
    CLI) open it: every write goes through the first, every read through the second, so each
    contract test also checks that one instance sees what the other committed, at once.

    The spool and the bytes belong to the writer (a spool is one instance's file); reading
    message bytes goes through the reader, which shares only the directory."""

    READS = frozenset({
        "directory_serial", "directory", "list_domains", "get_account", "list_accounts",
        "list_aliases", "list_mailboxes", "get_mailbox", "list_messages", "list_expunged",
        "read_message", "read_blob", "queue_due", "queue_next_attempt", "queue_get",
        "queue_list", "queue_stats", "list_subscriptions", "structures", "read_range",
        "read_ranges", "search_fields", "search_candidates", "get_admin", "list_admins",
        "list_audit", "search_events", "trace_events", "event_counts", "api_token",
        "list_api_tokens",
    })

    def __init__(self, data_dir: Path) -> None:
        self.writer = open_store(data_dir, "sqlite")
        self.reader = open_store(data_dir, "sqlite")

    async def open(self) -> None:
        await self.writer.open()
        await self.reader.open()

    async def close(self) -> None:
        await self.reader.close()
        await self.writer.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.reader if name in self.READS else self.writer, name)


@pytest.fixture(params=[*STORE_KINDS, "sqlite-two"])
def store(
    request: pytest.FixtureRequest, runner: asyncio.Runner, tmp_path: Path
) -> Iterator[Store]:
    opened: Store
    if request.param == "sqlite-two":
        opened = cast(Store, TwoProcesses(tmp_path / "data"))
    else:
        opened = open_store(tmp_path / "data", request.param)
    runner.run(opened.open())
    try:
        yield opened
    finally:
        runner.run(opened.close())


# --- helpers shared by the suites ---------------------------------------------------------------
async def deliver_bytes(
    store: Store, data: bytes, targets: list[DeliveryTarget], chunk: int = 8192
) -> list[Outcome]:
    spool = store.new_spool()
    for start in range(0, len(data), chunk):
        await spool.write(data[start : start + chunk])
    return await store.deliver(spool, targets)


async def read_all(store: Store, message: MessageInfo) -> bytes:
    return b"".join([chunk async for chunk in store.read_message(message)])


async def chunks_of(iterator: AsyncIterator[bytes]) -> list[bytes]:
    return [chunk async for chunk in iterator]
