"""Mailbox commands: SELECT/EXAMINE, CREATE, DELETE, RENAME, SUBSCRIBE, LIST/LSUB, STATUS and
QUOTA (RFC 9051 §6.3; RFC 5258 LIST-EXTENDED, RFC 5819 LIST-STATUS, RFC 6154 SPECIAL-USE,
RFC 3348 CHILDREN, RFC 7162 CONDSTORE/QRESYNC, RFC 9208 QUOTA)."""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

from mailhouse.proto.imap import commands as cmd
from mailhouse.proto.imap import mutf7
from mailhouse.proto.imap.responses import astring, compact
from mailhouse.proto.imap.server_events import Request
from mailhouse.service.imap.selection import SYSTEM_FLAGS, Selection, flag_list
from mailhouse.service.imap_api import Completion, Responder
from mailhouse.service.mailbox_view import MailboxView
from mailhouse.store.base import (
    MailboxError,
    MailboxExists,
    MailboxInfo,
    MailboxNotAllowed,
    NoSuchMailbox,
)

if TYPE_CHECKING:
    from mailhouse.service.imap.session import ImapSession

DELIMITER = "/"
QUOTA_ROOT = ""  # one root per account, named "" as Dovecot's default (RFC 9208 §3.1)


def wire_name(session: ImapSession, name: str) -> bytes:
    """A mailbox name as the client reads it: UTF-8 once enabled, else modified UTF-7."""
    if session.utf8:
        return astring(name, utf8=True)
    return astring(mutf7.encode(name))


def _mailbox_error(exc: MailboxError) -> Completion:
    if isinstance(exc, NoSuchMailbox):
        return Completion("NO", "No such mailbox", "NONEXISTENT")
    if isinstance(exc, MailboxExists):
        return Completion("NO", "Mailbox already exists", "ALREADYEXISTS")
    if isinstance(exc, MailboxNotAllowed):
        return Completion("NO", str(exc) or "Not allowed", "CANNOT")
    return Completion("NO", "Mailbox operation failed", "CANNOT")


# --- SELECT / EXAMINE -----------------------------------------------------------------------------
async def select(session: ImapSession, request: Request, respond: Responder) -> Completion:
    args = request.command.args
    assert isinstance(args, cmd.Select)
    if session.selection is not None:
        session.selection = None
        # RFC 7162 §3.2.11 / RFC 9051 §6.3.2: the old mailbox's updates end here.
        await respond.send([b"OK [CLOSED] Previous mailbox is now closed"])
    if args.qresync is not None and not session.qresync:
        return Completion("BAD", "QRESYNC is not enabled")  # RFC 7162 §3.2.5
    if args.condstore:
        session.enable_condstore()
    store = session.store
    info = await store.get_mailbox(session.account.id, args.mailbox)
    if info is None:
        return Completion("NO", "No such mailbox", "NONEXISTENT")
    # The UIDs only (an index scan): the keywords in use are not collected here, which would
    # read every message's flags; PERMANENTFLAGS \\* tells clients that any may be set, and a
    # STORE that brings a new one announces it (docs/decisions.md).
    uids = await store.list_uids(info.id)
    keywords: set[str] = set()
    status = await store.status(info.id) or info
    view = MailboxView(uids)
    selection = Selection(status, view, args.read_only, status.highest_modseq, keywords,
                          synced_at=time.monotonic())
    flags = flag_list(set(SYSTEM_FLAGS) | keywords)
    permanent = b"()" if args.read_only else flag_list(set(SYSTEM_FLAGS) | keywords | {"\\*"})
    lines = [
        b"%d EXISTS" % view.exists,
        b"FLAGS " + flags,
        b"OK [PERMANENTFLAGS " + permanent + b"] Flags permitted",
        b"OK [UIDVALIDITY %d] UIDs valid" % status.uidvalidity,
        b"OK [UIDNEXT %d] Predicted next UID" % status.uidnext,
        b"OK [HIGHESTMODSEQ %d] Highest" % status.highest_modseq,
    ]
    if not session.rev2:
        lines.insert(1, b"0 RECENT")  # RFC 3501 §6.3.1 requires it; nothing is \Recent here
    else:
        lines.append(b"LIST () \"/\" " + wire_name(session, status.name))  # RFC 9051 §6.3.2
    await respond.send(lines)
    if args.qresync is not None and args.qresync.uidvalidity == status.uidvalidity:
        await _qresync(session, selection, args.qresync, respond)
    session.selection = selection
    mode = "READ-ONLY" if args.read_only else "READ-WRITE"
    return Completion("OK", f"{request.command.name} completed", mode)


async def _qresync(session: ImapSession, selection: Selection, q: cmd.QResync,
                   respond: Responder) -> None:
    """RFC 7162 §3.2.5.2: what the client missed since its MODSEQ, in one round trip."""
    changes = await session.store.changes_since(selection.id, q.modseq)
    top = selection.view.highest_known_uid

    def known(uid: int) -> bool:
        return q.known_uids is None or q.known_uids.contains(uid, top)

    vanished = [uid for uid in changes.expunged if known(uid)]
    if vanished:
        await respond.send([b"VANISHED (EARLIER) " + compact(vanished).encode("ascii")])
    lines = []
    for m in changes.changed:
        seq = selection.view.seq_of(m.uid)
        if seq is not None:
            lines.append(b"%d FETCH (UID %d FLAGS %s MODSEQ (%d))"
                         % (seq, m.uid, flag_list(m.flags), m.modseq))
        if len(lines) >= 500:
            await respond.send(lines)
            lines = []
    if lines:
        await respond.send(lines)


# --- CREATE / DELETE / RENAME / SUBSCRIBE -----------------------------------------------------
async def create(session: ImapSession, request: Request, respond: Responder) -> Completion:
    args = request.command.args
    assert isinstance(args, cmd.Create)
    if len(args.use) > 1:
        return Completion("NO", "One special-use attribute per mailbox", "USEATTR")
    use = args.use[0] if args.use else None
    try:
        await session.store.create_mailbox(session.account.id, args.mailbox, use)
    except MailboxError as exc:
        return _mailbox_error(exc)
    except ValueError as exc:
        if use is not None and "special" in str(exc):
            return Completion("NO", "Unsupported special-use attribute", "USEATTR")  # RFC 6154
        return Completion("NO", "Invalid mailbox name", "CANNOT")
    return Completion("OK", "CREATE completed")


async def delete(session: ImapSession, request: Request, respond: Responder) -> Completion:
    args = request.command.args
    assert isinstance(args, cmd.MailboxArgument)
    selected = session.selection
    try:
        await session.store.delete_mailbox(session.account.id, args.mailbox)
    except MailboxError as exc:
        return _mailbox_error(exc)
    if selected is not None and selected.mailbox.name == args.mailbox:
        session.selection = None  # RFC 9051 §6.3.5 lets a session delete its own mailbox
    return Completion("OK", "DELETE completed")


async def rename(session: ImapSession, request: Request, respond: Responder) -> Completion:
    args = request.command.args
    assert isinstance(args, cmd.Rename)
    try:
        await session.store.rename_mailbox(session.account.id, args.old, args.new)
    except MailboxError as exc:
        return _mailbox_error(exc)
    except ValueError:
        return Completion("NO", "Invalid mailbox name", "CANNOT")
    return Completion("OK", "RENAME completed")


async def subscribe(session: ImapSession, request: Request, respond: Responder) -> Completion:
    args = request.command.args
    assert isinstance(args, cmd.MailboxArgument)
    await session.store.subscribe(session.account.id, args.mailbox)
    return Completion("OK", "SUBSCRIBE completed")


async def unsubscribe(session: ImapSession, request: Request, respond: Responder) -> Completion:
    args = request.command.args
    assert isinstance(args, cmd.MailboxArgument)
    # RFC 9051 §6.3.8 allows either answer for a name that was not subscribed; Dovecot says OK.
    await session.store.unsubscribe(session.account.id, args.mailbox)
    return Completion("OK", "UNSUBSCRIBE completed")


# --- LIST / LSUB ------------------------------------------------------------------------------
def pattern_regex(reference: str, pattern: str) -> re.Pattern[str]:
    """RFC 9051 §6.3.9: "*" matches anything, "%" anything but the delimiter; the reference is
    prefixed to the pattern (no hierarchy is interpreted beyond that: one namespace)."""
    full = reference + pattern
    out = []
    for ch in full:
        if ch == "*":
            out.append(".*")
        elif ch == "%":
            out.append("[^" + re.escape(DELIMITER) + "]*")
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def _matches(regexes: list[re.Pattern[str]], name: str) -> bool:
    candidates = [name]
    head, sep, rest = name.partition(DELIMITER)
    if head == "INBOX":  # INBOX matches in any case (RFC 9051 §5.1)
        candidates += ["inbox" + sep + rest, "Inbox" + sep + rest]
    return any(r.match(c) for r in regexes for c in candidates)


def _levels(name: str) -> list[str]:
    parts = name.split(DELIMITER)
    return [DELIMITER.join(parts[:i]) for i in range(1, len(parts))]


async def list_mailboxes(session: ImapSession, request: Request,
                         respond: Responder) -> Completion:
    args = request.command.args
    assert isinstance(args, cmd.ListMailboxes)
    lsub = request.command.name == "LSUB"
    label = b"LSUB" if lsub else b"LIST"
    if not lsub and args.patterns == ("",) and not args.selection:
        # RFC 9051 §6.3.9: the hierarchy delimiter and the root of the reference.
        await respond.send([b'LIST (\\Noselect) "/" ""'])
        return Completion("OK", "LIST completed")
    store = session.store
    account = session.account.id
    boxes = {m.name: m for m in await store.list_mailboxes(account)}
    subscribed = set(await store.list_subscriptions(account))
    names = set(boxes)
    levels = {level for name in names for level in _levels(name)} - names
    everything = names | levels
    has_children = {level for name in everything for level in _levels(name)}
    regexes = [pattern_regex(args.reference, p) for p in args.patterns]
    selection = {s.upper() for s in args.selection}
    returns = {r.upper() for r in args.returns}
    only_subscribed = lsub or "SUBSCRIBED" in selection
    only_special = "SPECIAL-USE" in selection
    recursive = "RECURSIVEMATCH" in selection
    show_subscribed = "SUBSCRIBED" in returns or ("SUBSCRIBED" in selection and not lsub)
    candidates = subscribed | everything if only_subscribed else everything
    lines: list[bytes] = []
    status_of: list[MailboxInfo] = []
    for name in sorted(candidates):
        if not _matches(regexes, name):
            continue
        attributes: list[str] = []
        extra = b""
        if only_subscribed and name not in subscribed:
            child_subscribed = any(s.startswith(name + DELIMITER) for s in subscribed)
            if lsub and child_subscribed and "%" in "".join(args.patterns):
                attributes.append("\\Noselect")  # RFC 3501 §6.3.9
            elif recursive and child_subscribed:
                extra = b' ("CHILDINFO" ("SUBSCRIBED"))'  # RFC 5258 §3.5
            else:
                continue
        box = boxes.get(name)
        if only_special and (box is None or box.special_use is None):
            continue
        if not lsub:
            if box is None:
                attributes.append("\\Noselect" if name in levels else "\\NonExistent")
            attributes.append("\\HasChildren" if name in has_children else "\\HasNoChildren")
            if box is not None and box.special_use:
                attributes.append(box.special_use)
            if show_subscribed and name in subscribed:
                attributes.append("\\Subscribed")
        line = (label + b" (" + " ".join(attributes).encode("ascii") + b') "/" '
                + wire_name(session, name) + extra)
        lines.append(line)
        if args.status_items and box is not None:
            status_of.append(box)
            await respond.send(lines)
            lines = []
            await respond.send([await _status_line(session, box.id, args.status_items)])
        if len(lines) >= 200:
            await respond.send(lines)
            lines = []
    if lines:
        await respond.send(lines)
    return Completion("OK", f"{label.decode()} completed")


# --- STATUS ------------------------------------------------------------------------------------
async def _status_line(session: ImapSession, mailbox_id: int, items: tuple[str, ...]) -> bytes:
    info = await session.store.status(mailbox_id)
    if info is None:
        raise NoSuchMailbox(str(mailbox_id))
    values: dict[str, int] = {
        "MESSAGES": info.message_count, "UIDNEXT": info.uidnext,
        "UIDVALIDITY": info.uidvalidity, "UNSEEN": info.unseen, "DELETED": info.deleted,
        "SIZE": info.size, "RECENT": 0, "HIGHESTMODSEQ": info.highest_modseq,
        "APPENDLIMIT": session.settings.append_limit,
    }
    if "HIGHESTMODSEQ" in items:
        session.enable_condstore()  # RFC 7162 §3.1: a CONDSTORE enabling command
    pairs = b" ".join(b"%s %d" % (item.encode("ascii"), values[item]) for item in items)
    return b"STATUS " + wire_name(session, info.name) + b" (" + pairs + b")"


async def status(session: ImapSession, request: Request, respond: Responder) -> Completion:
    args = request.command.args
    assert isinstance(args, cmd.Status)
    info = await session.store.get_mailbox(session.account.id, args.mailbox)
    if info is None:
        return Completion("NO", "No such mailbox", "NONEXISTENT")
    try:
        line = await _status_line(session, info.id, args.items)
    except NoSuchMailbox:
        return Completion("NO", "No such mailbox", "NONEXISTENT")
    await respond.send([line])
    return Completion("OK", "STATUS completed")


# --- QUOTA (RFC 9208) -------------------------------------------------------------------------
def _quota_line(used: int, limit: int) -> bytes:
    # STORAGE is counted in units of 1024 octets (RFC 9208 §5.1), rounded up.
    return b'QUOTA "" (STORAGE %d %d)' % ((used + 1023) // 1024, limit // 1024)


async def get_quota_root(session: ImapSession, request: Request,
                         respond: Responder) -> Completion:
    args = request.command.args
    assert isinstance(args, cmd.MailboxArgument)
    info = await session.store.get_mailbox(session.account.id, args.mailbox)
    if info is None:
        return Completion("NO", "No such mailbox", "NONEXISTENT")
    quota = await session.store.get_quota(session.account.id)
    name = wire_name(session, info.name)
    if quota is None or quota.limit is None:
        await respond.send([b"QUOTAROOT " + name])  # no quota root applies (RFC 9208 §4.3.2)
    else:
        await respond.send([b'QUOTAROOT ' + name + b' ""', _quota_line(quota.used, quota.limit)])
    return Completion("OK", "GETQUOTAROOT completed")


async def get_quota(session: ImapSession, request: Request, respond: Responder) -> Completion:
    args = request.command.args
    assert isinstance(args, cmd.GetQuota)
    quota = await session.store.get_quota(session.account.id)
    if args.root != QUOTA_ROOT or quota is None or quota.limit is None:
        return Completion("NO", "No such quota root", "NONEXISTENT")
    await respond.send([_quota_line(quota.used, quota.limit)])
    return Completion("OK", "GETQUOTA completed")


async def set_quota(session: ImapSession, request: Request, respond: Responder) -> Completion:
    # Limits are the administrator's (`mailhouse user quota`), not the user's (RFC 9208 §4.1.3).
    return Completion("NO", "Quotas are set by the administrator", "NOPERM")
