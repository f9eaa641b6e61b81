"""Logins for IMAP, and what every session of one server shares."""

from __future__ import annotations

import logging

from mailhouse.errors import MailError
from mailhouse.proto.imap.server import LoginOutcome
from mailhouse.service.imap.session import ImapSession
from mailhouse.service.imap.settings import ImapSettings
from mailhouse.service.imap_api import MailSession
from mailhouse.service.throttle import LoginGuard
from mailhouse.store.base import Store
from mailhouse.store.wakeup import Wakeups

log = logging.getLogger("mailhouse.imap")

class ImapMailService:
    """One per process serving IMAP."""

    def __init__(self, store: Store, guard: LoginGuard, wakeups: Wakeups | None = None,
                 settings: ImapSettings | None = None) -> None:
        self._store = store
        self._guard = guard
        self._wakeups = wakeups if wakeups is not None else store.wakeups
        self.settings = settings or ImapSettings()

    async def login(self, ip: str, username: str, password: str,
                    authzid: str = "") -> tuple[LoginOutcome, MailSession | None]:
        if authzid and authzid != username:
            # No proxy authorisation (RFC 4616 §2): an authzid other than the user fails.
            return LoginOutcome.FAILED, None
        try:
            outcome = await self._guard.login(ip, username, password)
        except MailError:
            log.warning("event=imap.login_store_failed ip=%s", ip, exc_info=True)
            return LoginOutcome.UNAVAILABLE, None
        if outcome.throttled:
            return LoginOutcome.THROTTLED, None
        if outcome.account is None:
            return LoginOutcome.FAILED, None
        watch = self._wakeups.watch(outcome.account.id) if self._wakeups is not None else None
        return LoginOutcome.OK, ImapSession(self._store, outcome.account, self.settings, watch)
