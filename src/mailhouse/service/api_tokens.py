"""Operators' tokens for the admin API (issue 9 §1): automation authenticates with
`Authorization: Bearer <token>` (RFC 6750) instead of a password and a cookie.

A token is `mh_` and 43 base64url characters: 32 random bytes (256 bits), shown once when it is
made. Only its SHA-256 digest is stored, so a copy of the database holds no usable token; a
slow password hash would add nothing against guessing 256 random bits, and the digest is the
lookup key, so checking a token compares no secret byte by byte in Python (nothing to time).

Each token carries scopes from the fixed set `SCOPES`, and may expire. Its last use is written
at most once per `TOUCH_EVERY` seconds, so a busy script does not turn every read into a write.
Making and revoking tokens is audited like every other change.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from mailhouse.service.accounts import InvalidInput, NotFound
from mailhouse.store.base import ApiToken, Store
from mailhouse.store.rules import check_admin_name

TOKEN_PREFIX: Final = "mh_"
TOKEN_BYTES: Final = 32
_TOKEN_SHAPE: Final = re.compile(r"mh_[A-Za-z0-9_-]{43}")
# What each scope allows (web/api.py checks them; docs/operations.md, "Admin API").
SCOPES: Final = {
    "read": "read domains, users, aliases, the queue's list, DKIM, the certificate, the doctor",
    "accounts": "add and remove domains, users and aliases; set passwords and quotas",
    "queue": "read queued messages' content; retry, flush and delete queued messages",
    "audit": "read the operators' audit log",
}
MAX_LABEL: Final = 100  # characters
MAX_DAYS: Final = 3650  # the longest expiry one may ask for
TOUCH_EVERY: Final = 60.0  # seconds between writes of a token's last use


@dataclass(frozen=True, slots=True)
class NewToken:
    token: ApiToken
    secret: str  # shown once; never stored


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("ascii")).digest()


def check_scopes(scopes: Sequence[str]) -> tuple[str, ...]:
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise InvalidInput(f"scopes are some of {', '.join(SCOPES)}"
                           + (f", not {', '.join(map(repr, unknown))}" if unknown else ""))
    return tuple(dict.fromkeys(scopes))


class ApiTokens:
    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    async def create(self, operator: str, scopes: Sequence[str], *, actor: str, label: str = "",
                     days: int | None = None) -> NewToken:
        try:
            check_admin_name(operator)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        wanted = check_scopes(scopes)
        if len(label) > MAX_LABEL or not label.isprintable():
            raise InvalidInput(f"a label is at most {MAX_LABEL} printable characters")
        if days is not None and not 1 <= days <= MAX_DAYS:
            raise InvalidInput(f"a token expires after 1 to {MAX_DAYS} days, not {days}")
        now = self._clock()
        expires = None if days is None else now + days * 86400.0
        secret = TOKEN_PREFIX + base64.urlsafe_b64encode(
            secrets.token_bytes(TOKEN_BYTES)).decode("ascii").rstrip("=")
        try:
            token = await self._store.add_api_token(operator, label, wanted, digest(secret),
                                                    now, expires)
        except KeyError:
            raise NotFound(f"no operator {operator}") from None
        await self._store.audit(actor, "token.add",
                                f"{token.id} {operator} {' '.join(wanted)}", now)
        return NewToken(token, secret)

    async def list(self, operator: str | None = None) -> list[ApiToken]:
        return await self._store.list_api_tokens(operator)

    async def revoke(self, token_id: int, *, actor: str) -> ApiToken:
        token = await self._store.remove_api_token(token_id)
        if token is None:
            raise NotFound(f"no token {token_id}")
        await self._store.audit(actor, "token.revoke", f"{token_id} {token.admin}", self._clock())
        return token

    async def authenticate(self, secret: str) -> ApiToken | None:
        """The token `secret` is, if it exists and has not expired; else None."""
        if not _TOKEN_SHAPE.fullmatch(secret):
            return None
        token = await self._store.api_token(digest(secret))
        now = self._clock()
        if token is None or (token.expires is not None and token.expires <= now):
            return None
        if token.last_used is None or now - token.last_used >= TOUCH_EVERY:
            await self._store.touch_api_token(token.id, now)
        return token
