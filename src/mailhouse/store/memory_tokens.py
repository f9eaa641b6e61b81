"""Operators' API tokens in memory (MemoryStore's mixin; store/base.py, "API tokens")."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace

from mailhouse.store.base import AdminAccount, ApiToken
from mailhouse.store.rules import check_scopes


class MemoryTokens:
    """Mixed into MemoryStore after MemoryAdmins. A token goes with its operator as SQLite's
    ON DELETE CASCADE does: operator ids are never reused, so a token whose operator id is no
    longer among the operators is gone (and dropped when next seen)."""

    _admins: dict[str, AdminAccount]
    _tokens: dict[int, tuple[int, bytes, ApiToken]]  # id -> (operator id, digest, token)
    _token_ids: Iterator[int]

    def _check_open(self) -> None:
        raise NotImplementedError  # MemoryStore's

    def _init_tokens(self) -> None:
        self._tokens = {}
        self._token_ids = iter(range(1, 1 << 62))

    def _live(self) -> list[tuple[int, bytes, ApiToken]]:
        operators = {a.id: a.name for a in self._admins.values()}
        for token_id, (admin_id, _, _) in list(self._tokens.items()):
            if admin_id not in operators:
                del self._tokens[token_id]
        return list(self._tokens.values())

    async def add_api_token(self, admin: str, label: str, scopes: Sequence[str], digest: bytes,
                            now: float, expires: float | None) -> ApiToken:
        self._check_open()
        scopes = check_scopes(scopes)
        operator = self._admins.get(admin)
        if operator is None:
            raise KeyError(admin)
        if any(d == digest for _, d, _ in self._live()):
            raise ValueError("a token with this digest exists")
        token = ApiToken(next(self._token_ids), admin, label, scopes, now, expires, None)
        self._tokens[token.id] = (operator.id, digest, token)
        return token

    async def api_token(self, digest: bytes) -> ApiToken | None:
        self._check_open()
        return next((t for _, d, t in self._live() if d == digest), None)

    async def list_api_tokens(self, admin: str | None = None) -> list[ApiToken]:
        self._check_open()
        return [t for _, _, t in self._live() if admin is None or t.admin == admin]

    async def remove_api_token(self, token_id: int) -> ApiToken | None:
        self._check_open()
        self._live()
        entry = self._tokens.pop(token_id, None)
        return None if entry is None else entry[2]

    async def touch_api_token(self, token_id: int, now: float) -> None:
        self._check_open()
        entry = self._tokens.get(token_id)
        if entry is not None:
            admin_id, digest, token = entry
            self._tokens[token_id] = (admin_id, digest, replace(token, last_used=now))
