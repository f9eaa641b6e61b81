"""SEARCH, SORT and THREAD over the selected mailbox (RFC 9051 §6.4.4, RFC 4731 ESEARCH,
RFC 5182 SEARCHRES, RFC 5256 SORT/THREAD, RFC 5267 ESORT, PARTIAL and UPDATE, RFC 7162 §3.1.5
MODSEQ). Live results (UPDATE) are kept in search_updates.py; `refresh_live` re-tests the
messages that changed.

Candidates are read a batch at a time (rows, and the stored search fields only when a key
needs them); only HEADER, BODY and TEXT keys read message files, and at most
`search_content_limit` of them per command.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from mailhouse.message.searchfields import SearchFields, build_search_fields
from mailhouse.proto.imap import commands as cmd
from mailhouse.proto.imap import search as sk
from mailhouse.proto.imap.responses import compact, quoted
from mailhouse.proto.imap.sequence import SequenceSet
from mailhouse.proto.imap.server_events import Request
from mailhouse.service.imap.messages import ROW_BATCH_FACTOR, batches, selected
from mailhouse.service.imap.row_fetch import internal_date
from mailhouse.service.imap.search_updates import LiveResult, ordered_set
from mailhouse.service.imap.selection import Selection
from mailhouse.service.imap_api import Completion, Responder
from mailhouse.service.imap_search import (
    Candidate,
    Context,
    SearchError,
    any_key,
    compile_key,
    content_from,
    needs_content,
    required_needles,
)
from mailhouse.service.imap_sort import (
    ordered_subject,
    references,
    render_threads,
    sort_messages,
    sort_values,
)

if TYPE_CHECKING:
    from mailhouse.service.imap.session import ImapSession

_EMPTY_FIELDS: SearchFields = build_search_fields({})
_UNDATED = datetime(1970, 1, 1, tzinfo=UTC)  # the internal date of a candidate no key compares
BATCH_READ_MAX = 256 * 1024  # messages a content search reads in one store call per batch
BATCH_READ_TOTAL = 8 * 1024 * 1024  # ... and at most this much per batch


class TooMuchContent(Exception):
    """A body/text search would read more messages than `search_content_limit`."""


def needs_fields(key: sk.SearchKey) -> bool:
    """Keys answered from the stored search fields (address and subject strings, Date)."""
    return any_key(key, lambda k: (isinstance(k, sk.TextKey) and k.field not in ("BODY", "TEXT"))
                   or (isinstance(k, sk.DateKey) and k.sent))


def uses_modseq(key: sk.SearchKey) -> bool:
    return any_key(key, lambda k: isinstance(k, sk.ModSeqKey))


async def matching(session: ImapSession, selection: Selection, key: sk.SearchKey,
                   charset: str, *, fields: bool = False,
                   uids: Sequence[int] | None = None) -> AsyncIterator[Candidate]:
    """The messages (known to the client) that match, in mailbox order. `uids` (ascending):
    test only these, announced or not (a live result's changes; sequence number 0 for a
    message not announced yet)."""
    view = selection.view
    context = Context(view.exists, view.highest_known_uid, datetime.now(UTC), charset,
                      selection.saved)
    predicate = compile_key(key, context)  # SearchError for an unknown charset
    content = needs_content(key)
    with_fields = fields or needs_fields(key) or content
    # The internal date as a datetime costs more than the rest of a candidate: only for the
    # keys that compare it, and for SORT and THREAD (`fields`), which order by it.
    dated = fields or any_key(key, lambda k: isinstance(k, sk.DateKey | sk.AgeKey))
    store = session.store
    read = 0
    limit = session.settings.search_content_limit
    factor = 1 if with_fields else ROW_BATCH_FACTOR
    targets = list(view.uids) if uids is None else uids
    needles = required_needles(key, charset)
    narrowed = await store.search_candidates(selection.id, needles) if needles else None
    if narrowed is not None:
        targets = [u for u in targets if u in narrowed]
    async for rows in batches(session, selection, targets, factor):
        batch = [r.uid for r in rows]
        # Content keys need the whole structure (text parts); others only the search fields.
        structures = await store.structures(selection.id, batch) if content else {}
        searchable = (await store.search_fields(selection.id, batch)
                      if with_fields and not content else
                      {uid: s.search for uid, s in structures.items()})
        bodies: dict[int, bytes] = {}
        if content:  # small messages of the batch in one store call
            small, total = [], 0
            for r in rows:
                if r.size <= BATCH_READ_MAX and total + r.size <= BATCH_READ_TOTAL:
                    small.append((r, 0, r.size))
                    total += r.size
            for (r, _, _), data in zip(small, await store.read_ranges(small), strict=True):
                if data is not None:
                    bodies[r.uid] = data
        for row in rows:
            seq = view.seq_of(row.uid)
            if seq is None:
                if uids is None:
                    continue
                seq = 0
            structure = structures.get(row.uid)
            searched = searchable.get(row.uid)
            if with_fields and searched is None:
                continue  # expunged meanwhile
            candidate = Candidate(seq, row.uid, row.flags,
                                  internal_date(row) if dated else _UNDATED, row.size,
                                  row.modseq, searched if searched is not None else _EMPTY_FIELDS)
            found = None
            if content:
                read += 1
                if read > limit:
                    raise TooMuchContent
                data = bodies.get(row.uid)
                if data is None:
                    try:
                        data = await store.read_range(row, 0, row.size)
                    except KeyError:  # expunged meanwhile
                        continue
                assert structure is not None
                found = content_from(structure, data)
            if predicate(candidate, found):
                yield candidate


def _refusal(exc: Exception) -> Completion:
    if isinstance(exc, TooMuchContent):
        return Completion("NO", "Search would read too many messages; narrow it", "LIMIT")
    assert isinstance(exc, SearchError)
    if exc.code == "BADCHARSET":
        return Completion("NO", str(exc), "BADCHARSET (UTF-8 US-ASCII)")  # RFC 9051 §6.4.4
    return Completion("NO", str(exc), exc.code)


async def search(session: ImapSession, request: Request, respond: Responder) -> Completion:
    command = request.command
    args = command.args
    assert isinstance(args, cmd.Search)
    returns = args.returns
    if returns is None and session.rev2:
        returns = cmd.SearchReturn(())  # RFC 9051 §6.4.4: ESEARCH replaces SEARCH
    if returns is not None:
        return await _extended(session, request, respond, args.key, args.charset or "UTF-8",
                               returns, None)
    selection = selected(session)
    modseq = uses_modseq(args.key)
    if modseq:
        session.enable_condstore()
    numbers: list[int] = []
    highest = 0
    try:
        # Only the numbers are kept: a SEARCH over a huge mailbox holds ints, not messages.
        async for c in matching(session, selection, args.key, args.charset or "UTF-8"):
            numbers.append(c.uid if command.uid else c.seq)
            highest = max(highest, c.modseq)
    except (SearchError, TooMuchContent) as exc:
        return _refusal(exc)
    line = b"SEARCH" + b"".join(b" %d" % n for n in numbers)
    if modseq and numbers:
        line += b" (MODSEQ %d)" % highest  # RFC 7162 §3.1.5
    await respond.send([line])
    return Completion("OK", "SEARCH completed")


async def sort(session: ImapSession, request: Request, respond: Responder) -> Completion:
    command = request.command
    args = command.args
    assert isinstance(args, cmd.Sort)
    if args.returns is not None:  # RFC 5267 §3 ESORT
        return await _extended(session, request, respond, args.key, args.charset,
                               args.returns, args.criteria)
    selection = selected(session)
    try:
        found = [c async for c in matching(session, selection, args.key, args.charset,
                                           fields=True)]
    except (SearchError, TooMuchContent) as exc:
        return _refusal(exc)
    ordered = sort_messages(found, args.criteria)
    await respond.send([b"SORT" + b"".join(
        b" %d" % (c.uid if command.uid else c.seq) for c in ordered)])
    return Completion("OK", "SORT completed")


_RESULTS = frozenset({"MIN", "MAX", "ALL", "COUNT"})  # options that return data (with PARTIAL)


def _check_returns(returns: cmd.SearchReturn) -> tuple[set[str], str | None]:
    """The RETURN options, upper-cased, or the reason for a BAD."""
    options = {o.upper() for o in returns.options}
    if not options - {"CONTEXT"} and returns.partial is None:
        options.add("ALL")  # RETURN () means ALL (RFC 4731 §3.1, RFC 5267 §3.3); CONTEXT is
        # only a hint (§4.2)
    unsupported = options - _RESULTS - {"SAVE", "CONTEXT", "UPDATE"}
    if unsupported:
        return options, "Unsupported RETURN option " + sorted(unsupported)[0]
    if len(returns.options) != len(set(returns.options)):
        return options, "A RETURN option is repeated"  # RFC 5267 §4.4: one ALL at most
    if returns.partial is not None:
        if min(returns.partial) < 0:  # RFC 5267 §5: partial-range = nz-number ":" nz-number
            return options, "PARTIAL takes a range of positive numbers"
        if "ALL" in options:  # RFC 5267 §4.4
            return options, "PARTIAL and ALL cannot be used together"
    return options, None


async def _extended(session: ImapSession, request: Request, respond: Responder,
                    key: sk.SearchKey, charset: str, returns: cmd.SearchReturn,
                    criteria: tuple[tuple[str, bool], ...] | None) -> Completion:
    """SEARCH or SORT with RETURN: one ESEARCH response (RFC 4731, RFC 5267 §3 and §4)."""
    command = request.command
    name = command.name
    selection = selected(session)
    options, bad = _check_returns(returns)
    if bad is not None:
        return Completion("BAD", bad)
    update = "UPDATE" in options
    if update and command.tag in selection.live.contexts:
        return Completion("BAD", "Tag reuse")  # RFC 5267 §4.3: SHALL be BAD
    # Before SAVE replaces "$": the live program keeps the "$" this command searched.
    frozen = _frozen(key, selection) if update else key
    modseq = uses_modseq(key)
    if modseq:
        session.enable_condstore()
    found: list[Candidate] = []
    uids: list[int] = []
    highest = 0
    try:
        if criteria is None:
            async for c in matching(session, selection, key, charset):
                uids.append(c.uid)
                highest = max(highest, c.modseq)
        else:
            found = sort_messages([c async for c in matching(
                session, selection, key, charset, fields=True)], criteria)
            uids = [c.uid for c in found]
            highest = max((c.modseq for c in found), default=0)
    except (SearchError, TooMuchContent) as exc:
        if "SAVE" in options:
            selection.saved = frozenset()  # RFC 5182 §2.1: a failed SEARCH empties $
        return _refusal(exc)
    view = selection.view
    numbers = uids if command.uid else [view.seq_of(u) or 0 for u in uids]
    lines: list[bytes] = []
    if "SAVE" in options:
        selection.saved = frozenset(_saved(uids, options, returns, criteria is not None))
    if options - {"SAVE", "CONTEXT"} or returns.partial is not None:
        lines.append(_esearch(command.tag, command.uid, numbers, options, returns.partial,
                              sorted_result=criteria is not None,
                              modseq=highest if modseq and numbers else 0))
    done = f"{name} completed"
    if update:
        refusal = _update_refusal(session, key)
        if refusal is None:
            selection.live.contexts[command.tag] = _live(
                command.tag, command.uid, frozen, charset, criteria, found, uids)
            done += ", will notify"
        else:
            lines.append(b"NO [NOUPDATE " + quoted(command.tag) + b"] " + refusal)
            done += ", will not notify"
    if lines:
        await respond.send(lines)
    return Completion("OK", done)


def _saved(uids: list[int], options: set[str], returns: cmd.SearchReturn,
           sorted_result: bool) -> list[int]:
    """What SAVE keeps (RFC 5182 §2.4): only the MIN and/or MAX message when those are the
    only result options, else every match. For SORT, MIN and MAX are the first and last in
    sort order (RFC 5267 §3.1)."""
    wanted = options & _RESULTS
    if not uids or returns.partial is not None or not wanted or not wanted <= {"MIN", "MAX"}:
        return uids
    first, last = (uids[0], uids[-1]) if sorted_result else (min(uids), max(uids))
    return [u for u, option in ((first, "MIN"), (last, "MAX")) if option in wanted]


def _esearch(tag: str, uid: bool, numbers: list[int], options: set[str],
             partial: tuple[int, int] | None, *, sorted_result: bool, modseq: int) -> bytes:
    def render(some: list[int]) -> bytes:
        return (ordered_set(some) if sorted_result else compact(some)).encode("ascii")

    line = b"ESEARCH (TAG " + quoted(tag) + b")"
    if uid:
        line += b" UID"
    if numbers:
        if "MIN" in options:  # for SORT the first in sort order (RFC 5267 §3.1)
            line += b" MIN %d" % (numbers[0] if sorted_result else min(numbers))
        if "MAX" in options:
            line += b" MAX %d" % (numbers[-1] if sorted_result else max(numbers))
        if "ALL" in options:
            line += b" ALL " + render(numbers)
    if "COUNT" in options:
        line += b" COUNT %d" % len(numbers)
    if partial is not None:  # RFC 5267 §4.4: the range as given, then what is in it, or NIL
        low, high = sorted(partial)
        window = numbers[low - 1:high]
        line += b" PARTIAL (%d:%d " % partial + (render(window) if window else b"NIL") + b")"
    if modseq:
        line += b" MODSEQ %d" % modseq  # RFC 7162 §3.1.5 / RFC 4731
    return line


def _update_refusal(session: ImapSession, key: sk.SearchKey) -> bytes | None:
    """Why UPDATE cannot be honoured (RFC 5267 §4.3.1: the other options still are)."""
    if any_key(key, lambda k: isinstance(k, sk.AgeKey)):
        return b"OLDER and YOUNGER change with time alone; no updates"
    selection = selected(session)
    if len(selection.live.contexts) >= session.settings.max_search_updates:
        return b"Too many live searches; CANCELUPDATE one"
    return None


def _live(tag: str, uid: bool, key: sk.SearchKey, charset: str,
          criteria: tuple[tuple[str, bool], ...] | None, found: list[Candidate],
          uids: list[int]) -> LiveResult:
    live = LiveResult(tag, uid, key, charset, criteria, list(uids))
    if criteria is not None:
        live.orders = [live.order(c.uid, sort_values(c, criteria)) for c in found]
    return live


def _frozen(key: sk.SearchKey, selection: Selection) -> sk.SearchKey:
    """The program with sequence numbers and "$" replaced by the UIDs they name now: a live
    result follows messages, and sequence numbers move under it (Dovecot does the same)."""
    view = selection.view
    if isinstance(key, sk.SequenceKey):
        if key.sequence_set.saved:
            return sk.UidKey(_uid_set(selection.saved))
        return sk.UidKey(_uid_set(view.uids[n - 1] for n in key.sequence_set.iter(view.exists)))
    if isinstance(key, sk.UidKey) and key.sequence_set.saved:
        return sk.UidKey(_uid_set(selection.saved))
    if isinstance(key, sk.And):
        return sk.And(tuple(_frozen(k, selection) for k in key.keys))
    if isinstance(key, sk.Or):
        return sk.Or(_frozen(key.left, selection), _frozen(key.right, selection))
    if isinstance(key, sk.Not):
        return sk.Not(_frozen(key.key, selection))
    return key


def _uid_set(uids: Iterable[int]) -> SequenceSet:
    ranges: list[tuple[int, int]] = []
    for uid in sorted(set(uids)):
        if ranges and uid == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], uid)
        else:
            ranges.append((uid, uid))
    return SequenceSet(tuple(ranges))


async def refresh_live(session: ImapSession, selection: Selection) -> None:
    """Test the messages that changed (new, or flags changed) against each live result; only
    those are read, a batch at a time, whatever the size of the mailbox."""
    live = selection.live
    changed = sorted(live.changed)
    live.changed = set()
    if not changed:
        return
    for context in list(live.contexts.values()):
        matched: dict[int, Candidate] = {}
        try:
            async for c in matching(session, selection, context.key, context.charset,
                                    fields=context.sorted, uids=changed):
                matched[c.uid] = c
        except (SearchError, TooMuchContent):
            live.refuse(context.tag, "The search cannot be kept up to date")
            continue
        for uid in changed:
            hit = matched.get(uid)
            if hit is None:
                context.unmatch(uid)
            elif context.criteria is not None:
                context.match(uid, context.order(uid, sort_values(hit, context.criteria)))
            else:
                context.match(uid, None)


async def cancel_update(session: ImapSession, request: Request,
                        respond: Responder) -> Completion:
    """RFC 5267 §4.3.5. A tag with no live result makes the whole command NO (nothing is
    cancelled): the command is well formed, the state is what fails."""
    args = request.command.args
    assert isinstance(args, cmd.CancelUpdate)
    live = selected(session).live
    unknown = [t for t in args.tags if t not in live.contexts]
    if unknown:
        return Completion("NO", f"No live search with tag {unknown[0]!r}")
    for tag in args.tags:
        live.contexts.pop(tag, None)
    if not live.contexts:
        live.changed.clear()
    return Completion("OK", "CANCELUPDATE completed")


async def thread(session: ImapSession, request: Request, respond: Responder) -> Completion:
    command = request.command
    args = command.args
    assert isinstance(args, cmd.Thread)
    selection = selected(session)
    algorithm = args.algorithm.upper()
    if algorithm not in ("REFERENCES", "ORDEREDSUBJECT"):
        return Completion("BAD", "Unknown threading algorithm")
    try:
        found = [c async for c in matching(session, selection, args.key, args.charset,
                                           fields=True)]
    except (SearchError, TooMuchContent) as exc:
        return _refusal(exc)
    roots = references(found) if algorithm == "REFERENCES" else ordered_subject(found)
    data = render_threads(roots, (lambda c: c.uid) if command.uid else (lambda c: c.seq))
    await respond.send([b"THREAD" + (b" " + data if data else b"")])
    return Completion("OK", "THREAD completed")
