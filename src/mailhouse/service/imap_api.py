"""The seam between the IMAP transport (net/imap.py) and the IMAP service: what a logged-in
session must offer. The service implements these; the transport only calls them, so the
mailbox logic never sees a socket and the transport never sees the store.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from mailhouse.proto.imap.server import LoginOutcome
from mailhouse.proto.imap.server_events import AppendChunk, Request


@dataclass(frozen=True, slots=True)
class Completion:
    """The tagged answer to a request: OK / NO / BAD, a response code without brackets, text."""

    status: str
    text: str
    code: str | None = None


class Responder(Protocol):
    async def send(self, lines: Iterable[bytes]) -> bool:
        """Write untagged responses (without "* " and CRLF) and wait until the socket takes
        more; False when the session is closing (stop producing)."""
        ...


class MailSession(Protocol):
    """One logged-in IMAP session (its selected mailbox, its view, its enabled extensions)."""

    async def handle(self, request: Request, respond: Responder) -> Completion:
        """Perform a command valid in this state; large answers go out through `respond` as
        they are produced (a FETCH over a huge mailbox never sits in memory whole)."""
        ...

    async def append_chunk(self, chunk: AppendChunk) -> None:
        """Spool octets of an APPEND message (the Request for the APPEND follows)."""

    def append_aborted(self, tag: str) -> None:
        """The APPEND was refused after its octets came: drop the spool."""

    async def changes(self) -> list[bytes]:
        """Wait until something changed in what this session watches, then the untagged lines
        that may be sent during IDLE (RFC 9051 §7: EXISTS, EXPUNGE/VANISHED, FETCH FLAGS)."""
        ...

    def pending(self) -> list[bytes]:
        """Untagged lines due now, without waiting (before IDLE's tagged OK)."""
        ...

    def close(self) -> None:
        """The connection is gone: release what the session holds."""


class ImapService(Protocol):
    async def login(self, ip: str, username: str, password: str,
                    authzid: str = "") -> tuple[LoginOutcome, MailSession | None]:
        """Check a login (shared throttle and cache as for SMTP and POP3)."""
        ...
