"""Operators and the audit log in memory (MemoryStore's mixin; store/base.py, "operators")."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import replace

from mailhouse.store.base import AdminAccount, AuditEntry
from mailhouse.store.rules import check_admin_name


class MemoryAdmins:
    """Mixed into MemoryStore, which provides `_check_open`."""

    _admins: dict[str, AdminAccount]
    _audit: list[AuditEntry]
    _admin_ids: Iterator[int]

    def _check_open(self) -> None:
        raise NotImplementedError  # MemoryStore's

    def _init_admins(self) -> None:
        self._admins = {}
        self._audit = []
        self._admin_ids = itertools.count(1)  # never reused, as SQLite's AUTOINCREMENT

    async def add_admin(self, name: str, password_hash: str, now: float) -> AdminAccount:
        self._check_open()
        check_admin_name(name)
        if name in self._admins:
            raise KeyError(name)
        admin = AdminAccount(next(self._admin_ids), name, password_hash, now)
        self._admins[name] = admin
        return admin

    async def get_admin(self, name: str) -> AdminAccount | None:
        self._check_open()
        return self._admins.get(name)

    async def list_admins(self) -> list[AdminAccount]:
        self._check_open()
        return sorted(self._admins.values(), key=lambda a: a.name)

    async def set_admin_password(self, name: str, password_hash: str) -> bool:
        self._check_open()
        admin = self._admins.get(name)
        if admin is None:
            return False
        self._admins[name] = replace(admin, password_hash=password_hash)
        return True

    async def remove_admin(self, name: str) -> bool:
        self._check_open()
        return self._admins.pop(name, None) is not None

    async def audit(self, actor: str, action: str, detail: str, now: float) -> None:
        self._check_open()
        self._audit.append(AuditEntry(len(self._audit) + 1, now, actor, action, detail))

    async def list_audit(self, limit: int) -> list[AuditEntry]:
        self._check_open()
        return list(reversed(self._audit))[:limit]
