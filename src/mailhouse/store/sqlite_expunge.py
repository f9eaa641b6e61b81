"""Expunges and their history for the embedded store (the `expunged` table of schema version 1).

Plain functions over a connection, as sqlite_queue.py: `expunge` runs on the group-commit writer
thread inside its batch transaction (sqlite_writer.py), so the removal is durable when the
caller's future resolves; `since` runs on any read connection.

Why a history at all: an IMAP client resynchronising with QRESYNC names the MODSEQ it last saw
and must learn which UIDs vanished since (VANISHED (EARLIER), RFC 7162 §3.2.5.2, §3.2.10). The
rows are (mailbox, uid, modseq); the `expunged_modseq` index makes "since n" a range scan. They
go with their mailbox (ON DELETE CASCADE): a new mailbox has a new UIDVALIDITY, and clients
resynchronise from scratch anyway (RFC 7162 §3.2.5).
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter

from mailhouse.store.base import ExpungedMessage
from mailhouse.store.rules import decode_flags, flag_counts


def expunge(conn: sqlite3.Connection, mailbox_id: int, uids: list[int],
            changed: list[tuple[int, int, int]] | None = None) -> tuple[int, list[str]]:
    """Delete the rows, claim one MODSEQ for the whole change, record the history, and drop one
    blob reference per row. Returns how many rows went and the blobs now without references
    (the caller unlinks them after the commit); `changed` receives (account id, mailbox id,
    MODSEQ) for wake-ups. json_each binds any number of UIDs as one
    parameter (no SQLITE_MAX_VARIABLE_NUMBER to split around)."""
    gone = conn.execute(
        "DELETE FROM messages WHERE mailbox_id = ? AND uid IN (SELECT value FROM json_each(?))"
        " RETURNING uid, blob_id, flags, size",
        (mailbox_id, json.dumps(uids)),
    ).fetchall()
    if not gone:
        return 0, []  # nothing changed: no MODSEQ is spent (RFC 7162 §3.1)
    # RFC 7162 §3.1: the change gets a MODSEQ above every earlier one in the mailbox; all the
    # messages of one operation share it, as for a STORE on several messages.
    counts = [flag_counts(decode_flags(flags)) for _, _, flags, _ in gone]
    modseq, account_id = conn.execute(
        "UPDATE mailboxes SET highest_modseq = highest_modseq + 1,"
        " message_count = message_count - ?, unseen = unseen - ?, deleted = deleted - ?,"
        " total_size = total_size - ? WHERE id = ? RETURNING highest_modseq, account_id",
        (
            len(gone),
            sum(u for u, _ in counts),
            sum(d for _, d in counts),
            sum(size for *_, size in gone),
            mailbox_id,
        ),
    ).fetchone()
    if changed is not None:
        changed.append((account_id, mailbox_id, modseq))
    # UIDs are never reused in a mailbox (RFC 9051 §2.3.1.1), so a conflict cannot happen; if an
    # old row ever survived it, the newest MODSEQ is the one a resynchronising client needs.
    conn.executemany(
        "INSERT OR REPLACE INTO expunged (mailbox_id, uid, modseq) VALUES (?, ?, ?)",
        [(mailbox_id, uid, modseq) for uid, *_ in gone],
    )
    dead: list[str] = []
    for blob_id, count in sorted(Counter(blob_id for _, blob_id, *_ in gone).items()):
        left = conn.execute(
            "UPDATE blobs SET refcount = refcount - ? WHERE id = ? RETURNING refcount",
            (count, blob_id),
        ).fetchone()
        if left is not None and left[0] <= 0:
            dead.append(blob_id)
    return len(gone), dead


def since(conn: sqlite3.Connection, mailbox_id: int, modseq: int) -> list[ExpungedMessage]:
    query = "SELECT uid, modseq FROM expunged WHERE mailbox_id = ? AND modseq > ? ORDER BY uid"
    return [ExpungedMessage(uid, seq) for uid, seq in conn.execute(query, (mailbox_id, modseq))]
