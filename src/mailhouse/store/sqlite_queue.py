"""The outbound queue's SQL for the embedded store (schema version 2, see schema.py).

Plain functions over a connection, as in sqlite.py: reads run on any read connection, writes on
the group-commit writer thread inside its batch transaction (sqlite_writer.py), so an update is
durable when the caller's future resolves. The rules they follow are in queue_rules.py.

Hot path: `due()` and `claim()` walk the partial index `queue_recipients_due` in next-attempt
order and stop as soon as they have `limit` messages; `next_attempt()` is a min() over the same
index. None touches delivered or failed rows, nor the table itself. The claim's lease is one
UPDATE by message id (the UNIQUE (queue_id, address) index).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

from mailhouse.store.base import (
    QueuedMessage,
    QueueRecipient,
    QueueRequest,
    QueueStats,
    RecipientStatus,
    RecipientUpdate,
)
from mailhouse.store.blobs import SealedBlob
from mailhouse.store.queue_rules import clean_reply

_MESSAGE = ("SELECT id, blob_id, size, sender, created, smtputf8, body_8bit, delay_warned, trace,"
            " bounce_requested FROM queue")
_RECIPIENT = (
    "SELECT queue_id, address, status, attempts, next_attempt, last_reply FROM queue_recipients"
)
_DUE = (
    "SELECT queue_id FROM queue_recipients WHERE status = 'pending' AND next_attempt <= ?"
    " ORDER BY next_attempt, queue_id"
)


# --- reads ---------------------------------------------------------------------------------------
def due(conn: sqlite3.Connection, now: float, limit: int) -> list[QueuedMessage]:
    if limit <= 0:
        return []
    conn.execute("BEGIN")  # the ids and their rows from one snapshot
    try:
        return _load(conn, _due_ids(conn, now, limit))
    finally:
        conn.execute("COMMIT")


def _due_ids(conn: sqlite3.Connection, now: float, limit: int) -> list[int]:
    ids: dict[int, None] = {}
    cursor = conn.execute(_DUE, (now,))
    try:
        for (queue_id,) in cursor:
            ids.setdefault(queue_id, None)
            if len(ids) >= limit:
                break
    finally:
        cursor.close()
    return list(ids)


def next_attempt(conn: sqlite3.Connection) -> float | None:
    row = conn.execute(
        "SELECT min(next_attempt) FROM queue_recipients WHERE status = 'pending'"
    ).fetchone()
    return None if row[0] is None else float(row[0])


def stats(conn: sqlite3.Connection) -> QueueStats:
    row = conn.execute(
        "SELECT count(DISTINCT r.queue_id), count(*), min(q.created) FROM queue_recipients r"
        " JOIN queue q ON q.id = r.queue_id WHERE r.status = 'pending'"
    ).fetchone()
    return QueueStats(int(row[0]), int(row[1]), None if row[2] is None else float(row[2]))


def get(conn: sqlite3.Connection, message_id: int) -> QueuedMessage | None:
    conn.execute("BEGIN")
    try:
        found = _load(conn, [message_id])
    finally:
        conn.execute("COMMIT")
    return found[0] if found else None


def list_all(conn: sqlite3.Connection) -> list[QueuedMessage]:
    conn.execute("BEGIN")
    try:
        recipients = _recipients(conn.execute(_RECIPIENT + " ORDER BY id"))
        return [
            _message(row, recipients.get(row[0], ()))
            for row in conn.execute(_MESSAGE + " ORDER BY id")
        ]
    finally:
        conn.execute("COMMIT")


def _load(conn: sqlite3.Connection, ids: list[int]) -> list[QueuedMessage]:
    """Messages by id, in the order given; unknown ids are skipped. json_each binds any number
    of ids as one parameter (no SQLITE_MAX_VARIABLE_NUMBER to split around)."""
    if not ids:
        return []
    key = json.dumps(ids)
    rows = {
        row[0]: row
        for row in conn.execute(_MESSAGE + " WHERE id IN (SELECT value FROM json_each(?))", (key,))
    }
    recipients = _recipients(
        conn.execute(
            _RECIPIENT + " WHERE queue_id IN (SELECT value FROM json_each(?)) ORDER BY id", (key,)
        )
    )
    return [_message(rows[i], recipients.get(i, ())) for i in ids if i in rows]


def _recipients(rows: sqlite3.Cursor) -> dict[int, list[QueueRecipient]]:
    out: dict[int, list[QueueRecipient]] = {}
    for queue_id, address, status, attempts, next_at, last_reply in rows:
        out.setdefault(queue_id, []).append(
            QueueRecipient(address, RecipientStatus(status), attempts, float(next_at), last_reply)
        )
    return out


def _message(row: tuple[object, ...], recipients: Sequence[QueueRecipient]) -> QueuedMessage:
    queue_id, blob_id, size, sender, created, smtputf8, body_8bit, warned, trace, bounce = row
    assert isinstance(queue_id, int) and isinstance(blob_id, str) and isinstance(sender, str)
    assert isinstance(trace, str)
    assert isinstance(size, int) and isinstance(created, int | float)
    return QueuedMessage(
        id=queue_id,
        blob_id=blob_id,
        size=size,
        sender=sender,
        created=float(created),
        smtputf8=bool(smtputf8),
        body_8bit=bool(body_8bit),
        delay_warned=bool(warned),
        recipients=tuple(recipients),
        trace=trace,
        bounce_requested=bool(bounce),
    )


# --- writes (writer thread, inside the batch transaction) ----------------------------------------
def insert(
    conn: sqlite3.Connection,
    blob: SealedBlob,
    request: QueueRequest,
    recipients: Sequence[str],
    now: float,
) -> int:
    """The queue row and its recipients; the caller counts the blob reference."""
    cursor = conn.execute(
        "INSERT INTO queue (blob_id, size, sender, created, smtputf8, body_8bit, trace)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (blob.blob_id, blob.size, request.sender, now, request.smtputf8, request.body_8bit,
         request.trace),
    )
    queue_id = cursor.lastrowid
    assert queue_id is not None
    first = now if request.not_before is None else request.not_before
    conn.executemany(
        "INSERT INTO queue_recipients (queue_id, address, next_attempt) VALUES (?, ?, ?)",
        [(queue_id, address, first) for address in recipients],
    )
    return queue_id


def update(
    conn: sqlite3.Connection,
    message_id: int,
    updates: Sequence[RecipientUpdate],
    delay_warned: bool | None,
) -> str | None:
    """Apply attempt outcomes. When the message leaves the queue and that was its blob's last
    reference, returns the blob id (the caller unlinks it after the commit)."""
    for u in updates:
        if u.status is RecipientStatus.PENDING:
            conn.execute(
                "UPDATE queue_recipients SET attempts = attempts + 1, next_attempt = ?,"
                " last_reply = ? WHERE queue_id = ? AND address = ? AND status = 'pending'",
                (u.next_attempt, clean_reply(u.reply), message_id, u.address),
            )
        else:
            conn.execute(
                "UPDATE queue_recipients SET attempts = attempts + 1, status = ?,"
                " last_reply = ? WHERE queue_id = ? AND address = ? AND status = 'pending'",
                (u.status.value, clean_reply(u.reply), message_id, u.address),
            )
    if delay_warned is not None:
        conn.execute("UPDATE queue SET delay_warned = ? WHERE id = ?", (delay_warned, message_id))
    pending = conn.execute(
        "SELECT 1 FROM queue_recipients WHERE queue_id = ? AND status = 'pending' LIMIT 1",
        (message_id,),
    ).fetchone()
    return None if pending is not None else remove(conn, message_id)[1]


def claim(conn: sqlite3.Connection, now: float, limit: int, lease: float) -> list[QueuedMessage]:
    """The due messages as they stand, then their due recipients leased, in the writer's
    transaction: every process's writer takes the write lock first (sqlite_writer.py), so two
    claimers never read the same due rows."""
    if limit <= 0:
        return []
    ids = _due_ids(conn, now, limit)
    claimed = _load(conn, ids)
    conn.execute(
        "UPDATE queue_recipients SET next_attempt = ?"
        " WHERE queue_id IN (SELECT value FROM json_each(?))"
        " AND status = 'pending' AND next_attempt <= ?",
        (now + lease, json.dumps(ids), now),
    )
    return claimed


def release(conn: sqlite3.Connection, message_id: int, addresses: Sequence[str], at: float) -> None:
    conn.execute(
        "UPDATE queue_recipients SET next_attempt = ? WHERE queue_id = ? AND status = 'pending'"
        " AND next_attempt > ? AND address IN (SELECT value FROM json_each(?))",
        (at, message_id, at, json.dumps(list(addresses))),
    )


def retry(conn: sqlite3.Connection, message_id: int | None, now: float) -> int:
    """Make the selection's PENDING recipients due now; returns how many that is."""
    if message_id is not None:
        return conn.execute(
            "UPDATE queue_recipients SET next_attempt = min(next_attempt, ?)"
            " WHERE queue_id = ? AND status = 'pending'",
            (now, message_id),
        ).rowcount
    # Two range scans of the due index rather than a write to every PENDING row.
    row = conn.execute(
        "SELECT count(*) FROM queue_recipients WHERE status = 'pending' AND next_attempt <= ?",
        (now,),
    ).fetchone()
    moved = conn.execute(
        "UPDATE queue_recipients SET next_attempt = ?"
        " WHERE status = 'pending' AND next_attempt > ?",
        (now, now),
    ).rowcount
    return int(row[0]) + moved


def bounce(conn: sqlite3.Connection, message_id: int, now: float) -> int:
    """Flag the message for the worker to bounce and make its PENDING recipients due now;
    returns how many are PENDING (0: not queued, since a message leaves with its last one)."""
    conn.execute("UPDATE queue SET bounce_requested = 1 WHERE id = ?", (message_id,))
    return retry(conn, message_id, now)


def remove(conn: sqlite3.Connection, message_id: int) -> tuple[bool, str | None]:
    """Drop the message (its recipients cascade) and the blob reference it held. Returns
    whether it was there, and the blob id if that was the blob's last reference."""
    row = conn.execute("DELETE FROM queue WHERE id = ? RETURNING blob_id", (message_id,)).fetchone()
    if row is None:
        return False, None
    left = conn.execute(
        "UPDATE blobs SET refcount = refcount - 1 WHERE id = ? RETURNING refcount", (row[0],)
    ).fetchone()
    return True, (row[0] if left is not None and left[0] <= 0 else None)
