"""One IMAP session's view of its selected mailbox: sequence numbers, and when it may learn of
other sessions' changes (issue 8; RFC 9051 §2.3.1.2, §5.2, §7.5.1, RFC 7162 §3.2.10).

Message sequence numbers are per session: 1..n over the UIDs the *client* knows, in UID order.
The store changes under it (deliveries, other sessions' EXPUNGE and STORE, POP3 deletions), and
the client must hear of each change exactly once, at a point where the RFC allows it, with
numbers that stay in step:

- New messages (EXISTS) may be announced at the end of any command, and during IDLE.
- Removals (EXPUNGE n, or VANISHED uids once QRESYNC is enabled) must not be sent while no
  command is in progress, nor during FETCH, STORE or SEARCH (their UID forms are fine), RFC 9051
  §7.5.1. Until they are sent, the removed messages keep their sequence numbers here: the client
  may still name them. (The store keeps their files for a grace period so a FETCH still works.)
- Flag changes (FETCH FLAGS, with UID and MODSEQ when CONDSTORE/QRESYNC is on) may be sent at
  the end of any command; for messages already reported removed, never.

The view is pure: the session hands it the store's changes (`note_*`) as it learns of them (a
wake-up, or before answering a command) and asks `pending(...)` what to send at each allowed
point. EXPUNGE responses are computed highest sequence number first, so each number is valid
at the moment the client reads it (RFC 9051 §7.5.1: every EXPUNGE renumbers the later ones).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Exists:
    count: int


@dataclass(frozen=True, slots=True)
class Expunge:
    seq: int


@dataclass(frozen=True, slots=True)
class Vanished:
    uids: tuple[int, ...]  # ascending; rendered as a compact UID set


@dataclass(frozen=True, slots=True)
class FlagsChanged:
    seq: int
    uid: int
    flags: frozenset[str]
    modseq: int


Untagged = Exists | Expunge | Vanished | FlagsChanged


class MailboxView:
    """UIDs the client knows, in order, plus what it has not been told yet."""

    def __init__(self, uids: Iterable[int]) -> None:
        self._uids: list[int] = sorted(uids)
        self._removed: set[int] = set()  # known to the client, gone from the store
        self._added: list[int] = []  # in the store, not yet announced (ascending)
        self._flags: dict[int, tuple[frozenset[str], int]] = {}  # uid -> (flags, modseq)

    # --- what the client sees ---------------------------------------------------------------
    @property
    def exists(self) -> int:
        return len(self._uids)

    @property
    def uids(self) -> Sequence[int]:
        return self._uids

    def uid_of(self, seq: int) -> int:
        """The UID of sequence number `seq` (1-based); IndexError outside 1..exists."""
        if not 1 <= seq <= len(self._uids):
            raise IndexError(seq)
        return self._uids[seq - 1]

    def seq_of(self, uid: int) -> int | None:
        """The sequence number of `uid`, or None when the client does not know it."""
        i = bisect.bisect_left(self._uids, uid)
        return i + 1 if i < len(self._uids) and self._uids[i] == uid else None

    def is_removed(self, uid: int) -> bool:
        """Expunged in the store but still numbered for the client (not yet reported)."""
        return uid in self._removed

    def uids_in(self, low: int, high: int) -> list[int]:
        """Known UIDs in [low, high] (a UID range; RFC 9051 §6.4.8: `*` is the highest)."""
        start = bisect.bisect_left(self._uids, low)
        end = bisect.bisect_right(self._uids, high)
        return self._uids[start:end]

    # --- what the store says --------------------------------------------------------------
    @property
    def highest_known_uid(self) -> int:
        """The highest UID this view has heard of (announced or not): new messages are above."""
        candidates = [self._uids[-1] if self._uids else 0, self._added[-1] if self._added else 0]
        return max(candidates)

    def note_added(self, uids: Iterable[int]) -> None:
        """Messages the store now has above `highest_known_uid` (others are ignored: UIDs only
        grow, RFC 9051 §2.3.1.1, and one already known is not new)."""
        top = self.highest_known_uid
        fresh = sorted(uid for uid in set(uids) if uid > top)
        self._added.extend(fresh)

    def note_removed(self, uids: Iterable[int]) -> None:
        for uid in uids:
            if self.seq_of(uid) is not None:
                self._removed.add(uid)
                self._flags.pop(uid, None)
            else:
                i = bisect.bisect_left(self._added, uid)
                if i < len(self._added) and self._added[i] == uid:
                    del self._added[i]  # came and went unannounced: never mention it

    def note_flags(self, uid: int, flags: frozenset[str], modseq: int) -> None:
        """A message's flags changed (by another session, or this one's own STORE when the
        change must be reported back, RFC 9051 §6.4.6)."""
        if uid in self._removed:
            return
        if self.seq_of(uid) is None and uid not in self._added:
            return
        previous = self._flags.get(uid)
        if previous is None or modseq >= previous[1]:
            self._flags[uid] = (flags, modseq)

    # --- what to send, and when ------------------------------------------------------------
    def pending(self, *, expunge_allowed: bool, vanished: bool = False) -> list[Untagged]:
        """The untagged responses due now, and the view moved past them.

        `expunge_allowed`: False during FETCH, STORE and SEARCH (not their UID forms) and while
        no command is in progress. `vanished`: QRESYNC is enabled (RFC 7162 §3.2.10: VANISHED
        replaces EXPUNGE). Order: removals, then new messages, then flag changes, so each
        sequence number is valid when the client reads it."""
        out: list[Untagged] = []
        if expunge_allowed and self._removed:
            out.extend(self._flush_removed(vanished))
        if self._added:
            self._uids.extend(self._added)  # all above every known UID: order holds
            self._added = []
            out.append(Exists(len(self._uids)))
        if self._flags:
            changes = sorted(self._flags.items())
            self._flags = {}
            for uid, (flags, modseq) in changes:
                seq = self.seq_of(uid)
                if seq is not None:
                    out.append(FlagsChanged(seq, uid, flags, modseq))
        return out

    def _flush_removed(self, vanished: bool) -> list[Untagged]:
        removed = sorted(self._removed)
        self._removed = set()
        gone = set(removed)
        # Highest first, each removal's number is its position before any of them: the lower
        # ones do not move. One pass to rebuild, whatever the count (a 100,000-message EXPUNGE).
        positions = [self.seq_of(uid) for uid in reversed(removed)]
        self._uids = [uid for uid in self._uids if uid not in gone]
        if vanished:
            return [Vanished(tuple(removed))]
        return [Expunge(seq) for seq in positions if seq is not None]

    def expunged_by_self(self, uids: Iterable[int], *, vanished: bool) -> list[Untagged]:
        """This session's own EXPUNGE / UID EXPUNGE / MOVE: reported at once, as part of the
        command (RFC 9051 §6.4.3, RFC 6851 §4.3), together with any removals pending."""
        self.note_removed(uids)
        return self._flush_removed(vanished) if self._removed else []
