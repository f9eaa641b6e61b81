"""Mailboxes and subscriptions for the embedded store (schema version 3).

Plain functions over a connection, as sqlite_expunge.py: the writes run on the group-commit writer
thread inside its batch transaction (sqlite_writer.py), so each operation is one transaction,
durable when the caller's future resolves; the reads run on any read connection.

A subtree is a range of the (account_id, name) unique index (rules.subtree_bounds), so RENAME of
a whole hierarchy and the "is anything below this name" checks never scan other accounts' rows.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from typing import Any

from mailhouse.store.base import MailboxExists, MailboxInfo, MailboxNotAllowed, NoSuchMailbox
from mailhouse.store.rules import INBOX, check_rename, next_uidvalidity, subtree_bounds

_MAILBOX = (
    "SELECT id, account_id, name, special_use, uidvalidity, uidnext, highest_modseq,"
    " EXISTS (SELECT 1 FROM subscriptions AS s WHERE s.account_id = mailboxes.account_id"
    " AND s.name = mailboxes.name), message_count, unseen, deleted, total_size FROM mailboxes"
)


# --- reads ----------------------------------------------------------------------------------------
def list_all(conn: sqlite3.Connection, account_id: int) -> list[MailboxInfo]:
    query = _MAILBOX + " WHERE account_id = ? ORDER BY id"
    return [_mailbox(row) for row in conn.execute(query, (account_id,))]


def get(conn: sqlite3.Connection, account_id: int, name: str) -> MailboxInfo | None:
    query = _MAILBOX + " WHERE account_id = ? AND name = ?"
    row = conn.execute(query, (account_id, name)).fetchone()
    return None if row is None else _mailbox(row)


def _mailbox(r: tuple[Any, ...]) -> MailboxInfo:
    return MailboxInfo(
        r[0], r[1], r[2], r[3], r[4], r[5], r[6], bool(r[7]), r[8], r[9], r[10], r[11]
    )


def by_id(conn: sqlite3.Connection, mailbox_id: int) -> MailboxInfo | None:
    row = conn.execute(_MAILBOX + " WHERE id = ?", (mailbox_id,)).fetchone()
    return None if row is None else _mailbox(row)


def owner_and_modseq(conn: sqlite3.Connection, mailbox_id: int) -> tuple[int, int] | None:
    """The account and HIGHESTMODSEQ a wake-up names (store/wakeup.py); None once deleted."""
    row = conn.execute("SELECT account_id, highest_modseq FROM mailboxes WHERE id = ?",
                       (mailbox_id,)).fetchone()
    return None if row is None else (int(row[0]), int(row[1]))


def subscriptions(conn: sqlite3.Connection, account_id: int) -> list[str]:
    query = "SELECT name FROM subscriptions WHERE account_id = ? ORDER BY name"
    return [row[0] for row in conn.execute(query, (account_id,))]


# --- writes (writer thread) -----------------------------------------------------------------------
def insert(
    conn: sqlite3.Connection, account_id: int, name: str, special_use: str | None
) -> MailboxInfo:
    """A new mailbox row with the next UIDVALIDITY of the store (meta.last_uidvalidity)."""
    (last,) = conn.execute("SELECT value FROM meta WHERE key = 'last_uidvalidity'").fetchone()
    uidvalidity = next_uidvalidity(int(last), time.time())
    conn.execute("UPDATE meta SET value = ? WHERE key = 'last_uidvalidity'", (uidvalidity,))
    cursor = conn.execute(
        "INSERT INTO mailboxes (account_id, name, special_use, uidvalidity, highest_modseq)"
        " VALUES (?, ?, ?, ?, 1)",  # RFC 7162 §3.1.2.1: HIGHESTMODSEQ >= 1 from the start
        (account_id, name, special_use, uidvalidity),
    )
    mailbox_id = cursor.lastrowid
    assert mailbox_id is not None
    return MailboxInfo(mailbox_id, account_id, name, special_use, uidvalidity, 1, 1, False, 0)


def create(
    conn: sqlite3.Connection, account_id: int, name: str, special_use: str | None
) -> MailboxInfo:
    if conn.execute("SELECT 1 FROM accounts WHERE id = ?", (account_id,)).fetchone() is None:
        raise KeyError(account_id)
    if get(conn, account_id, name) is not None:  # a \\Noselect level may become a mailbox
        raise MailboxExists(name)
    insert(conn, account_id, name, special_use)
    created = get(conn, account_id, name)  # `subscribed` may be true already
    assert created is not None
    return created


def delete(conn: sqlite3.Connection, account_id: int, name: str) -> list[str]:
    """Returns the blobs left without references (the caller unlinks them after the commit).
    The messages and the expunge history cascade with the row."""
    if name == INBOX:
        raise MailboxNotAllowed("INBOX cannot be deleted")
    row = conn.execute(
        "SELECT id FROM mailboxes WHERE account_id = ? AND name = ?", (account_id, name)
    ).fetchone()
    if row is None:
        raise NoSuchMailbox(name)
    blobs = conn.execute(
        "SELECT blob_id FROM messages WHERE mailbox_id = ?", (row[0],)
    ).fetchall()
    conn.execute("DELETE FROM mailboxes WHERE id = ?", (row[0],))
    return release(conn, Counter(blob_id for (blob_id,) in blobs))


def release(conn: sqlite3.Connection, references: Counter[str]) -> list[str]:
    dead: list[str] = []
    for blob_id, count in sorted(references.items()):
        left = conn.execute(
            "UPDATE blobs SET refcount = refcount - ? WHERE id = ? RETURNING refcount",
            (count, blob_id),
        ).fetchone()
        if left is not None and left[0] <= 0:
            dead.append(blob_id)
    return dead


def rename(conn: sqlite3.Connection, account_id: int, old: str, new: str) -> None:
    check_rename(old, new, _exists(conn, account_id, old), _exists(conn, account_id, new))
    if old == INBOX:
        _rename_inbox(conn, account_id, new)
        return
    # Every target name lies in `new`'s subtree, which is empty: no row can collide mid-update.
    low, high = subtree_bounds(old)
    conn.execute(
        "UPDATE mailboxes SET name = ? || substr(name, ?) WHERE account_id = ?"
        " AND (name = ? OR (name > ? AND name < ?))",
        (new, len(old) + 1, account_id, old, low, high),
    )


def _rename_inbox(conn: sqlite3.Connection, account_id: int, new: str) -> None:
    """RFC 9051 §6.3.6: INBOX's messages move to a new mailbox, INBOX stays, empty. The rows
    keep their UIDs and MODSEQs (the new mailbox has a new UIDVALIDITY and INBOX's counters), so
    blobs keep their references; INBOX records them as expunged under one new MODSEQ."""
    inbox = get(conn, account_id, INBOX)
    assert inbox is not None
    target = insert(conn, account_id, new, None)
    conn.execute(
        "UPDATE mailboxes SET uidnext = ?, highest_modseq = ?, message_count = ?, unseen = ?,"
        " deleted = ?, total_size = ? WHERE id = ?",
        (inbox.uidnext, inbox.highest_modseq, inbox.message_count, inbox.unseen, inbox.deleted,
         inbox.size, target.id),
    )
    uids = conn.execute(
        "UPDATE messages SET mailbox_id = ? WHERE mailbox_id = ? RETURNING uid",
        (target.id, inbox.id),
    ).fetchall()
    if not uids:
        return
    (modseq,) = conn.execute(
        "UPDATE mailboxes SET highest_modseq = highest_modseq + 1, message_count = 0,"
        " unseen = 0, deleted = 0, total_size = 0"
        " WHERE id = ? RETURNING highest_modseq",
        (inbox.id,),
    ).fetchone()
    conn.executemany(
        "INSERT OR REPLACE INTO expunged (mailbox_id, uid, modseq) VALUES (?, ?, ?)",
        [(inbox.id, uid, modseq) for (uid,) in uids],
    )


def _exists(conn: sqlite3.Connection, account_id: int, name: str) -> bool:
    """A mailbox of that name, or a \\Noselect level with mailboxes below it."""
    low, high = subtree_bounds(name)
    row = conn.execute(
        "SELECT 1 FROM mailboxes WHERE account_id = ? AND (name = ? OR (name > ? AND name < ?))"
        " LIMIT 1",
        (account_id, name, low, high),
    ).fetchone()
    return row is not None


def subscribe(conn: sqlite3.Connection, account_id: int, name: str) -> None:
    try:
        conn.execute(
            "INSERT OR IGNORE INTO subscriptions (account_id, name) VALUES (?, ?)",
            (account_id, name),
        )
    except sqlite3.IntegrityError:  # the foreign key: no such account
        raise KeyError(account_id) from None


def unsubscribe(conn: sqlite3.Connection, account_id: int, name: str) -> bool:
    query = "DELETE FROM subscriptions WHERE account_id = ? AND name = ?"
    return bool(conn.execute(query, (account_id, name)).rowcount)
