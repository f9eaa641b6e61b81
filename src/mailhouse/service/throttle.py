"""Slowing down password guessing, for every protocol that takes passwords (submission now, IMAP
and POP3 later): one `LoginThrottle` per server, one `LoginGuard` around `Accounts.authenticate`.

The rules (security.md §3 AUTH, checklist 11):
- Failures are counted per client IP and per account name over a sliding window
  (`submission.auth_failure_window`). At `auth_failure_limit` failures either key is locked
  until its oldest failure leaves the window: the attempt is refused without checking the
  password at all, so a lock cannot be used as an oracle (a right password is refused too).
- The account key is counted whether or not the account exists, and a lock is answered the same
  way for both, so locking reveals nothing about which accounts exist.
- Per-account counting stops an attacker spreading guesses over many IPs, but also lets anyone
  lock a user out. To soften that, a client IP that logged into an account successfully within
  the window is exempt from that account's lock (not from its own IP lock): the user's own
  client keeps working while someone else hammers the account.
- IPv6 clients are counted per /64, the smallest block one subscriber usually gets; counting
  single addresses would give an attacker 2^64 fresh keys.
- Once a key has a failure in the window, attempts still being checked count as failures for
  `check()`, so a burst of parallel guesses cannot all slip through before their failures are
  recorded. A key with no failure does not count them: a client opening many connections at
  once with the right password (Thunderbird, a benchmark, a phone reconnecting) is never locked
  out by its own good logins.
- Every failed or refused attempt is answered `auth_failure_delay` seconds after it arrived,
  whatever the check cost: an unknown user, a wrong password and a lock take the same time.
- Memory is bounded: each key keeps at most `limit` timestamps, expired keys are pruned as new
  ones arrive, and past `max_keys` the least recently failed key is forgotten (an attacker's own
  key is always the most recent one, so flooding cannot evict it).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from mailhouse.config import SubmissionConfig
from mailhouse.model import Account, Address, AddressError

log = logging.getLogger("mailhouse.auth")

DEFAULT_MAX_KEYS = 100_000
INVALID_USER_KEY = "user:<invalid>"  # every name that cannot be an account shares one key


def ip_key(ip: str) -> str:
    """The key one client's failures are counted under: the address, or its /64 for IPv6."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return "ip:" + ip[:64]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return f"ip:{address.ipv4_mapped}"
        return f"ip:{ipaddress.IPv6Network((address, 64), strict=False)}"
    return f"ip:{address}"


def user_key(username: str) -> str:
    """The canonical account key (Address.key), so `Alice@Example.TEST` and `alice@example.test`
    share one counter as they share one account."""
    try:
        return "user:" + Address.parse(username.strip()).key
    except AddressError:
        return INVALID_USER_KEY


class LoginThrottle:
    """Counts failed logins per IP and per account name over a sliding window."""

    def __init__(self, limit: int, window: float, *, max_keys: int = DEFAULT_MAX_KEYS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._clock = clock
        # key -> the last `limit` failure times, oldest first; ordered by last failure.
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        # (ip key, user key) -> when the exemption from the account lock ends.
        self._trusted: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._inflight: Counter[str] = Counter()

    @classmethod
    def from_config(cls, config: SubmissionConfig) -> LoginThrottle:
        return cls(config.auth_failure_limit, config.auth_failure_window)

    def check(self, ip: str, username: str) -> bool:
        """May this attempt go ahead? False while the IP or the account name is locked."""
        now = self._clock()
        ipk, userk = ip_key(ip), user_key(username)
        if self._count(ipk, now) >= self.limit:
            return False
        expiry = self._trusted.get((ipk, userk))
        if expiry is not None and expiry > now:
            return True
        return self._count(userk, now) < self.limit

    def record_failure(self, ip: str, username: str) -> None:
        now = self._clock()
        for key in (ip_key(ip), user_key(username)):
            times = self._failures.get(key)
            if times is None:
                times = self._failures[key] = deque(maxlen=self.limit)
            else:
                self._failures.move_to_end(key)
            times.append(now)
        self._prune(now)

    def record_success(self, ip: str, username: str) -> None:
        """Exempt this IP from the account's lock for one window (see the module docstring).
        Counters are not cleared: an attacker holding one valid account must not be able to
        reset its IP's count by logging into it."""
        now = self._clock()
        pair = (ip_key(ip), user_key(username))
        self._trusted.pop(pair, None)
        self._trusted[pair] = now + self.window
        self._prune(now)

    @contextlib.contextmanager
    def attempt(self, ip: str, username: str) -> Iterator[None]:
        """Count an attempt as a failure for `check()` while its password is being checked."""
        keys = (ip_key(ip), user_key(username))
        self._inflight.update(keys)
        try:
            yield
        finally:
            self._inflight.subtract(keys)
            for key in keys:
                if self._inflight[key] <= 0:
                    del self._inflight[key]

    @property
    def tracked_keys(self) -> int:
        return len(self._failures) + len(self._trusted)

    # --- internals -------------------------------------------------------------------------
    def _count(self, key: str, now: float) -> int:
        times = self._failures.get(key)
        recent = 0
        if times is not None:
            horizon = now - self.window
            while times and times[0] <= horizon:
                times.popleft()
            recent = len(times)
            if not times:
                del self._failures[key]
        return recent + self._inflight.get(key, 0) if recent else 0

    def _prune(self, now: float) -> None:
        """Drop expired entries from the old end; evict the oldest past `max_keys`."""
        horizon = now - self.window
        failures = self._failures
        while failures:
            key, times = next(iter(failures.items()))
            if times and times[-1] > horizon:
                break
            del failures[key]
        trusted = self._trusted
        while trusted and next(iter(trusted.values())) <= now:
            trusted.popitem(last=False)
        evicted = 0
        while len(failures) + len(trusted) > self.max_keys:
            if trusted:
                trusted.popitem(last=False)
            else:
                failures.popitem(last=False)
            evicted += 1
        if evicted:
            log.warning("event=auth.throttle_full evicted=%d max_keys=%d", evicted,
                        self.max_keys)


class Authenticator(Protocol):
    """service.accounts.Accounts, or a stand-in in tests."""

    async def authenticate(self, username: str, password: str) -> Account | None: ...


@dataclass(frozen=True, slots=True)
class LoginOutcome:
    account: Account | None  # set when the login succeeded
    throttled: bool = False  # refused without checking: the IP or the account is locked


class LoginGuard:
    """The one path from a protocol's credentials to an account: throttle, password check in a
    thread (Accounts.authenticate), and the constant failure delay. Protocols map the outcome
    onto their replies (SMTP: 235 / 535 5.7.8 / 454 4.7.0)."""

    def __init__(self, accounts: Authenticator, throttle: LoginThrottle, delay: float) -> None:
        self.accounts = accounts
        self.throttle = throttle
        self.delay = delay

    async def login(self, ip: str, username: str, password: str) -> LoginOutcome:
        loop = asyncio.get_running_loop()
        started = loop.time()
        throttle = self.throttle
        if not throttle.check(ip, username):
            log.info("event=auth.throttled ip=%s user=%s", ip, user_key(username)[5:])
            await self._delay(loop, started)
            return LoginOutcome(None, throttled=True)
        with throttle.attempt(ip, username):
            account = await self.accounts.authenticate(username, password)
            if account is None:
                throttle.record_failure(ip, username)
            else:
                throttle.record_success(ip, username)
        if account is None:
            log.info("event=auth.failed ip=%s user=%s", ip, user_key(username)[5:])
            await self._delay(loop, started)
            return LoginOutcome(None)
        return LoginOutcome(account)

    async def _delay(self, loop: asyncio.AbstractEventLoop, started: float) -> None:
        # Measured from the attempt's arrival, not added after the check, so the reply time
        # does not depend on how long the check took (an argon2 hash of older parameters, the
        # store's lookup, a lock that skipped the check).
        await asyncio.sleep(max(0.0, self.delay - (loop.time() - started)))
