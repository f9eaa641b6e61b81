"""APPEND's message octets on their way to the store (RFC 9051 §6.3.12, RFC 3502 MULTIAPPEND).

The core streams each message as `AppendChunk`s before the APPEND request itself; they go
straight into a store spool, so a 50 MB message never sits whole in memory. The spools wait,
keyed by (tag, message index), until the request arrives (and commits them) or the command is
refused (`abort`), or the connection drops (`close`).

As the octets pass, each message's header section is watched for 8-bit octets: RFC 6855 §4
has a server that announces UTF8=ACCEPT refuse such a message from a session that did not
enable it (messages.py decides, once it knows what the session enabled).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re

from mailhouse.errors import MailError
from mailhouse.proto.imap.server_events import AppendChunk
from mailhouse.service.imap.settings import ImapSettings
from mailhouse.store.base import Spool, Store

log = logging.getLogger("mailhouse.imap")
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_EIGHT_BIT = re.compile(rb"[\x80-\xff]")


class HeaderScan:
    """Whether a message's header section (up to its first empty line, RFC 5322 §2.1) holds an
    8-bit octet, fed chunk by chunk: each octet is looked at once, plus three carried over so
    that an empty line split between chunks is still found."""

    __slots__ = ("_done", "_tail", "eight_bit")

    def __init__(self) -> None:
        self.eight_bit = False
        self._done = False
        self._tail = b""

    def feed(self, data: bytes) -> None:
        if self._done:
            return
        window = self._tail + data
        end = _HEADER_END.search(window)
        header = window if end is None else window[: end.start()]
        if _EIGHT_BIT.search(header):
            self.eight_bit = True
        if end is not None or self.eight_bit:
            self._done = True
        self._tail = window[-3:]


class Appends:
    def __init__(self, store: Store, settings: ImapSettings) -> None:
        self._store = store
        self._settings = settings
        self._spools: dict[tuple[str, int], Spool] = {}
        self._headers: dict[tuple[str, int], HeaderScan] = {}
        self._too_big: set[str] = set()  # tags with a message over the APPENDLIMIT
        self._failed: set[str] = set()  # tags whose spooling failed (disk full …)
        self._cleanup: set[asyncio.Task[None]] = set()

    async def chunk(self, chunk: AppendChunk) -> None:
        if chunk.tag in self._too_big or chunk.tag in self._failed:
            return
        key = (chunk.tag, chunk.index)
        spool = self._spools.get(key)
        if spool is None:
            spool = self._spools[key] = self._store.new_spool()
            self._headers[key] = HeaderScan()
        self._headers[key].feed(chunk.data)
        if spool.size + len(chunk.data) > self._settings.append_limit:
            # The parser's limit normally refuses first ([TOOBIG] before the octets come).
            self._too_big.add(chunk.tag)
            await self._drop_tag(chunk.tag)
            return
        try:
            if not spool.write_nowait(chunk.data):
                await spool.write(chunk.data)
        except MailError:
            log.warning("event=imap.append_spool_failed", exc_info=True)
            self._failed.add(chunk.tag)
            await self._drop_tag(chunk.tag)

    def take(self, tag: str, index: int) -> Spool | None:
        return self._spools.pop((tag, index), None)

    def eight_bit_header(self, tag: str, index: int) -> bool:
        """Whether that message's header section held an 8-bit octet."""
        scan = self._headers.get((tag, index))
        return scan is not None and scan.eight_bit

    def outcome(self, tag: str) -> str | None:
        """Why the octets of `tag` were not kept: "TOOBIG", "UNAVAILABLE" or None (kept)."""
        if tag in self._too_big:
            return "TOOBIG"
        if tag in self._failed:
            return "UNAVAILABLE"
        return None

    async def finish(self, tag: str) -> None:
        """The APPEND is answered: anything left of it goes."""
        self._too_big.discard(tag)
        self._failed.discard(tag)
        await self._drop_tag(tag)

    def _forget_headers(self, tag: str) -> None:
        for key in [k for k in self._headers if k[0] == tag]:
            del self._headers[key]

    async def _drop_tag(self, tag: str) -> None:
        self._forget_headers(tag)
        for key in [k for k in self._spools if k[0] == tag]:
            spool = self._spools.pop(key)
            with contextlib.suppress(MailError, OSError):
                await spool.abort()

    def abort(self, tag: str) -> None:
        self._too_big.discard(tag)
        self._failed.discard(tag)
        self._forget_headers(tag)
        self._later(tag)

    def close(self) -> None:
        for tag in {k[0] for k in self._spools}:
            self._later(tag)

    def _later(self, tag: str) -> None:
        if not any(k[0] == tag for k in self._spools):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop left: the spools' files are reaped at the next start
        task = loop.create_task(self._drop_tag(tag))
        self._cleanup.add(task)
        task.add_done_callback(self._cleanup.discard)
