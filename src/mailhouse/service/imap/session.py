"""One logged-in IMAP session: its selected mailbox, its view, what it enabled.

The core (proto/imap/server.py) has already checked that each command is valid in the state;
this class performs it against the store. Untagged updates about other sessions' changes go out
only where RFC 9051 §7.5.1 allows: before a command's own responses (EXISTS and flag changes
always; EXPUNGE except during FETCH, STORE and SEARCH, whose UID forms are fine), during IDLE,
and never while no command is in progress. Live SEARCH/SORT results (RFC 5267, search_updates.py)
are re-tested in the same catch-up step and told around those updates.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from mailhouse import metrics
from mailhouse.errors import MailError
from mailhouse.model import Account
from mailhouse.proto.imap.server_events import AppendChunk, Request
from mailhouse.service.imap import mailboxes, messages, searching
from mailhouse.service.imap.appending import Appends
from mailhouse.service.imap.selection import Selection, render
from mailhouse.service.imap.settings import ImapSettings
from mailhouse.service.imap_api import Completion, Responder
from mailhouse.store.base import Store
from mailhouse.store.wakeup import Watch

log = logging.getLogger("mailhouse.imap")

# Commands during which EXPUNGE must not be sent (RFC 9051 §7.5.1); their UID forms may.
_NO_EXPUNGE = frozenset({"FETCH", "STORE", "SEARCH"})
IDLE_POLL = 30.0  # seconds: look at the store during IDLE even without a wake-up
MAILBOX_GONE = b"OK [CLOSED] The mailbox was deleted"
FULL_SYNC_INTERVAL = 2.0  # seconds: look at the store at least this often between commands
POLL_WITHOUT_WAKEUPS = 1.0  # seconds, when no wake-up channel exists (tests, one process)

Handler = Callable[["ImapSession", Request, Responder], Awaitable[Completion]]


class ImapSession:
    def __init__(self, store: Store, account: Account, settings: ImapSettings,
                 watch: Watch | None) -> None:
        self.store = store
        self.account = account
        self.settings = settings
        self._watch = watch
        self.selection: Selection | None = None
        self.enabled: frozenset[str] = frozenset()
        self.condstore = False  # RFC 7162 §3.1: a CONDSTORE enabling command was seen
        self.appends = Appends(store, settings)
        self._closed = False
        self._woken: set[int] = set()  # mailboxes a wake-up named since this session looked

    # --- what the session has turned on ------------------------------------------------------
    @property
    def utf8(self) -> bool:
        """Mailbox names and quoted strings in UTF-8 (RFC 9051 §5.1, RFC 6855)."""
        return bool(self.enabled & {"IMAP4REV2", "UTF8=ACCEPT"})

    @property
    def rev2(self) -> bool:
        return "IMAP4REV2" in self.enabled

    @property
    def qresync(self) -> bool:
        return "QRESYNC" in self.enabled

    def enable_condstore(self) -> None:
        self.condstore = True

    # --- the seam (service/imap_api.py) ---------------------------------------------------------
    async def handle(self, request: Request, respond: Responder) -> Completion:
        self.enabled = request.enabled
        if "CONDSTORE" in request.enabled or "QRESYNC" in request.enabled:
            self.condstore = True
        command = request.command
        metrics.get().imap_commands.labels(command.name).inc()  # a name the grammar knows
        started = time.perf_counter()
        try:
            return await self._handle(request, respond)
        finally:
            if command.name != "IDLE":  # it lasts as long as the client waits
                metrics.get().imap_command_seconds.labels(command.name).observe(
                    time.perf_counter() - started)

    async def _handle(self, request: Request, respond: Responder) -> Completion:
        command = request.command
        handler = _HANDLERS.get(command.name)
        if handler is None:
            return Completion("BAD", f"{command.name} is not supported")
        selected = self.selection is not None and command.name not in ("SELECT", "EXAMINE")
        if selected and not await self.refresh(respond, expunge_allowed=False):
            return Completion("NO", "The selected mailbox was deleted", "CLOSED")
        try:
            done = await handler(self, request, respond)
        except MailError:
            log.warning("event=imap.store_failed account=%s command=%s", self.account.address,
                        command.name, exc_info=True)
            return Completion("NO", "Temporary server failure, try again later", "UNAVAILABLE")
        if self.selection is not None and self.selection.live.changed:
            await searching.refresh_live(self, self.selection)  # this command's own changes
        # Removals go out only after the command has used the numbers the client sent it
        # with, and never at the end of FETCH, STORE or SEARCH (RFC 9051 §7.5.1).
        if selected and self.selection is not None:
            if command.uid or command.name not in _NO_EXPUNGE:
                lines = self.updates(expunge_allowed=True)
            else:  # live results may still be told (RFC 5267 §4.3.2), numbered as now
                live, view = self.selection.live, self.selection.view
                lines = live.removal_lines(view) + live.addition_lines(view) if live else []
            if lines:
                await respond.send(lines)
        return done

    def _stale(self, selection: Selection) -> bool:
        """Whether the store may hold changes the view lacks. With wake-ups, only when one
        came for this mailbox (or the last look is older than FULL_SYNC_INTERVAL, in case a
        datagram was dropped under overload): most commands then skip the store round trip."""
        watch = self._watch
        now = time.monotonic()
        if watch is None:
            selection.synced_at = now
            return True
        changed = watch.poll()
        if changed:
            self._woken.update(changed)
        if selection.id in self._woken or now - selection.synced_at >= FULL_SYNC_INTERVAL:
            self._woken.discard(selection.id)
            selection.synced_at = now
            return True
        return False

    async def _catch_up(self) -> bool:
        """Sync the selected mailbox's view if it may be stale; False (and deselected) when
        the mailbox is gone."""
        selection = self.selection
        if selection is None:
            return True
        if self._stale(selection) and not await selection.sync(self.store):
            self.selection = None
            return False
        if selection.live.changed:
            await searching.refresh_live(self, selection)  # RFC 5267 §4.3 live results
        return True

    async def refresh(self, respond: Responder, *, expunge_allowed: bool) -> bool:
        """Learn the store's changes and send what may be sent now. False: the mailbox is
        gone; the session is deselected and told BYE-free (a later command gets NO)."""
        if not await self._catch_up():
            await respond.send([MAILBOX_GONE])
            return False
        lines = self.updates(expunge_allowed=expunge_allowed)
        if lines:
            await respond.send(lines)
        return True

    def updates(self, *, expunge_allowed: bool) -> list[bytes]:
        selection = self.selection
        if selection is None:
            return []
        view, live = selection.view, selection.live
        # RFC 5267 §4.3.3-4.3.4: REMOVEFROM before the EXPUNGE, ADDTO after the EXISTS.
        lines = live.removal_lines(view) if live else []
        items = view.pending(expunge_allowed=expunge_allowed, vanished=self.qresync)
        lines += render(items, condstore=self.condstore)
        if live:
            lines += live.addition_lines(view)
        return lines

    def removed_by_self(self, selection: Selection, uids: list[int]) -> list[bytes]:
        """This session's own EXPUNGE or MOVE, told at once (RFC 9051 §6.4.3, RFC 6851 §4.3),
        each live result's REMOVEFROM first (RFC 5267 §4.3.4)."""
        selection.live.note_gone(uids)
        lines = selection.live.removal_lines(selection.view) if selection.live else []
        items = selection.view.expunged_by_self(uids, vanished=self.qresync)
        return lines + render(items, condstore=self.condstore)

    async def append_chunk(self, chunk: AppendChunk) -> None:
        await self.appends.chunk(chunk)

    def append_aborted(self, tag: str) -> None:
        self.appends.abort(tag)

    async def changes(self) -> list[bytes]:
        """During IDLE: wait for a wake-up (or poll), then what may be told (RFC 2177)."""
        watch = self._watch
        if watch is not None:
            self._woken.update(await watch.wait(IDLE_POLL))
        else:
            await asyncio.sleep(POLL_WITHOUT_WAKEUPS)
        if not await self._catch_up():
            return [MAILBOX_GONE]
        return self.updates(expunge_allowed=True)

    def pending(self) -> list[bytes]:
        return self.updates(expunge_allowed=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.appends.close()
        if self._watch is not None:
            self._watch.close()
            self._watch = None


async def _noop(session: ImapSession, request: Request, respond: Responder) -> Completion:
    # The refresh before every command already reported the changes (RFC 9051 §6.1.2, §6.4.1).
    return Completion("OK", f"{request.command.name} completed")


async def _unselect(session: ImapSession, request: Request, respond: Responder) -> Completion:
    session.selection = None
    return Completion("OK", "Returned to authenticated state")


async def _close(session: ImapSession, request: Request, respond: Responder) -> Completion:
    # RFC 9051 §6.4.1: remove \Deleted messages silently (not from a read-only mailbox).
    selection = session.selection
    session.selection = None
    if selection is not None and not selection.read_only:
        deleted = [f.uid for f in await session.store.list_flags(selection.id)
                   if "\\Deleted" in f.flags]
        if deleted:
            await session.store.expunge(selection.id, deleted)
    return Completion("OK", "Closed")


_HANDLERS: dict[str, Handler] = {
    "NOOP": _noop,
    "CHECK": _noop,
    "UNSELECT": _unselect,
    "CLOSE": _close,
    "SELECT": mailboxes.select,
    "EXAMINE": mailboxes.select,
    "CREATE": mailboxes.create,
    "DELETE": mailboxes.delete,
    "RENAME": mailboxes.rename,
    "SUBSCRIBE": mailboxes.subscribe,
    "UNSUBSCRIBE": mailboxes.unsubscribe,
    "LIST": mailboxes.list_mailboxes,
    "LSUB": mailboxes.list_mailboxes,
    "STATUS": mailboxes.status,
    "GETQUOTA": mailboxes.get_quota,
    "GETQUOTAROOT": mailboxes.get_quota_root,
    "SETQUOTA": mailboxes.set_quota,
    "APPEND": messages.append,
    "FETCH": messages.fetch,
    "STORE": messages.store,
    "COPY": messages.copy,
    "MOVE": messages.copy,
    "EXPUNGE": messages.expunge,
    "SEARCH": searching.search,
    "SORT": searching.sort,
    "THREAD": searching.thread,
    "CANCELUPDATE": searching.cancel_update,
}
