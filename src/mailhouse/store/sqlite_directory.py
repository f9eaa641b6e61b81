"""Domains, accounts and aliases for the embedded store: who we receive mail for.

Plain functions over a connection, as sqlite_queue.py: reads run on any read connection, writes
on the group-commit writer thread inside its batch transaction. Every change bumps
`meta.directory_serial`, which other processes poll to reload the directory.
"""

from __future__ import annotations

import json
import sqlite3

from mailhouse.model import Account, Directory
from mailhouse.store import sqlite_mailboxes
from mailhouse.store.base import DEFAULT_MAILBOXES


def serial(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = 'directory_serial'").fetchone()
    return int(row[0])


def directory(conn: sqlite3.Connection) -> Directory:
    conn.execute("BEGIN")  # one snapshot for all five queries
    try:
        return Directory(
            serial=serial(conn),
            domains=frozenset(row[0] for row in conn.execute("SELECT name FROM domains")),
            users={row[0]: row[1] for row in conn.execute("SELECT address, id FROM accounts")},
            aliases=list_aliases(conn),
            quotas=dict(conn.execute("SELECT id, quota FROM accounts WHERE quota IS NOT NULL")),
        )
    finally:
        conn.execute("COMMIT")


def list_domains(conn: sqlite3.Connection) -> list[str]:
    return [row[0] for row in conn.execute("SELECT name FROM domains ORDER BY name")]


def get_account(conn: sqlite3.Connection, address: str) -> Account | None:
    row = conn.execute(
        "SELECT id, address, password_hash FROM accounts WHERE address = ?", (address,)
    ).fetchone()
    return Account(*row) if row else None


def list_accounts(conn: sqlite3.Connection) -> list[Account]:
    query = "SELECT id, address, password_hash FROM accounts ORDER BY address"
    return [Account(*row) for row in conn.execute(query)]


def list_aliases(conn: sqlite3.Connection) -> dict[str, tuple[str, ...]]:
    query = "SELECT alias, targets FROM aliases ORDER BY alias"
    return {row[0]: tuple(json.loads(row[1])) for row in conn.execute(query)}


def bump_serial(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'directory_serial'")


def add_domain(conn: sqlite3.Connection, name: str) -> None:
    if conn.execute("INSERT OR IGNORE INTO domains (name) VALUES (?)", (name,)).rowcount:
        bump_serial(conn)


def remove_domain(conn: sqlite3.Connection, name: str) -> bool:
    """Only the domain row: its accounts stay (they stop receiving mail until it comes back)."""
    if conn.execute("DELETE FROM domains WHERE name = ?", (name,)).rowcount:
        bump_serial(conn)
        return True
    return False


def add_account(conn: sqlite3.Connection, address: str, password_hash: str) -> Account:
    try:
        cursor = conn.execute(
            "INSERT INTO accounts (address, password_hash) VALUES (?, ?)", (address, password_hash)
        )
    except sqlite3.IntegrityError:
        raise KeyError(address) from None
    account_id = cursor.lastrowid
    assert account_id is not None
    for name, special_use in DEFAULT_MAILBOXES:
        sqlite_mailboxes.insert(conn, account_id, name, special_use)
        sqlite_mailboxes.subscribe(conn, account_id, name)
    bump_serial(conn)
    return Account(account_id, address, password_hash)


def set_password(conn: sqlite3.Connection, address: str, password_hash: str) -> bool:
    query = "UPDATE accounts SET password_hash = ? WHERE address = ?"
    if conn.execute(query, (password_hash, address)).rowcount:
        bump_serial(conn)
        return True
    return False


def remove_account(conn: sqlite3.Connection, address: str) -> bool:
    row = conn.execute("SELECT id FROM accounts WHERE address = ?", (address,)).fetchone()
    if row is None:
        return False
    # Each message row holds one reference on its blob; rows reaching 0 are unlinked after commit.
    conn.execute(
        "UPDATE blobs SET refcount = refcount - d.n FROM ("
        " SELECT m.blob_id AS blob_id, count(*) AS n FROM messages AS m"
        " JOIN mailboxes AS b ON m.mailbox_id = b.id WHERE b.account_id = ?"
        " GROUP BY m.blob_id) AS d WHERE blobs.id = d.blob_id",
        (row[0],),
    )
    conn.execute("DELETE FROM accounts WHERE id = ?", (row[0],))  # cascades to mailboxes, messages
    bump_serial(conn)
    return True


def set_alias(conn: sqlite3.Connection, alias: str, targets: tuple[str, ...]) -> None:
    conn.execute(
        "INSERT INTO aliases (alias, targets) VALUES (?, ?)"
        " ON CONFLICT (alias) DO UPDATE SET targets = excluded.targets",
        (alias, json.dumps(list(targets))),
    )
    bump_serial(conn)


def remove_alias(conn: sqlite3.Connection, alias: str) -> bool:
    if conn.execute("DELETE FROM aliases WHERE alias = ?", (alias,)).rowcount:
        bump_serial(conn)
        return True
    return False
