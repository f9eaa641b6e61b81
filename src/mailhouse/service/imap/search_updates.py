"""Live SEARCH and SORT results: the UPDATE return option of RFC 5267 §4.3 (CONTEXT=SEARCH,
CONTEXT=SORT).

A live result is the list the client holds (UIDs here, in its order: mailbox order for SEARCH,
sort order for SORT) and what it has not been told yet. Only the messages that changed are
tested again (`searching.refresh_live`, after the store's changes are learned); this module
keeps the lists and says the differences as ESEARCH ADDTO / REMOVEFROM data items:

- removals go out before the view's own untagged responses, so a REMOVEFROM naming a message
  by sequence number always precedes that message's EXPUNGE (RFC 5267 §4.3.4);
- additions go out after them, so an ADDTO follows the EXISTS that numbered its messages
  (§4.3.3).

SEARCH results give position 0 (the client keeps mailbox order, §4.3.3); SORT results give the
position in sort order, which never changes for a message: every sort key (RFC 5256, RFC 5957)
is fixed at delivery, so a flag change can only add or remove a message.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mailhouse.proto.imap import search as sk
from mailhouse.proto.imap.responses import compact, quoted
from mailhouse.service.mailbox_view import MailboxView


class Order:
    """A message's place in a SORT result: the criteria's values, each reversed or not, and
    the UID last (RFC 5256 §3: ties in mailbox order), as `imap_sort.sort_messages` orders."""

    __slots__ = ("reverse", "uid", "values")

    def __init__(self, values: tuple[Any, ...], reverse: tuple[bool, ...], uid: int) -> None:
        self.values = values
        self.reverse = reverse
        self.uid = uid

    def __lt__(self, other: Order) -> bool:
        for a, b, descending in zip(self.values, other.values, self.reverse, strict=True):
            if a != b:
                return bool(a > b) if descending else bool(a < b)
        return self.uid < other.uid


def ordered_set(numbers: Sequence[int]) -> str:
    """A sequence-set that keeps the order given: only ascending runs become ranges (RFC 5267
    §3.2: a range always expands in increasing order)."""
    parts: list[str] = []
    i = 0
    while i < len(numbers):
        j = i
        while j + 1 < len(numbers) and numbers[j + 1] == numbers[j] + 1:
            j += 1
        parts.append(str(numbers[i]) if i == j else f"{numbers[i]}:{numbers[j]}")
        i = j + 1
    return ",".join(parts)


@dataclass(slots=True)
class LiveResult:
    """One searching command's live result, named by its tag."""

    tag: str
    uid: bool  # UID SEARCH / UID SORT: updates name UIDs, else sequence numbers
    key: sk.SearchKey  # the search program, sequence numbers and "$" already turned into UIDs
    charset: str
    criteria: tuple[tuple[str, bool], ...] | None  # None for SEARCH
    members: list[int]  # UIDs the client holds, in its order
    orders: list[Order] = field(default_factory=list)  # SORT: each member's place
    held: set[int] = field(default_factory=set)
    adds: dict[int, Order | None] = field(default_factory=dict)  # matches not yet told
    drops: set[int] = field(default_factory=set)  # members to take out, not yet told

    def __post_init__(self) -> None:
        self.held = set(self.members)

    @property
    def sorted(self) -> bool:
        return self.criteria is not None

    def order(self, uid: int, values: tuple[Any, ...]) -> Order:
        assert self.criteria is not None
        return Order(values, tuple(r for _, r in self.criteria), uid)

    def match(self, uid: int, order: Order | None) -> None:
        if uid in self.held:
            self.drops.discard(uid)
        else:
            self.adds[uid] = order

    def unmatch(self, uid: int) -> None:
        self.adds.pop(uid, None)
        if uid in self.held:
            self.drops.add(uid)

    def _line(self, item: bytes, pairs: list[tuple[int, list[int]]]) -> bytes:
        head = b"ESEARCH (TAG " + quoted(self.tag) + b")" + (b" UID" if self.uid else b"")
        body = b" ".join(
            b"%d " % pos + (ordered_set(nums) if self.sorted else compact(nums)).encode("ascii")
            for pos, nums in pairs)
        return head + b" " + item + b" (" + body + b")"

    def removals(self, view: MailboxView) -> bytes | None:
        """REMOVEFROM for the members to take out, with the numbers the client knows now."""
        if not self.drops:
            return None
        drops, self.drops = self.drops, set()
        pairs: list[tuple[int, list[int]]] = []
        kept: list[int] = []
        kept_orders: list[Order] = []
        for i, uid in enumerate(self.members):
            if uid not in drops:
                kept.append(uid)
                if self.sorted:
                    kept_orders.append(self.orders[i])
                continue
            self.held.discard(uid)
            number = uid if self.uid else view.seq_of(uid)
            if number is None:
                continue  # the client cannot name it any more (cannot happen: removals first)
            pos = len(kept) + 1 if self.sorted else 0
            if pairs and pairs[-1][0] == pos:
                pairs[-1][1].append(number)  # the next one moved into the same place
            else:
                pairs.append((pos, [number]))
        self.members = kept
        self.orders = kept_orders
        return self._line(b"REMOVEFROM", pairs) if pairs else None

    def additions(self, view: MailboxView) -> bytes | None:
        """ADDTO for the new matches the client can number (after the EXISTS that told it)."""
        ready = [uid for uid in self.adds if view.seq_of(uid) is not None]
        if not ready:
            return None
        pairs: list[tuple[int, list[int]]] = []
        if self.sorted:
            placed = sorted(o for uid in ready if (o := self.adds.pop(uid)) is not None)
            for o in placed:
                i = bisect.bisect_left(self.orders, o)
                self.orders.insert(i, o)
                self.members.insert(i, o.uid)
                self.held.add(o.uid)
                number = o.uid if self.uid else view.seq_of(o.uid)
                assert number is not None
                if pairs and pairs[-1][0] + len(pairs[-1][1]) == i + 1:
                    pairs[-1][1].append(number)  # right after the previous insertion
                else:
                    pairs.append((i + 1, [number]))
        else:
            ready.sort()
            for uid in ready:
                del self.adds[uid]
                bisect.insort(self.members, uid)
                self.held.add(uid)
            numbers = ready if self.uid else [view.seq_of(u) or 0 for u in ready]
            pairs.append((0, numbers))
        return self._line(b"ADDTO", pairs)


@dataclass(slots=True)
class LiveResults:
    """The live results of the selected mailbox (they end with it, RFC 5267 §4.3), and the
    messages to test again since the last look."""

    contexts: dict[str, LiveResult] = field(default_factory=dict)
    changed: set[int] = field(default_factory=set)  # UIDs whose flags changed, or new
    notices: list[bytes] = field(default_factory=list)  # untagged NO [NOUPDATE] to send

    def __bool__(self) -> bool:
        return bool(self.contexts or self.notices)

    def note_changed(self, uids: Iterable[int]) -> None:
        if self.contexts:
            self.changed.update(uids)

    def note_gone(self, uids: Iterable[int]) -> None:
        """Expunged: out of every result, whatever its criteria."""
        if not self.contexts:
            return
        for uid in uids:
            self.changed.discard(uid)
            for live in self.contexts.values():
                live.unmatch(uid)

    def refuse(self, tag: str, text: str) -> None:
        """Stop updating `tag` and say so (RFC 5267 §4.3.1 NOUPDATE)."""
        self.contexts.pop(tag, None)
        self.notices.append(b"NO [NOUPDATE " + quoted(tag) + b"] " + text.encode("ascii"))
        if not self.contexts:
            self.changed.clear()

    def removal_lines(self, view: MailboxView) -> list[bytes]:
        lines, self.notices = self.notices, []
        for live in self.contexts.values():
            line = live.removals(view)
            if line is not None:
                lines.append(line)
        return lines

    def addition_lines(self, view: MailboxView) -> list[bytes]:
        lines = []
        for live in self.contexts.values():
            line = live.additions(view)
            if line is not None:
                lines.append(line)
        return lines
