"""Operators' API tokens in SQLite (store/base.py, "API tokens"; schema.py's `api_tokens`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from mailhouse.store.base import ApiToken

_TOKEN = ("SELECT t.id, a.name, t.label, t.scopes, t.created, t.expires, t.last_used "
          "FROM api_tokens t JOIN admins a ON a.id = t.admin_id")


def _token(row: tuple[int, str, str, str, float, float | None, float | None]) -> ApiToken:
    token_id, admin, label, scopes, created, expires, last_used = row
    return ApiToken(token_id, admin, label, tuple(scopes.split()), created, expires, last_used)


def add(conn: sqlite3.Connection, admin: str, label: str, scopes: Sequence[str], digest: bytes,
        now: float, expires: float | None) -> ApiToken:
    row = conn.execute("SELECT id FROM admins WHERE name = ?", (admin,)).fetchone()
    if row is None:
        raise KeyError(admin)
    try:
        cursor = conn.execute(
            "INSERT INTO api_tokens (admin_id, label, scopes, digest, created, expires) "
            "VALUES (?, ?, ?, ?, ?, ?)", (row[0], label, " ".join(scopes), digest, now, expires))
    except sqlite3.IntegrityError:
        raise ValueError("a token with this digest exists") from None
    assert cursor.lastrowid is not None
    return ApiToken(cursor.lastrowid, admin, label, tuple(scopes), now, expires, None)


def by_digest(conn: sqlite3.Connection, digest: bytes) -> ApiToken | None:
    row = conn.execute(_TOKEN + " WHERE t.digest = ?", (digest,)).fetchone()
    return None if row is None else _token(row)


def list_for(conn: sqlite3.Connection, admin: str | None) -> list[ApiToken]:
    if admin is None:
        rows = conn.execute(_TOKEN + " ORDER BY t.id")
    else:
        rows = conn.execute(_TOKEN + " WHERE a.name = ? ORDER BY t.id", (admin,))
    return [_token(row) for row in rows]


def remove(conn: sqlite3.Connection, token_id: int) -> ApiToken | None:
    row = conn.execute(_TOKEN + " WHERE t.id = ?", (token_id,)).fetchone()
    if row is None:
        return None
    conn.execute("DELETE FROM api_tokens WHERE id = ?", (token_id,))
    return _token(row)


def touch(conn: sqlite3.Connection, token_id: int, now: float) -> None:
    conn.execute("UPDATE api_tokens SET last_used = ? WHERE id = ?", (now, token_id))
