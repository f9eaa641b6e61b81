"""The web admin's sessions and its first-start bootstrap secret: both in the main process's
memory, which is where the admin listener runs (net/http.py), so a restart logs every operator
out and voids an unused bootstrap secret — on purpose: neither is worth a table and a purge job.

Sessions: a random id (256 bits) the cookie carries, mapped to the operator and that session's
CSRF token; ended by logout, by `IDLE_TIMEOUT` without a request, by `ABSOLUTE_TIMEOUT` after
login whatever the activity, and, past `MAX_SESSIONS`, the least recently used is dropped (so a
flood of logins cannot grow memory; the flooder needs valid passwords anyway).
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

log = logging.getLogger("mailhouse.admin")

MAX_SESSIONS: Final = 1000
IDLE_TIMEOUT: Final = 30 * 60.0  # seconds without a request
ABSOLUTE_TIMEOUT: Final = 12 * 3600.0  # seconds after login, however active
FORM_TOKEN_LIFETIME: Final = 3600.0  # a login or setup form's CSRF token (seconds)


@dataclass(slots=True)
class Session:
    id: str
    operator: str
    credential: str  # a digest of the operator's password hash at login (web/pages.py)
    csrf: str
    created: float
    last_seen: float
    # What the last action did, shown once on the page it redirected to: (kind, text), kind
    # "ok" or "error".
    notice: tuple[str, str] | None = None


@dataclass(slots=True)
class Sessions:
    clock: Callable[[], float] = time.monotonic
    max_sessions: int = MAX_SESSIONS
    idle_timeout: float = IDLE_TIMEOUT
    absolute_timeout: float = ABSOLUTE_TIMEOUT
    _by_id: OrderedDict[str, Session] = field(default_factory=OrderedDict)

    def create(self, operator: str, credential: str = "") -> Session:
        """A new session (a new id at every login: a session id planted before the login is
        worth nothing after it)."""
        now = self.clock()
        session = Session(secrets.token_urlsafe(32), operator, credential,
                          secrets.token_urlsafe(32), now, now)
        self._by_id[session.id] = session
        while len(self._by_id) > self.max_sessions:
            dropped = self._by_id.popitem(last=False)[1]
            log.info("event=admin.session_evicted operator=%s", dropped.operator)
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id, its idle clock restarted; None (and forgotten) when
        it timed out."""
        if not session_id:
            return None
        session = self._by_id.get(session_id)
        if session is None:
            return None
        now = self.clock()
        if (now - session.last_seen > self.idle_timeout
                or now - session.created > self.absolute_timeout):
            del self._by_id[session_id]
            return None
        session.last_seen = now
        self._by_id.move_to_end(session_id)
        return session

    def adopt(self, session: Session) -> None:
        """Keep (or put back) a live session, as the most recently used."""
        self._by_id[session.id] = session
        self._by_id.move_to_end(session.id)

    def end(self, session_id: str) -> None:
        self._by_id.pop(session_id, None)

    def end_operator(self, operator: str) -> None:
        """Every session of `operator` (removed, or their password changed elsewhere)."""
        for sid in [s.id for s in self._by_id.values() if s.operator == operator]:
            del self._by_id[sid]

    def __len__(self) -> int:
        return len(self._by_id)


class FormTokens:
    """CSRF tokens for the forms shown before a session exists (login, setup): an HMAC of the
    time under a per-process key, so they need no server-side state. The Origin check and the
    SameSite cookie stand in front of them; these close the remaining gap (a login CSRF)."""

    def __init__(self, clock: Callable[[], float] = time.time,
                 lifetime: float = FORM_TOKEN_LIFETIME) -> None:
        self._key = secrets.token_bytes(32)
        self._clock = clock
        self._lifetime = lifetime

    def issue(self) -> str:
        stamp = str(int(self._clock()))
        return f"{stamp}.{self._mac(stamp)}"

    def valid(self, token: str) -> bool:
        stamp, _, mac = token.partition(".")
        # ASCII first: compare_digest refuses non-ASCII str, and int() reads digits like '²'
        # that isdigit() admits. A form field is peer text.
        if not (stamp.isascii() and stamp.isdigit()) or not hmac.compare_digest(
                mac.encode(), self._mac(stamp).encode()):
            return False
        return 0 <= self._clock() - int(stamp) <= self._lifetime

    def _mac(self, stamp: str) -> str:
        return hmac.digest(self._key, stamp.encode(), "sha256").hex()


class Bootstrap:
    """The one-time secret that lets whoever can read the server's start output make the first
    operator (never a default password). Armed at start when no operator exists; valid until
    used or the process ends."""

    def __init__(self) -> None:
        self._secret: str | None = None

    def arm(self) -> str:
        self._secret = secrets.token_urlsafe(32)
        return self._secret

    @property
    def armed(self) -> bool:
        return self._secret is not None

    def take(self, offered: str) -> bool:
        """True once for the right secret, which is then gone (single use). Called before
        the first await of the request that uses it, so two requests cannot both take it."""
        secret = self._secret
        if secret is None or not hmac.compare_digest(offered.encode(), secret.encode()):
            return False
        self._secret = None
        return True

    def restore(self, secret: str) -> None:
        """Put a taken secret back (the operator could not be made: a bad name, say)."""
        if self._secret is None:
            self._secret = secret

    def disarm(self) -> None:
        self._secret = None
