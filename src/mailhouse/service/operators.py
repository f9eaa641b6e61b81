"""The server's operators (issue 9 §1): accounts that run the server, not mailboxes, with
Argon2 passwords like mail accounts and every change written to the audit log, whichever face
(the CLI now, the admin API later) made it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from mailhouse.service.accounts import (
    AccountError,
    InvalidInput,
    NotFound,
    Passwords,
    check_password,
)
from mailhouse.store.base import AdminAccount, AuditEntry, Store
from mailhouse.store.rules import check_admin_name

AUDIT_PAGE = 100  # entries `audit_log` returns unless asked for another number (at most 10,000)
# An operator's password opens the whole server: at least this many characters, whichever face
# sets it. A length rule, not a composition rule (NIST SP 800-63B §5.1.1): long passphrases
# are what resists guessing.
OPERATOR_PASSWORD_MIN = 12


class Operators:
    def __init__(self, store: Store, passwords: Passwords | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._passwords = passwords or Passwords()
        self._clock = clock

    async def add(self, name: str, password: str, actor: str) -> AdminAccount:
        _valid_name(name)
        check_operator_password(password)
        password_hash = await asyncio.to_thread(self._passwords.hash, password)
        try:
            admin = await self._store.add_admin(name, password_hash, self._clock())
        except KeyError:
            raise AccountError(f"an operator named {name} exists already") from None
        await self._store.audit(actor, "operator.add", name, self._clock())
        return admin

    async def set_password(self, name: str, password: str, actor: str) -> None:
        _valid_name(name)
        check_operator_password(password)
        password_hash = await asyncio.to_thread(self._passwords.hash, password)
        if not await self._store.set_admin_password(name, password_hash):
            raise NotFound(f"no operator {name}")
        await self._store.audit(actor, "operator.password", name, self._clock())

    async def remove(self, name: str, actor: str) -> None:
        _valid_name(name)
        if not await self._store.remove_admin(name):
            raise NotFound(f"no operator {name}")
        await self._store.audit(actor, "operator.remove", name, self._clock())

    async def list_all(self) -> list[AdminAccount]:
        return await self._store.list_admins()

    async def any_exist(self) -> bool:
        """Whether the first operator has been made (the web admin's bootstrap asks)."""
        return bool(await self._store.list_admins())

    async def authenticate(self, name: str, password: str) -> AdminAccount | None:
        """The operator when `password` is theirs. An unknown or malformed name costs the same
        Argon2 verification as a wrong password (Passwords.verify's dummy hash), so timing does
        not tell which names exist. Throttling is the caller's (it knows the client)."""
        try:
            check_admin_name(name)
            admin = await self._store.get_admin(name)
        except ValueError:
            admin = None
        stored = admin.password_hash if admin is not None else None
        ok = await asyncio.to_thread(self._passwords.verify, stored, password)
        return admin if ok and admin is not None else None

    async def audit_log(self, limit: int = AUDIT_PAGE) -> list[AuditEntry]:
        if not 1 <= limit <= 10_000:
            raise InvalidInput("the number of entries must be between 1 and 10000")
        return await self._store.list_audit(limit)


def check_operator_password(password: str) -> None:
    """InvalidInput unless `password` is long enough (and valid as every password is)."""
    check_password(password)
    if len(password) < OPERATOR_PASSWORD_MIN:
        raise InvalidInput(f"the password must have at least {OPERATOR_PASSWORD_MIN} "
                           "characters")


def _valid_name(name: str) -> None:
    try:
        check_admin_name(name)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
