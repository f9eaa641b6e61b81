"""The selected mailbox of one session, kept in step with the store.

The session learns of other sessions' changes (deliveries, STORE, EXPUNGE, POP3 deletions) from
the store's change feed: `changes_since(known MODSEQ)` gives every message whose MODSEQ went up
and every UID expunged since, from indexes (RFC 7162 §3.1). New messages are the changed ones
above the highest UID the view has heard of (UIDs only grow, RFC 9051 §2.3.1.1). The view
(service/mailbox_view.py) decides when each may be told.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mailhouse.proto.imap.responses import compact
from mailhouse.service.imap.search_updates import LiveResults
from mailhouse.service.mailbox_view import (
    Exists,
    Expunge,
    FlagsChanged,
    MailboxView,
    Untagged,
    Vanished,
)
from mailhouse.store.base import MailboxInfo, Store

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")


def flag_list(flags: frozenset[str] | set[str]) -> bytes:
    """System flags first, then keywords, then "\\*" (as Dovecot lists them)."""
    ordered = sorted(flags, key=lambda f: (f == "\\*", not f.startswith("\\"), f))
    return b"(" + " ".join(ordered).encode("utf-8") + b")"


@dataclass(slots=True)
class Selection:
    """What SELECT/EXAMINE opened."""

    mailbox: MailboxInfo
    view: MailboxView
    read_only: bool
    known_modseq: int  # every change up to this MODSEQ is in the view
    keywords: set[str] = field(default_factory=set)  # announced in FLAGS
    saved: frozenset[int] = frozenset()  # UIDs of SEARCH RETURN (SAVE), RFC 5182
    synced_at: float = 0.0  # time.monotonic() of the last look at the store
    live: LiveResults = field(default_factory=LiveResults)  # RFC 5267 UPDATE contexts

    @property
    def id(self) -> int:
        return self.mailbox.id

    async def sync(self, store: Store) -> bool:
        """Bring the view up to date with the store; False when the mailbox is gone (deleted
        or renamed away by another session)."""
        info = await store.status(self.mailbox.id)
        if info is None:
            return False
        self.mailbox = info
        if info.highest_modseq <= self.known_modseq:
            return True
        changes = await store.changes_since(self.mailbox.id, self.known_modseq)
        view = self.view
        top = view.highest_known_uid
        added = [m.uid for m in changes.changed if m.uid > top]
        if added:
            view.note_added(added)
        for m in changes.changed:
            if m.uid <= top:
                view.note_flags(m.uid, m.flags, m.modseq)
        if changes.expunged:
            view.note_removed(changes.expunged)
            self.live.note_gone(changes.expunged)
        self.live.note_changed(m.uid for m in changes.changed)
        self.known_modseq = info.highest_modseq
        return True

    def own_change(self, before: int, modseq: int) -> None:
        """This session's own change took `modseq`: when nothing else happened in between
        (every change takes exactly one new MODSEQ), the view already holds it."""
        if modseq and self.known_modseq == before and modseq == before + 1:
            self.known_modseq = modseq


def render(untagged: list[Untagged], *, condstore: bool) -> list[bytes]:
    """The view's updates as untagged response lines (without "* " and CRLF)."""
    lines: list[bytes] = []
    for item in untagged:
        if isinstance(item, Exists):
            lines.append(b"%d EXISTS" % item.count)
        elif isinstance(item, Expunge):
            lines.append(b"%d EXPUNGE" % item.seq)
        elif isinstance(item, Vanished):
            lines.append(b"VANISHED " + compact(item.uids).encode("ascii"))
        elif isinstance(item, FlagsChanged):
            # RFC 7162 §3.2.4: UID in unsolicited FETCH once QRESYNC is on (always is harmless);
            # MODSEQ once CONDSTORE is on (§3.1.2).
            line = b"%d FETCH (UID %d FLAGS %s" % (item.seq, item.uid, flag_list(item.flags))
            if condstore:
                line += b" MODSEQ (%d)" % item.modseq
            lines.append(line + b")")
    return lines
