"""An in-memory copy of who we receive mail for, kept fresh by polling a serial.

The CLI changes domains, users and aliases in the store from another process while the server
runs; one cheap serial read four times a second notices it, so RCPT lookups never wait on the
database. A refusal from a snapshot older than a moment is checked once more against the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from mailhouse.model import Directory
from mailhouse.store.base import Store

log = logging.getLogger("mailhouse.directory")


class DirectoryCache:
    def __init__(self, store: Store, interval: float = 0.25) -> None:
        self._store = store
        self._interval = interval
        self.current = Directory(serial=-1, domains=frozenset())
        self._task: asyncio.Task[None] | None = None
        self._inflight: asyncio.Future[None] | None = None

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._poll(), name="directory-poll")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def refresh(self) -> None:
        """Reload if the serial moved. Concurrent callers share one check."""
        if self._inflight is not None:
            await asyncio.shield(self._inflight)
            return
        self._inflight = asyncio.get_running_loop().create_future()
        try:
            await self._refresh()
        finally:
            self._inflight.set_result(None)
            self._inflight = None

    async def _refresh(self) -> None:
        serial = await self._store.directory_serial()
        if serial != self.current.serial:
            self.current = await self._store.directory()
            log.info("event=directory.loaded serial=%d domains=%d users=%d aliases=%d",
                     self.current.serial, len(self.current.domains), len(self.current.users),
                     len(self.current.aliases))

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.refresh()
            except Exception:  # keep serving the last good snapshot
                log.exception("event=directory.refresh_failed")
