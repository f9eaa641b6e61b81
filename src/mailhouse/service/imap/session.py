"""One logged-in IMAP session: its selected mailbox, its view, what it enabled."""

from __future__ import annotations

from mailhouse.model import Account
from mailhouse.proto.imap.server_events import AppendChunk, Request
from mailhouse.service.imap.settings import ImapSettings
from mailhouse.service.imap_api import Completion, Responder
from mailhouse.store.base import Store
from mailhouse.store.wakeup import Watch


class ImapSession:
    def __init__(self, store: Store, account: Account, settings: ImapSettings,
                 watch: Watch | None) -> None:
        self._store = store
        self.account = account
        self._settings = settings
        self._watch = watch

    async def handle(self, request: Request, respond: Responder) -> Completion:
        return Completion("NO", "Not implemented yet")

    async def append_chunk(self, chunk: AppendChunk) -> None:
        return None

    def append_aborted(self, tag: str) -> None:
        return None

    async def changes(self) -> list[bytes]:
        return []

    def pending(self) -> list[bytes]:
        return []

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None
