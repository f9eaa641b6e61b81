"""SEARCH, SORT and THREAD over the selected mailbox (RFC 9051 §6.4.4, RFC 4731 ESEARCH,
RFC 5182 SEARCHRES, RFC 5256 SORT/THREAD, RFC 7162 §3.1.5 MODSEQ).

Candidates are read a batch at a time (rows, and the stored search fields only when a key
needs them); only HEADER, BODY and TEXT keys read message files, and at most
`search_content_limit` of them per command.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from mailhouse.message.searchfields import SearchFields, build_search_fields
from mailhouse.proto.imap import commands as cmd
from mailhouse.proto.imap import search as sk
from mailhouse.proto.imap.responses import compact, quoted
from mailhouse.proto.imap.server_events import Request
from mailhouse.service.imap.messages import ROW_BATCH_FACTOR, batches, selected
from mailhouse.service.imap.row_fetch import internal_date
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
from mailhouse.service.imap_sort import ordered_subject, references, render_threads, sort_messages

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
                   charset: str, *, fields: bool = False) -> AsyncIterator[Candidate]:
    """The messages (known to the client) that match, in mailbox order."""
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
    needles = required_needles(key, charset)
    narrowed = await store.search_candidates(selection.id, needles) if needles else None
    uids = list(view.uids) if narrowed is None else [u for u in view.uids if u in narrowed]
    async for rows in batches(session, selection, uids, factor):
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
                continue
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
    selection = selected(session)
    modseq = uses_modseq(args.key)
    if modseq:
        session.enable_condstore()
    returns = args.returns
    if returns is None and session.rev2:
        returns = cmd.SearchReturn(("ALL",))  # RFC 9051 §6.4.4: ESEARCH replaces SEARCH
    options = {o.upper() for o in returns.options} if returns is not None else set()
    if returns is not None and not options:
        options = {"ALL"}  # RETURN () means ALL (RFC 4731 §3.1)
    unsupported = options - {"MIN", "MAX", "ALL", "COUNT", "SAVE"}
    if unsupported:
        return Completion("BAD", "Unsupported RETURN option " + sorted(unsupported)[0])
    numbers: list[int] = []
    uids: list[int] = []
    highest = 0
    try:
        # Only the numbers are kept: a SEARCH over a huge mailbox holds ints, not messages.
        async for c in matching(session, selection, args.key, args.charset or "UTF-8"):
            numbers.append(c.uid if command.uid else c.seq)
            uids.append(c.uid)
            highest = max(highest, c.modseq)
    except (SearchError, TooMuchContent) as exc:
        if "SAVE" in options:
            selection.saved = frozenset()  # RFC 5182 §2.1: a failed SEARCH empties $
        return _refusal(exc)
    if "SAVE" in options:
        selection.saved = frozenset(uids)
        options.discard("SAVE")
        if not options:  # RFC 5182 §2.1: SAVE alone returns no ESEARCH
            return Completion("OK", "SEARCH completed, result saved")
    if returns is None:
        line = b"SEARCH" + b"".join(b" %d" % n for n in numbers)
        if modseq and numbers:
            line += b" (MODSEQ %d)" % highest  # RFC 7162 §3.1.5
        await respond.send([line])
        return Completion("OK", "SEARCH completed")
    line = b"ESEARCH (TAG " + quoted(command.tag) + b")"
    if command.uid:
        line += b" UID"
    if numbers:
        if "MIN" in options:
            line += b" MIN %d" % min(numbers)
        if "MAX" in options:
            line += b" MAX %d" % max(numbers)
        if "ALL" in options:
            line += b" ALL " + compact(numbers).encode("ascii")
    if "COUNT" in options:
        line += b" COUNT %d" % len(numbers)
    if modseq and numbers:
        line += b" MODSEQ %d" % highest  # RFC 7162 §3.1.5 / RFC 4731
    await respond.send([line])
    return Completion("OK", "SEARCH completed")


async def sort(session: ImapSession, request: Request, respond: Responder) -> Completion:
    command = request.command
    args = command.args
    assert isinstance(args, cmd.Sort)
    if args.returns is not None:
        return Completion("BAD", "ESORT is not supported")
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
