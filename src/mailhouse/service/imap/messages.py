"""Message commands: FETCH, STORE, COPY/MOVE, EXPUNGE and APPEND (RFC 9051 §6.3.12, §6.4;
RFC 4315 UIDPLUS, RFC 6851 MOVE, RFC 7162 CONDSTORE/QRESYNC, RFC 3502 MULTIAPPEND).

Every command walks its messages in batches (`batches`): one ranged read of rows (and, when
asked for, of stored structures) per batch, its responses sent before the next is read, so a
FETCH over 100,000 messages never holds the mailbox in memory.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, TypeVar

from mailhouse.errors import MailError
from mailhouse.message.searchfields import build_search_fields
from mailhouse.message.structure import MessageStructure, Part
from mailhouse.proto.imap import commands as cmd
from mailhouse.proto.imap.fetch import FetchAttribute, Section
from mailhouse.proto.imap.responses import compact
from mailhouse.proto.imap.sequence import STAR, SequenceSet
from mailhouse.proto.imap.server_events import Request
from mailhouse.service.imap.row_fetch import (
    FLAG_ITEMS,
    ROW_ITEMS,
    HeaderPlan,
    facts,
    flag_renderer,
    row_fetch,
)
from mailhouse.service.imap.selection import SYSTEM_FLAGS, Selection, flag_list
from mailhouse.service.imap_api import Completion, Responder
from mailhouse.service.imap_fetch import (
    UnknownEncoding,
    fetch_response,
    materialize,
)
from mailhouse.store.base import (
    FlagOp,
    MailboxError,
    MessageFlags,
    MessageInfo,
    NoSuchMailbox,
    QuotaExceeded,
    Spool,
)

if TYPE_CHECKING:
    from mailhouse.service.imap.session import ImapSession

_Row = TypeVar("_Row", MessageInfo, MessageFlags)

SEEN = "\\Seen"
DELETED = "\\Deleted"
SEND_BYTES = 256 * 1024  # responses gathered before a write (back-pressure between writes)
_NEEDS_STRUCTURE = frozenset({"ENVELOPE", "BODYSTRUCTURE", "BODY", "BINARY", "BINARY.SIZE",
                              "RFC822", "RFC822.HEADER", "RFC822.TEXT"})
_OPS = {"+": FlagOp.ADD, "-": FlagOp.REMOVE, "": FlagOp.SET}
ROW_BATCH_FACTOR = 10  # rows alone are small: read them in bigger batches


class BadSet(ValueError):
    """A message sequence number beyond the mailbox (RFC 9051 §9 seq-number: BAD)."""


def selected(session: ImapSession) -> Selection:
    selection = session.selection
    assert selection is not None  # the core passes these commands only in SELECTED state
    return selection


def target_uids(selection: Selection, numbers: SequenceSet, uid: bool) -> list[int]:
    """The UIDs a sequence set names, ascending. "$" is the saved search result (RFC 5182 §2:
    UIDs whatever the command). Sequence numbers beyond the mailbox are an error; UIDs that
    do not exist are simply not there (RFC 9051 §6.4.8)."""
    view = selection.view
    if numbers.saved:
        return sorted(u for u in selection.saved if view.seq_of(u) is not None)
    if uid:
        top = view.uids[-1] if view.exists else 0
        out: list[int] = []
        for low, high in numbers.resolve(top):
            out.extend(view.uids_in(low, high))
        return out
    for a, b in numbers.ranges:
        if max(a, b) > view.exists or (view.exists == 0 and STAR in (a, b)):
            raise BadSet("Invalid message sequence number")
    out = []
    for low, high in numbers.resolve(view.exists):
        out.extend(view.uids[low - 1:high])
    return out


async def batches(session: ImapSession, selection: Selection, uids: Sequence[int],
                  factor: int = 1) -> AsyncIterator[list[MessageInfo]]:
    """The rows of these messages, ascending, a bounded batch at a time. A batch spans at most
    4 x `fetch_batch` UIDs, so a sparse set never reads a long range of rows it does not use."""
    async for rows in _batches(uids, session.settings.fetch_batch * factor,
                               partial(session.store.list_messages_in, selection.id)):
        yield rows


async def flag_batches(session: ImapSession, selection: Selection, uids: Sequence[int]
                       ) -> AsyncIterator[list[MessageFlags]]:
    """As `batches`, the UID, flags and MODSEQ of each message alone (FETCH FLAGS)."""
    async for rows in _batches(uids, session.settings.fetch_batch * ROW_BATCH_FACTOR,
                               partial(session.store.list_flags, selection.id)):
        yield rows


async def _batches(uids: Sequence[int], size: int,
                   read: Callable[[int, int], Awaitable[list[_Row]]]) -> AsyncIterator[list[_Row]]:
    wanted = set(uids) if len(uids) < 1_000_000 else None
    i = 0
    while i < len(uids):
        first = uids[i]
        j = i + 1
        while j < len(uids) and j - i < size and uids[j] - first < 4 * size:
            j += 1
        last = uids[j - 1]
        if last - first < 4 * (j - i):
            rows = await read(first, last)
        else:  # sparse (a SEARCH narrowed by the store): each run of near UIDs on its own
            rows = []
            for low, high in _runs(uids, i, j):
                rows += await read(low, high)
        members = wanted if wanted is not None else set(uids[i:j])
        yield [row for row in rows if row.uid in members]
        i = j


def _runs(uids: Sequence[int], i: int, j: int, gap: int = 4) -> list[tuple[int, int]]:
    """uids[i:j] as (first, last) runs whose neighbours are at most `gap` apart: a read of each
    reads at most `gap` rows per wanted one (and a short run is read without a thread hop)."""
    runs = [(uids[i], uids[i])]
    for uid in uids[i + 1:j]:
        if uid - runs[-1][1] <= gap:
            runs[-1] = (runs[-1][0], uid)
        else:
            runs.append((uid, uid))
    return runs


# --- FETCH -------------------------------------------------------------------------------------
async def fetch(session: ImapSession, request: Request, respond: Responder) -> Completion:
    command = request.command
    args = command.args
    assert isinstance(args, cmd.Fetch)
    selection = selected(session)
    try:
        uids = target_uids(selection, args.sequence_set, command.uid)
    except BadSet as exc:
        return Completion("BAD", str(exc))
    attributes = list(args.attributes)
    names = {a.name for a in attributes}
    if args.vanished and not session.qresync:
        return Completion("BAD", "VANISHED needs QRESYNC enabled")  # RFC 7162 §3.2.6
    if args.changed_since is not None or "MODSEQ" in names:
        session.enable_condstore()  # RFC 7162 §3.1
    if args.changed_since is not None and "MODSEQ" not in names:
        attributes.append(FetchAttribute("MODSEQ"))  # RFC 7162 §3.1.4.1
    if args.vanished and args.changed_since is not None and uids:
        gone = [e.uid for e in await session.store.list_expunged(selection.id,
                                                                   args.changed_since)
                if args.sequence_set.contains(e.uid, selection.view.highest_known_uid)]
        if gone:
            await respond.send([b"VANISHED (EARLIER) " + compact(gone).encode("ascii")])
    needs_structure = bool(names & _NEEDS_STRUCTURE)
    store = session.store
    read_only = selection.read_only
    found = 0
    if names <= ROW_ITEMS:
        return await _fetch_rows(session, selection, uids, attributes, args.changed_since,
                                 command.uid, respond)
    header_only = needs_structure and all(
        _top_header(a) for a in attributes if a.name in _NEEDS_STRUCTURE)
    plan = HeaderPlan.of(attributes, command.uid) if header_only else None
    whole_only = needs_structure and all(
        a.name == "RFC822" or (a.name == "BODY" and a.section == _WHOLE)
        for a in attributes if a.name in _NEEDS_STRUCTURE)
    async for rows in batches(session, selection, uids):
        found += len(rows)
        if args.changed_since is not None:
            rows = [row for row in rows if row.modseq > args.changed_since]
        if not rows:
            continue
        heads: dict[int, bytes] = {}
        if header_only:
            # Thunderbird's header download: the header's octets are all it needs, and
            # where the header ends is found in them, without the stored structure.
            heads, structures = await _headers(session, selection, rows)
            cached = heads
        else:
            if whole_only:  # BODY[] and RFC822 are the message's octets: no structure needed
                structures = {r.uid: MessageStructure(Part(0, 0, r.size), _NO_FIELDS, r.size)
                              for r in rows}
            else:
                structures = (await store.structures(selection.id, [r.uid for r in rows])
                              if needs_structure else {})
            cached = await _prefetch(session, rows, structures, attributes)
        lines: list[bytes] = []
        pending = 0
        seen: list[int] = []
        for row in rows:
            seq = selection.view.seq_of(row.uid)
            head = heads.get(row.uid)
            if seq is not None and head is not None and plan is not None:
                line = plan.render(seq, row, head)
            else:
                structure = structures.get(row.uid)
                if structure is None and head is not None:
                    structure = MessageStructure(Part(0, len(head), row.size), _NO_FIELDS,
                                                 row.size)
                if seq is None or (needs_structure and structure is None):
                    found -= 1
                    continue

                async def read(start: int, end: int, row: MessageInfo = row,
                               head: bytes | None = cached.get(row.uid)) -> bytes:
                    if head is not None and end <= len(head):
                        return head[start:end]
                    return await store.read_range(row, start, end)

                try:
                    response = await fetch_response(
                        seq, attributes, facts(row), structure, read,  # type: ignore[arg-type]
                        uid=command.uid, utf8=session.utf8, read_only=read_only)
                    line = await materialize(response, read)
                except UnknownEncoding:
                    await _send_fetched(session, selection, seen, lines, respond)
                    return Completion("NO", "Unknown Content-Transfer-Encoding", "UNKNOWN-CTE")
                except KeyError:  # its file went with an expunge since the row was read
                    found -= 1
                    continue
                if response.sets_seen:
                    seen.append(row.uid)
            lines.append(line)
            pending += len(line)
            if pending >= SEND_BYTES:
                if not await _send_fetched(session, selection, seen, lines, respond):
                    return Completion("NO", "Connection closing")
                lines, pending, seen = [], 0, []
        if not await _send_fetched(session, selection, seen, lines, respond):
            return Completion("NO", "Connection closing")
    if found < len(uids):
        # Messages another session expunged, still numbered here until this session may be
        # told (RFC 9051 §7.5.1): their data is gone. RFC 5530 EXPUNGEISSUED, as Dovecot.
        return Completion("NO", "Some of the requested messages no longer exist",
                          "EXPUNGEISSUED")
    return Completion("OK", f"{'UID ' if command.uid else ''}FETCH completed")


PREFETCH_WHOLE = 64 * 1024  # messages up to this size are read whole for BODY[]/RFC822/TEXT
PREFETCH_BATCH = 8 * 1024 * 1024  # octets read ahead per batch at most


HEADER_PROBE = 8 * 1024  # octets read to find where a header ends
_BLANK_LINE = re.compile(rb"\n\r?\n")
_NO_FIELDS = build_search_fields({})
_WHOLE = Section()  # BODY[]


def _top_header(a: FetchAttribute) -> bool:
    """Whether an item needs only the top-level header (RFC822.HEADER, BODY[HEADER],
    BODY[HEADER.FIELDS (...)] and .NOT)."""
    return a.name == "RFC822.HEADER" or (
        a.name == "BODY" and a.section is not None and not a.section.part
        and (a.section.text or "").startswith("HEADER"))


def header_end(data: bytes) -> int | None:
    """Where the body starts: after the first empty line (CRLF or a bare LF, as
    message/structure.py decides); None when `data` has none."""
    if data.startswith(b"\r\n"):
        return 2
    if data.startswith(b"\n"):
        return 1
    match = _BLANK_LINE.search(data)
    return match.end() if match else None


async def _headers(session: ImapSession, selection: Selection, rows: list[MessageInfo]
                   ) -> tuple[dict[int, bytes], dict[int, MessageStructure]]:
    """Each message's header, through the blank line that ends it, in one store call: all a
    header-only FETCH reads. For a header longer than HEADER_PROBE, its stored structure
    instead."""
    wanted = [(row, 0, min(row.size, HEADER_PROBE)) for row in rows]
    data = await session.store.read_ranges(wanted)
    heads: dict[int, bytes] = {}
    long: list[int] = []
    for row, head in zip(rows, data, strict=True):
        if head is None:
            continue
        end = header_end(head)
        if end is None and row.size > len(head):
            long.append(row.uid)
            continue
        heads[row.uid] = head if end is None else head[:end]
    structures = await session.store.structures(selection.id, long) if long else {}
    return heads, structures


async def _prefetch(session: ImapSession, rows: list[MessageInfo],
                    structures: dict[int, MessageStructure],
                    attributes: Sequence[FetchAttribute]) -> dict[int, bytes]:
    """The leading octets each message's responses will need, read for the whole batch in one
    store call: the header for HEADER/HEADER.FIELDS (Thunderbird's header download), the whole
    message when it is small and a body is asked for. Anything else is read when needed."""
    whole = header = False
    for a in attributes:
        if a.name in ("RFC822", "RFC822.TEXT", "BINARY") or (
                a.name == "BODY" and a.section is not None
                and not (a.section.text or "").startswith("HEADER")):
            whole = True
        elif a.name == "RFC822.HEADER" or (
                a.name == "BODY" and a.section is not None and not a.section.part):
            header = True
    if not whole and not header:
        return {}
    wanted: list[tuple[MessageInfo, int, int]] = []
    total = 0
    for row in rows:
        structure = structures.get(row.uid)
        if whole and row.size <= PREFETCH_WHOLE:
            end = row.size
        elif structure is not None:
            end = structure.root.body_start
        else:
            continue
        if total + end > PREFETCH_BATCH:
            break
        total += end
        wanted.append((row, 0, end))
    found = await session.store.read_ranges(wanted)
    return {row.uid: data for (row, _, _), data in zip(wanted, found, strict=True)
            if data is not None}


async def _fetch_rows(session: ImapSession, selection: Selection, uids: list[int],
                      attributes: list[FetchAttribute], changed_since: int | None, uid: bool,
                      respond: Responder) -> Completion:
    names = [a.name for a in attributes]
    found = 0
    view = selection.view
    if set(names) <= FLAG_ITEMS:  # the flag sync of every client: the rows' flags alone
        render = flag_renderer(names, uid)
        seq_of = view.seq_of
        async for flagged in flag_batches(session, selection, uids):
            found += len(flagged)
            lines = []
            for one in flagged:
                seq = seq_of(one.uid)
                if seq is None:
                    found -= 1
                elif changed_since is None or one.modseq > changed_since:
                    lines.append(render(seq, one))
            if lines and not await respond.send(lines):
                return Completion("NO", "Connection closing")
        return _fetched(found, uids, uid)
    async for rows in batches(session, selection, uids, ROW_BATCH_FACTOR):
        found += len(rows)
        lines = []
        for row in rows:
            seq = view.seq_of(row.uid)
            if seq is None:
                found -= 1
            elif changed_since is None or row.modseq > changed_since:
                lines.append(row_fetch(seq, names, row, uid))
        if lines and not await respond.send(lines):
            return Completion("NO", "Connection closing")
    return _fetched(found, uids, uid)


def _fetched(found: int, uids: list[int], uid: bool) -> Completion:
    if found < len(uids):
        return Completion("NO", "Some of the requested messages no longer exist",
                          "EXPUNGEISSUED")
    return Completion("OK", f"{'UID ' if uid else ''}FETCH completed")


async def _send_fetched(session: ImapSession, selection: Selection, seen: list[int],
                        lines: list[bytes], respond: Responder) -> bool:
    """The implicit \\Seen of these messages (RFC 9051 §6.4.5) in one flag write, stored
    before the responses that report it; then the responses."""
    if seen:
        before = selection.known_modseq
        update = await session.store.store_flags(selection.id, seen, FlagOp.ADD, [SEEN])
        selection.own_change(before, update.modseq)
        selection.live.note_changed(m.uid for m in update.changed)
    return not lines or await respond.send(lines)


# --- STORE -------------------------------------------------------------------------------------
async def store(session: ImapSession, request: Request, respond: Responder) -> Completion:
    command = request.command
    args = command.args
    assert isinstance(args, cmd.Store)
    selection = selected(session)
    if selection.read_only:
        return Completion("NO", "The mailbox is read-only", "READ-ONLY")
    try:
        uids = target_uids(selection, args.sequence_set, command.uid)
    except BadSet as exc:
        return Completion("BAD", str(exc))
    if args.unchanged_since is not None:
        session.enable_condstore()
    new_keywords = {f for f in args.flags if not f.startswith("\\")} - selection.keywords
    if new_keywords:
        selection.keywords |= new_keywords
        everything = set(SYSTEM_FLAGS) | selection.keywords
        await respond.send([b"FLAGS " + flag_list(everything),
                            b"OK [PERMANENTFLAGS " + flag_list(everything | {"\\*"})
                            + b"] Flags permitted"])
    failed: list[int] = []
    condstore = session.condstore
    async for rows in batches(session, selection, uids):
        if not rows:
            continue
        batch = [r.uid for r in rows]
        before = selection.known_modseq
        try:
            update = await session.store.store_flags(
                selection.id, batch, _OPS[args.mode], args.flags, args.unchanged_since)
        except ValueError:
            return Completion("BAD", "Invalid flag")
        selection.own_change(before, update.modseq)
        selection.live.note_changed(m.uid for m in update.changed)
        failed.extend(update.failed)
        lines: list[bytes] = []
        if args.silent:
            if condstore:  # RFC 7162 §3.1.3: MODSEQ of what changed, even when silent
                for m in update.changed:
                    seq = selection.view.seq_of(m.uid)
                    if seq is not None:
                        lines.append(b"%d FETCH (UID %d MODSEQ (%d))" % (seq, m.uid, m.modseq))
        else:
            refused = set(update.failed)
            current = await session.store.list_flags(selection.id, batch[0], batch[-1])
            members = set(batch)
            for m in current:
                seq = selection.view.seq_of(m.uid)
                if seq is None or m.uid not in members or m.uid in refused:
                    continue
                line = b"%d FETCH (" % seq
                if command.uid or condstore:
                    line += b"UID %d " % m.uid
                line += b"FLAGS " + flag_list(m.flags)
                if condstore:
                    line += b" MODSEQ (%d)" % m.modseq
                lines.append(line + b")")
        if lines and not await respond.send(lines):
            return Completion("NO", "Connection closing")
    if failed:
        view = selection.view
        numbers = failed if command.uid else [view.seq_of(u) or 0 for u in failed]
        return Completion("OK", "Conditional STORE failed for some messages",
                          "MODIFIED " + compact(n for n in numbers if n))
    return Completion("OK", f"{'UID ' if command.uid else ''}STORE completed")


# --- COPY / MOVE -------------------------------------------------------------------------------
async def copy(session: ImapSession, request: Request, respond: Responder) -> Completion:
    command = request.command
    args = command.args
    assert isinstance(args, cmd.Copy)
    selection = selected(session)
    move = command.name == "MOVE"
    if move and selection.read_only:
        return Completion("NO", "The mailbox is read-only", "READ-ONLY")
    try:
        uids = target_uids(selection, args.sequence_set, command.uid)
    except BadSet as exc:
        return Completion("BAD", str(exc))
    target = await session.store.get_mailbox(session.account.id, args.mailbox)
    if target is None:
        return Completion("NO", "No such mailbox", "TRYCREATE")  # RFC 9051 §6.4.7
    name = command.name
    if not uids:
        return Completion("OK", f"{name} completed (no messages)")
    try:
        if move:
            result = await session.store.move_messages(selection.id, uids, target.id)
        else:
            result = await session.store.copy_messages(selection.id, uids, target.id)
    except QuotaExceeded:
        return Completion("NO", "Quota exceeded", "OVERQUOTA")  # RFC 9208 §4.3.1
    except NoSuchMailbox:
        return Completion("NO", "No such mailbox", "TRYCREATE")
    except MailboxError:
        return Completion("NO", f"{name} is not allowed here", "CANNOT")
    code = None
    if result.uids:
        sources = compact(s for s, _ in result.uids)
        targets = compact(d for _, d in result.uids)
        code = f"COPYUID {result.uidvalidity} {sources} {targets}"
    if not move:
        if target.id == selection.id:
            await session.refresh(respond, expunge_allowed=True)
        return Completion("OK", "COPY completed", code)
    # RFC 6851 §4.3: COPYUID in an untagged OK before the expunges, then the tagged OK.
    lines = [b"OK [" + code.encode("ascii") + b"] Moved"] if code else []
    moved = [s for s, _ in result.uids]
    lines += session.removed_by_self(selection, moved)
    if lines:
        await respond.send(lines)
    if target.id == selection.id:
        await session.refresh(respond, expunge_allowed=True)
    return Completion("OK", "MOVE completed")


# --- EXPUNGE -----------------------------------------------------------------------------------
async def expunge(session: ImapSession, request: Request, respond: Responder) -> Completion:
    command = request.command
    selection = selected(session)
    if selection.read_only:
        return Completion("NO", "The mailbox is read-only", "READ-ONLY")
    within: set[int] | None = None
    if isinstance(command.args, cmd.Expunge):  # UID EXPUNGE (RFC 4315 §2.1)
        within = set(target_uids(selection, command.args.sequence_set, True))
    deleted = [f.uid for f in await session.store.list_flags(selection.id)
               if DELETED in f.flags and selection.view.seq_of(f.uid) is not None
               and (within is None or f.uid in within)]
    if deleted:
        await session.store.expunge(selection.id, deleted)
        lines = session.removed_by_self(selection, deleted)
        await respond.send(lines)
    return Completion("OK", f"{'UID ' if command.uid else ''}EXPUNGE completed")


# --- APPEND ------------------------------------------------------------------------------------
async def append(session: ImapSession, request: Request, respond: Responder) -> Completion:
    command = request.command
    args = command.args
    assert isinstance(args, cmd.Append)
    appends = session.appends
    try:
        return await _append(session, command.tag, args, respond)
    finally:
        await appends.finish(command.tag)


async def _append(session: ImapSession, tag: str, args: cmd.Append,
                  respond: Responder) -> Completion:
    appends = session.appends
    problem = appends.outcome(tag)
    if problem == "TOOBIG":
        return Completion("NO", "Message too large", "TOOBIG")  # RFC 4469 §? / RFC 7889
    if problem is not None:
        return Completion("NO", "Could not store the message, try again later", "UNAVAILABLE")
    target = await session.store.get_mailbox(session.account.id, args.mailbox)
    if target is None:
        return Completion("NO", "No such mailbox", "TRYCREATE")  # RFC 9051 §6.3.12
    if not session.utf8 and any(appends.eight_bit_header(tag, m.index) for m in args.messages):
        # RFC 6855 §4: with UTF8=ACCEPT announced, a session that did not enable it (nor
        # IMAP4rev2, RFC 9051 §6.3.12) may not store 8-bit header fields (docs/decisions.md).
        return Completion("NO", "8-bit header fields need ENABLE UTF8=ACCEPT", "CANNOT")
    spools: list[Spool] = []
    for message in args.messages:
        spool = appends.take(tag, message.index)
        if spool is None or spool.size == 0:
            return Completion("NO", "Empty message refused", "CANNOT")
        spools.append(spool)
    uids: list[int] = []
    uidvalidity = target.uidvalidity
    try:
        for message, spool in zip(args.messages, spools, strict=True):
            when = message.internal_date
            zone = 0
            stamp: float | None = None
            if when is not None:
                stamp = when.timestamp()
                offset = when.utcoffset()
                zone = int(offset.total_seconds() // 60) if offset is not None else 0
            uidvalidity, uid = await session.store.append(target.id, spool, message.flags,
                                                          stamp, zone)
            uids.append(uid)
    except BaseException as exc:
        await _undo(session, target.id, uids)  # MULTIAPPEND is all or nothing (RFC 3502 §6.3.11)
        for spool in spools[len(uids) + 1:]:
            await spool.abort()
        if isinstance(exc, QuotaExceeded):
            return Completion("NO", "Quota exceeded", "OVERQUOTA")  # RFC 9208 §4.3.1
        if isinstance(exc, NoSuchMailbox):
            return Completion("NO", "No such mailbox", "TRYCREATE")
        if isinstance(exc, ValueError):
            return Completion("BAD", "Invalid flag")
        if isinstance(exc, MailError):
            raise
        raise
    if session.selection is not None and session.selection.id == target.id:
        await session.refresh(respond, expunge_allowed=True)  # EXISTS now (RFC 9051 §6.3.12)
    return Completion("OK", "APPEND completed",
                      f"APPENDUID {uidvalidity} {compact(uids)}")  # RFC 4315 §3


async def _undo(session: ImapSession, mailbox_id: int, uids: list[int]) -> None:
    if uids:
        with contextlib.suppress(MailError):
            await session.store.expunge(mailbox_id, uids)
