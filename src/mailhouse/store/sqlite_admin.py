"""Operators and the audit log in SQLite (store/base.py, "operators")."""

from __future__ import annotations

import sqlite3

from mailhouse.store.base import AdminAccount, AuditEntry

_ADMIN = "SELECT id, name, password_hash, created FROM admins"


def add(conn: sqlite3.Connection, name: str, password_hash: str, now: float) -> AdminAccount:
    try:
        cursor = conn.execute(
            "INSERT INTO admins (name, password_hash, created) VALUES (?, ?, ?)",
            (name, password_hash, now))
    except sqlite3.IntegrityError:
        raise KeyError(name) from None
    assert cursor.lastrowid is not None
    return AdminAccount(cursor.lastrowid, name, password_hash, now)


def get(conn: sqlite3.Connection, name: str) -> AdminAccount | None:
    row = conn.execute(_ADMIN + " WHERE name = ?", (name,)).fetchone()
    return None if row is None else AdminAccount(*row)


def list_all(conn: sqlite3.Connection) -> list[AdminAccount]:
    return [AdminAccount(*row) for row in conn.execute(_ADMIN + " ORDER BY name")]


def set_password(conn: sqlite3.Connection, name: str, password_hash: str) -> bool:
    cursor = conn.execute("UPDATE admins SET password_hash = ? WHERE name = ?",
                          (password_hash, name))
    return cursor.rowcount > 0


def remove(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("DELETE FROM admins WHERE name = ?", (name,)).rowcount > 0


def audit(conn: sqlite3.Connection, actor: str, action: str, detail: str, now: float) -> None:
    conn.execute("INSERT INTO audit (at, actor, action, detail) VALUES (?, ?, ?, ?)",
                 (now, actor, action, detail))


def list_audit(conn: sqlite3.Connection, limit: int) -> list[AuditEntry]:
    return [AuditEntry(*row) for row in conn.execute(
        "SELECT id, at, actor, action, detail FROM audit ORDER BY id DESC LIMIT ?", (limit,))]
