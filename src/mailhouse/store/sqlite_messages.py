"""Messages for the embedded store: delivery, APPEND, STORE, COPY and MOVE.

Plain functions over a connection, as sqlite_expunge.py: the writes run on the group-commit
writer thread inside its batch transaction (sqlite_writer.py), so each call is one transaction,
durable when the caller's future resolves.

One UPDATE of the mailbox row claims UIDs and the MODSEQ of a change and reads them back with
RETURNING (RFC 9051 §2.3.1.1: UIDs strictly ascend; RFC 7162 §3.1: every change gets a MODSEQ
above all earlier ones). Copies share the blob and add references; nothing is copied on disk.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Sequence

from mailhouse.store import sqlite_directory, sqlite_expunge, sqlite_queue
from mailhouse.store.base import (
    MAX_UID,
    CopyResult,
    FlagOp,
    FlagUpdate,
    MailboxChanges,
    MailboxNotAllowed,
    MessageFlags,
    MessageInfo,
    NoSuchMailbox,
    Outcome,
    QueueRequest,
    Quota,
    QuotaExceeded,
)
from mailhouse.store.blobs import SealedBlob
from mailhouse.store.rules import apply_flag_op, decode_flags, encode_flags, flag_counts

# The counters STATUS reads (schema version 5) move in the same statement.
_COUNT = (
    " message_count = message_count + ?, unseen = unseen + ?, deleted = deleted + ?,"
    " total_size = total_size + ?"
)
_CLAIM_BY_NAME = (
    "UPDATE mailboxes SET uidnext = uidnext + 1, highest_modseq = highest_modseq + 1,"
    + _COUNT + " WHERE account_id = ? AND name = ? RETURNING id, uidnext - 1, highest_modseq"
)
_CLAIM_BY_ID = (
    "UPDATE mailboxes SET uidnext = uidnext + ?, highest_modseq = highest_modseq + 1,"
    + _COUNT + " WHERE id = ? RETURNING uidnext - ?, highest_modseq, uidvalidity"
)
_INSERT = (
    "INSERT INTO messages (mailbox_id, uid, modseq, flags, internal_date, internal_zone, size,"
    " blob_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_SELECTED = "mailbox_id = ? AND uid IN (SELECT value FROM json_each(?))"

TargetRow = tuple[int, str, str, float, bool]  # ..., ignore_quota
Queued = tuple[QueueRequest, tuple[str, ...]]


# --- reads ----------------------------------------------------------------------------------------
_MESSAGE = (
    "SELECT id, mailbox_id, uid, flags, internal_date, size, modseq, blob_id, internal_zone"
    " FROM messages"
)


def list_all(conn: sqlite3.Connection, mailbox_id: int) -> list[MessageInfo]:
    return list_range(conn, mailbox_id, 1, MAX_UID, None)


def list_range(
    conn: sqlite3.Connection, mailbox_id: int, first: int, last: int, limit: int | None
) -> list[MessageInfo]:
    query = _MESSAGE + " WHERE mailbox_id = ? AND uid BETWEEN ? AND ? ORDER BY uid LIMIT ?"
    return [
        MessageInfo(r[0], r[1], r[2], decode_flags(r[3]), r[4], r[5], r[6], r[7], r[8])
        for r in conn.execute(query, (mailbox_id, first, last, -1 if limit is None else limit))
    ]


def list_flags(
    conn: sqlite3.Connection, mailbox_id: int, first: int, last: int
) -> list[MessageFlags]:
    query = (
        "SELECT uid, flags, modseq FROM messages WHERE mailbox_id = ? AND uid BETWEEN ? AND ?"
        " ORDER BY uid"
    )
    return [
        MessageFlags(uid, decode_flags(flags), modseq)
        for uid, flags, modseq in conn.execute(query, (mailbox_id, first, last))
    ]


def list_uids(conn: sqlite3.Connection, mailbox_id: int) -> list[int]:
    query = "SELECT uid FROM messages WHERE mailbox_id = ? ORDER BY uid"
    return [uid for (uid,) in conn.execute(query, (mailbox_id,))]


def uid_bounds(conn: sqlite3.Connection, mailbox_id: int) -> tuple[int, int] | None:
    """Two index probes (min and max are each one seek on the (mailbox_id, uid) index)."""
    low = conn.execute("SELECT min(uid) FROM messages WHERE mailbox_id = ?", (mailbox_id,))
    high = conn.execute("SELECT max(uid) FROM messages WHERE mailbox_id = ?", (mailbox_id,))
    first, last = low.fetchone()[0], high.fetchone()[0]
    return None if first is None else (first, last)


def changes_since(conn: sqlite3.Connection, mailbox_id: int, modseq: int) -> MailboxChanges:
    conn.execute("BEGIN")  # one snapshot for both: no change falls between them
    try:
        changed = conn.execute(
            "SELECT uid, flags, modseq FROM messages WHERE mailbox_id = ? AND modseq > ?",
            (mailbox_id, modseq),
        ).fetchall()
        gone = conn.execute(
            "SELECT uid FROM expunged WHERE mailbox_id = ? AND modseq > ?", (mailbox_id, modseq)
        ).fetchall()
    finally:
        conn.execute("COMMIT")
    return MailboxChanges(
        tuple(MessageFlags(uid, decode_flags(f), m) for uid, f, m in sorted(changed)),
        tuple(sorted(uid for (uid,) in gone)),
    )


# --- writes (writer thread) -----------------------------------------------------------------------


def deliver(
    conn: sqlite3.Connection,
    blob: SealedBlob,
    targets: Sequence[TargetRow],
    queued: Queued | None,
    now: float,
    changed: list[tuple[int, int, int]] | None = None,
) -> list[Outcome]:
    """`changed` receives (account id, mailbox id, MODSEQ) of each copy, for wake-ups."""
    outcomes: list[Outcome] = []
    placed: list[tuple[int, int]] = []
    for account_id, mailbox, flags, internal_date, ignore_quota in targets:
        unseen, deleted = flag_counts(decode_flags(flags))
        counts = (1, unseen, deleted, blob.size)
        if not ignore_quota and not quota_allows(conn, account_id, blob.size):  # RFC 3463 4.2.2
            exists = conn.execute(
                "SELECT 1 FROM mailboxes WHERE account_id = ? AND name = ?", (account_id, mailbox)
            ).fetchone()
            outcomes.append(Outcome.PERMANENT if exists is None else Outcome.TEMPORARY)
            continue
        claimed = conn.execute(_CLAIM_BY_NAME, (*counts, account_id, mailbox)).fetchall()
        if not claimed:
            outcomes.append(Outcome.PERMANENT)
            continue
        mailbox_id, uid, modseq = claimed[0]
        conn.execute(
            _INSERT, (mailbox_id, uid, modseq, flags, internal_date, 0, blob.size, blob.blob_id)
        )
        placed.append((mailbox_id, uid))
        outcomes.append(Outcome.DELIVERED)
        if changed is not None:
            changed.append((account_id, mailbox_id, modseq))
    references = outcomes.count(Outcome.DELIVERED)
    if queued is not None:
        sqlite_queue.insert(conn, blob, queued[0], queued[1], now)
        references += 1
    if references:
        _new_blob(conn, blob, references, placed)
    return outcomes


_INSERT_BLOB = ("INSERT INTO blobs (id, size, refcount, structure, search)"
                " VALUES (?, ?, ?, ?, ?)")


_SET_SEARCH = "UPDATE message_search SET search = ? WHERE mailbox_id = ? AND uid = ?"


def _new_blob(conn: sqlite3.Connection, blob: SealedBlob, references: int,
              placed: Sequence[tuple[int, int]] = ()) -> None:
    """The blob's row, after the rows of the messages `placed` (mailbox id, UID) in it: the
    trigger that gave them their `message_search` rows found no blob yet (schema.py v10)."""
    conn.execute(_INSERT_BLOB,
                 (blob.blob_id, blob.size, references, blob.structure, blob.search))
    if blob.search is not None and placed:
        conn.executemany(_SET_SEARCH, [(blob.search, box, uid) for box, uid in placed])


def append(
    conn: sqlite3.Connection,
    mailbox_id: int,
    blob: SealedBlob,
    flags: str,
    internal_date: float,
    internal_zone: int,
    changed: list[tuple[int, int, int]] | None = None,
) -> tuple[int, int]:
    owner = conn.execute("SELECT account_id FROM mailboxes WHERE id = ?", (mailbox_id,))
    row = owner.fetchone()
    if row is None:
        raise NoSuchMailbox(mailbox_id)
    check_quota(conn, row[0], blob.size)
    unseen, deleted = flag_counts(decode_flags(flags))
    counts = (1, unseen, deleted, blob.size)
    uid, modseq, uidvalidity = conn.execute(
        _CLAIM_BY_ID, (1, *counts, mailbox_id, 1)
    ).fetchone()
    conn.execute(
        _INSERT,
        (mailbox_id, uid, modseq, flags, internal_date, internal_zone, blob.size, blob.blob_id),
    )
    _new_blob(conn, blob, 1, [(mailbox_id, uid)])
    if changed is not None:
        changed.append((row[0], mailbox_id, modseq))
    return uidvalidity, uid


def store_flags(
    conn: sqlite3.Connection,
    mailbox_id: int,
    uids: list[int],
    op: FlagOp,
    flags: frozenset[str],
    unchanged_since: int | None,
    changed: list[tuple[int, int, int]] | None = None,
) -> FlagUpdate:
    owner = conn.execute("SELECT account_id FROM mailboxes WHERE id = ?", (mailbox_id,))
    found = owner.fetchone()
    if found is None:
        raise NoSuchMailbox(mailbox_id)
    rows = conn.execute(
        "SELECT uid, flags, modseq FROM messages WHERE " + _SELECTED + " ORDER BY uid",
        (mailbox_id, json.dumps(uids)),
    ).fetchall()
    failed: list[int] = []
    changes: list[tuple[int, frozenset[str]]] = []
    unseen = deleted = 0
    for uid, text, modseq in rows:
        if unchanged_since is not None and modseq > unchanged_since:
            failed.append(uid)
            continue
        old = decode_flags(text)
        new = apply_flag_op(old, op, flags)
        if new != old:
            changes.append((uid, new))
            (was_unseen, was_deleted), (is_unseen, is_deleted) = map(flag_counts, (old, new))
            unseen += is_unseen - was_unseen
            deleted += is_deleted - was_deleted
    if not changes:
        return FlagUpdate(0, (), tuple(failed))
    (modseq,) = conn.execute(
        "UPDATE mailboxes SET highest_modseq = highest_modseq + 1, unseen = unseen + ?,"
        " deleted = deleted + ? WHERE id = ? RETURNING highest_modseq",
        (unseen, deleted, mailbox_id),
    ).fetchone()
    conn.executemany(
        "UPDATE messages SET flags = ?, modseq = ? WHERE mailbox_id = ? AND uid = ?",
        [(encode_flags(new), modseq, mailbox_id, uid) for uid, new in changes],
    )
    if changed is not None:
        changed.append((found[0], mailbox_id, modseq))
    return FlagUpdate(modseq, tuple(MessageFlags(uid, new, modseq) for uid, new in changes),
                      tuple(failed))


def copy(
    conn: sqlite3.Connection,
    source_id: int,
    uids: list[int],
    target_id: int,
    quota_checked: bool = True,
    changed: list[tuple[int, int, int]] | None = None,
) -> CopyResult:
    found = dict(
        conn.execute(
            "SELECT id, account_id FROM mailboxes WHERE id IN (?, ?)", (source_id, target_id)
        ).fetchall()
    )
    if source_id not in found or target_id not in found:
        raise NoSuchMailbox(source_id if source_id not in found else target_id)
    if found[source_id] != found[target_id]:
        raise MailboxNotAllowed("messages move only between mailboxes of one account")
    rows = conn.execute(
        "SELECT uid, flags, internal_date, internal_zone, size, blob_id FROM messages WHERE "
        + _SELECTED + " ORDER BY uid",
        (source_id, json.dumps(uids)),
    ).fetchall()
    if not rows:
        (uidvalidity,) = conn.execute(
            "SELECT uidvalidity FROM mailboxes WHERE id = ?", (target_id,)
        ).fetchone()
        return CopyResult(uidvalidity, ())
    if quota_checked:
        check_quota(conn, found[target_id], sum(row[4] for row in rows))
    counts = [flag_counts(decode_flags(row[1])) for row in rows]
    totals = (
        len(rows),
        sum(u for u, _ in counts),
        sum(d for _, d in counts),
        sum(row[4] for row in rows),
    )
    first, modseq, uidvalidity = conn.execute(
        _CLAIM_BY_ID, (len(rows), *totals, target_id, len(rows))
    ).fetchone()
    conn.executemany(
        _INSERT,
        [
            (target_id, first + i, modseq, flags, date, zone, size, blob_id)
            for i, (_, flags, date, zone, size, blob_id) in enumerate(rows)
        ],
    )
    for blob_id, count in sorted(Counter(row[5] for row in rows).items()):
        conn.execute("UPDATE blobs SET refcount = refcount + ? WHERE id = ?", (count, blob_id))
    if changed is not None:
        changed.append((found[target_id], target_id, modseq))
    return CopyResult(uidvalidity, tuple((row[0], first + i) for i, row in enumerate(rows)))


def quota(conn: sqlite3.Connection, account_id: int) -> Quota | None:
    row = conn.execute(
        "SELECT quota, (SELECT coalesce(sum(total_size), 0) FROM mailboxes"
        " WHERE account_id = accounts.id) FROM accounts WHERE id = ?",
        (account_id,),
    ).fetchone()
    return None if row is None else Quota(row[1], row[0])


def quota_allows(conn: sqlite3.Connection, account_id: int, adding: int) -> bool:
    found = quota(conn, account_id)
    return found is None or found.limit is None or found.used + adding <= found.limit


def check_quota(conn: sqlite3.Connection, account_id: int, adding: int) -> None:
    """Raises QuotaExceeded; the writer rolls the job back to its savepoint."""
    found = quota(conn, account_id)
    if found is not None and found.limit is not None and found.used + adding > found.limit:
        raise QuotaExceeded(found.used, found.limit, adding)


def set_quota(conn: sqlite3.Connection, address: str, limit: int | None) -> bool:
    query = "UPDATE accounts SET quota = ? WHERE address = ?"
    if not conn.execute(query, (limit, address)).rowcount:
        return False
    sqlite_directory.bump_serial(conn)  # Directory.quotas
    return True


def move(
    conn: sqlite3.Connection, source_id: int, uids: list[int], target_id: int,
    changed: list[tuple[int, int, int]] | None = None,
) -> CopyResult:
    """The copies add their references before the originals drop theirs: no blob is ever at 0."""
    result = copy(conn, source_id, uids, target_id, quota_checked=False,  # usage unchanged
                  changed=changed)
    if result.uids:
        sqlite_expunge.expunge(conn, source_id, [source for source, _ in result.uids], changed)
    return result
