"""Slowing down password guessing, for every protocol that takes passwords (submission, POP3,
IMAP later): one `LoginThrottle` per server, one `LoginGuard` around `Accounts.authenticate`.

The rules (security.md §3 AUTH, checklist 11 and 41):
- Failures are counted per client IP and per account name over a sliding window
  (`submission.auth_failure_window`). At `auth_failure_limit` failures either key is locked
  until its oldest failure leaves the window: the attempt is refused without checking the
  password at all, so a lock cannot be used as an oracle (a right password is refused too).
- Checks in flight count from the first one. A password check must first take a slot of both
  its keys, and a key has `limit - recent failures` slots: a check that fails keeps its slot's
  worth of allowance (it becomes a failure), a check that succeeds gives it back. So however
  many attempts arrive at once, at most `limit` passwords are checked per window and key,
  without a good login ever counting against its client: 20 connections opened at once with
  the right password (Thunderbird, a benchmark, a phone reconnecting) take turns for the slots
  and all get in. An attempt that finds no free slot waits, first come first served, up to
  `submission.auth_queue_timeout` seconds, then is answered as throttled; waiters whose key
  got locked meanwhile are answered at once.
- One authority for the whole server: the main process owns the `LoginThrottle`; submission
  and in-process POP3 use it directly, POP3 worker processes through a private channel
  (throttle_channel.py), so guesses spread over processes and protocols add up.
- The account key is counted whether or not the account exists, and a lock is answered the same
  way for both, so locking reveals nothing about which accounts exist.
- Per-account counting stops an attacker spreading guesses over many IPs, but also lets anyone
  lock a user out. To soften that, a client IP that logged into an account successfully within
  the window is exempt from that account's lock and slots (not from its own IP's): the user's
  own client keeps working while someone else hammers the account.
- IPv6 clients are counted per /64, the smallest block one subscriber usually gets; counting
  single addresses would give an attacker 2^64 fresh keys.
- Every failed or refused attempt is answered `auth_failure_delay` seconds after it arrived,
  whatever the check (or the wait for a slot) cost: an unknown user, a wrong password and a lock
  take the same time.
- Memory is bounded: each key keeps at most `limit` timestamps, expired keys are pruned as new
  ones arrive, and past `max_keys` the least recently failed key is forgotten (an attacker's own
  key is always the most recent one, so flooding cannot evict it). Slots in use and waiters
  exist only for attempts in progress (bounded by the connection caps; past `max_waiters` an
  attempt that would wait is refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
import itertools
import logging
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from mailhouse.config import SubmissionConfig
from mailhouse.model import Account, Address, AddressError

log = logging.getLogger("mailhouse.auth")

DEFAULT_MAX_KEYS = 100_000
DEFAULT_MAX_WAITERS = 10_000  # attempts waiting for a slot, all keys together
DEFAULT_QUEUE_TIMEOUT = 10.0  # submission.auth_queue_timeout's default
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


class CheckResult(enum.Enum):
    """How an admitted password check ended."""

    SUCCESS = "success"  # gives its slot back, trusts the (IP, account) pair
    FAILURE = "failure"  # recorded against both keys
    ABANDONED = "abandoned"  # no answer reached the client (error, cancelled, worker died)


@dataclass(frozen=True, slots=True)
class Ticket:
    """One admitted password check; release it exactly once with its CheckResult."""

    ip_key: str
    user_key: str
    held: tuple[str, ...] = ()  # the keys whose slots it holds (LoginThrottle)
    id: int = 0  # unique per issuer: LoginThrottle, or a channel's request id


class Busy(enum.Enum):
    BUSY = "busy"  # no free slot now: wait for one


BUSY = Busy.BUSY


class ThrottleGate(Protocol):
    """What LoginGuard needs: LoginThrottle in the main process, RemoteThrottle in a worker."""

    async def acquire(self, ip: str, username: str) -> Ticket | None:
        """A ticket to check the password, or None: refused (locked, or no slot in time)."""
        ...

    def release(self, ticket: Ticket, result: CheckResult) -> None: ...


@dataclass(slots=True, eq=False)
class _Waiter:
    seq: int  # arrival order
    ip_key: str
    user_key: str
    future: asyncio.Future[Ticket | None] = field(repr=False)


class LoginThrottle:
    """Counts failed logins per IP and per account name over a sliding window, and the password
    checks in flight against them (see the module docstring)."""

    def __init__(self, limit: int, window: float, *, max_keys: int = DEFAULT_MAX_KEYS,
                 queue_timeout: float = DEFAULT_QUEUE_TIMEOUT,
                 max_waiters: int = DEFAULT_MAX_WAITERS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self.queue_timeout = queue_timeout
        self.max_waiters = max_waiters
        self._clock = clock
        # key -> the last `limit` failure times, oldest first; ordered by last failure.
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        # (ip key, user key) -> when the exemption from the account lock ends.
        self._trusted: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._inflight: Counter[str] = Counter()  # key -> slots in use
        self._tickets: set[int] = set()  # ids of the tickets not yet released
        self._ids = itertools.count(1)
        # key -> the waiters that need a slot of it, in arrival order (each waiter is under
        # both its keys: only a release on one of them can let it in or lock it out).
        self._queues: dict[str, deque[_Waiter]] = {}
        self._waiters = 0
        self._arrivals = itertools.count()

    @classmethod
    def from_config(cls, config: SubmissionConfig) -> LoginThrottle:
        return cls(config.auth_failure_limit, config.auth_failure_window,
                   queue_timeout=config.auth_queue_timeout)

    # --- the gate ----------------------------------------------------------------------------
    async def acquire(self, ip: str, username: str) -> Ticket | None:
        return await self.acquire_keys(ip_key(ip), user_key(username))

    async def acquire_keys(self, ipk: str, userk: str) -> Ticket | None:
        """A slot of both keys, waiting for one up to `queue_timeout`; None when refused."""
        got = self.try_acquire_keys(ipk, userk)
        if got is not BUSY:
            return got
        if self._waiters >= self.max_waiters:
            log.warning("event=auth.throttle_queue_full waiters=%d", self._waiters)
            return None
        future: asyncio.Future[Ticket | None] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(next(self._arrivals), ipk, userk, future)
        for key in (ipk, userk):
            self._queues.setdefault(key, deque()).append(waiter)
        self._waiters += 1
        try:
            async with asyncio.timeout(self.queue_timeout):
                return await future
        except TimeoutError:
            self._forget(waiter)
            return future.result() if future.done() and not future.cancelled() else None
        except BaseException:  # cancelled: the client left; give back a slot granted meanwhile
            self._forget(waiter)
            if future.done() and not future.cancelled() and (ticket := future.result()):
                self.release(ticket, CheckResult.ABANDONED)
            raise

    def try_acquire_keys(self, ipk: str, userk: str) -> Ticket | Literal[Busy.BUSY] | None:
        """Without waiting: a ticket, None (locked), or BUSY (no free slot now; waiters exist
        only while every slot is taken, and each release serves them first)."""
        return self._admit(ipk, userk)

    def release(self, ticket: Ticket, result: CheckResult) -> None:
        """The check is over: give its slots back, record the result, serve the waiters."""
        if ticket.id not in self._tickets:
            log.error("event=auth.throttle_bad_release id=%d", ticket.id)
            return
        self._tickets.discard(ticket.id)
        inflight = self._inflight
        for key in ticket.held:
            inflight[key] -= 1
            if inflight[key] <= 0:
                del inflight[key]
        if result is CheckResult.FAILURE:
            self._record_failure(ticket.ip_key, ticket.user_key)
        elif result is CheckResult.SUCCESS:
            self._record_success(ticket.ip_key, ticket.user_key)
        if self._waiters:
            self._wake(ticket.ip_key, ticket.user_key)

    # --- queries and direct records (tests, tools) ------------------------------------------
    def check(self, ip: str, username: str) -> bool:
        """Is neither the IP nor (unless trusted) the account name locked? Slots aside."""
        now = self._clock()
        ipk, userk = ip_key(ip), user_key(username)
        if self._recent(ipk, now) >= self.limit:
            return False
        return self._is_trusted(ipk, userk, now) or self._recent(userk, now) < self.limit

    def record_failure(self, ip: str, username: str) -> None:
        self._record_failure(ip_key(ip), user_key(username))

    def record_success(self, ip: str, username: str) -> None:
        self._record_success(ip_key(ip), user_key(username))

    @property
    def tracked_keys(self) -> int:
        return len(self._failures) + len(self._trusted)

    @property
    def in_flight(self) -> int:
        """Password checks admitted and not yet released."""
        return len(self._tickets)

    @property
    def waiting(self) -> int:
        return self._waiters

    # --- internals -------------------------------------------------------------------------
    def _admit(self, ipk: str, userk: str) -> Ticket | Literal[Busy.BUSY] | None:
        now = self._clock()
        limit = self.limit
        ip_recent = self._recent(ipk, now)
        if ip_recent >= limit:
            return None
        inflight = self._inflight
        trusted = self._is_trusted(ipk, userk, now)
        if trusted:
            held: tuple[str, ...] = (ipk,)
        else:
            user_recent = self._recent(userk, now)
            if user_recent >= limit:
                return None
            if user_recent + inflight[userk] >= limit:
                return BUSY
            held = (ipk, userk)
        if ip_recent + inflight[ipk] >= limit:
            return BUSY
        inflight.update(held)
        ticket = Ticket(ipk, userk, held, next(self._ids))
        self._tickets.add(ticket.id)
        return ticket

    def _wake(self, *keys: str) -> None:
        """Serve the waiters on `keys` in arrival order: a ticket for those with free slots, a
        refusal for those whose key is now locked; the others keep waiting."""
        queues = self._queues
        waiters = {w for key in keys for w in queues.get(key, ())}
        for waiter in sorted(waiters, key=lambda w: w.seq):
            if waiter.future.done():  # cancelled, its task yet to run: it forgets itself
                continue
            got = self._admit(waiter.ip_key, waiter.user_key)
            if got is not BUSY:
                self._forget(waiter)
                waiter.future.set_result(got)

    def _forget(self, waiter: _Waiter) -> None:
        removed = False
        for key in (waiter.ip_key, waiter.user_key):
            queue = self._queues.get(key)
            if queue is None:
                continue
            with contextlib.suppress(ValueError):
                queue.remove(waiter)
                removed = True
            if not queue:
                del self._queues[key]
        if removed:
            self._waiters -= 1

    def _is_trusted(self, ipk: str, userk: str, now: float) -> bool:
        expiry = self._trusted.get((ipk, userk))
        return expiry is not None and expiry > now

    def _record_failure(self, ipk: str, userk: str) -> None:
        now = self._clock()
        for key in (ipk, userk):
            times = self._failures.get(key)
            if times is None:
                times = self._failures[key] = deque(maxlen=self.limit)
            else:
                self._failures.move_to_end(key)
            times.append(now)
        self._prune(now)

    def _record_success(self, ipk: str, userk: str) -> None:
        """Exempt this IP from the account's lock for one window (see the module docstring).
        Counters are not cleared: an attacker holding one valid account must not be able to
        reset its IP's count by logging into it."""
        now = self._clock()
        pair = (ipk, userk)
        self._trusted.pop(pair, None)
        self._trusted[pair] = now + self.window
        self._prune(now)

    def _recent(self, key: str, now: float) -> int:
        """Failures of `key` within the window."""
        times = self._failures.get(key)
        if times is None:
            return 0
        horizon = now - self.window
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._failures[key]
        return len(times)

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

    def __init__(self, accounts: Authenticator, throttle: ThrottleGate, delay: float) -> None:
        self.accounts = accounts
        self.throttle = throttle
        self.delay = delay

    async def login(self, ip: str, username: str, password: str) -> LoginOutcome:
        loop = asyncio.get_running_loop()
        started = loop.time()
        throttle = self.throttle
        ticket = await throttle.acquire(ip, username)
        if ticket is None:
            log.info("event=auth.throttled ip=%s user=%s", ip, user_key(username)[5:])
            await self._delay(loop, started)
            return LoginOutcome(None, throttled=True)
        result = CheckResult.ABANDONED  # an error or a cancellation: no answer, nothing learnt
        try:
            account = await self.accounts.authenticate(username, password)
            result = CheckResult.FAILURE if account is None else CheckResult.SUCCESS
        finally:
            throttle.release(ticket, result)
        if account is None:
            log.info("event=auth.failed ip=%s user=%s", ip, user_key(username)[5:])
            await self._delay(loop, started)
            return LoginOutcome(None)
        return LoginOutcome(account)

    async def _delay(self, loop: asyncio.AbstractEventLoop, started: float) -> None:
        # Measured from the attempt's arrival, not added after the check, so the reply time
        # does not depend on how long the check took (an argon2 hash of older parameters, the
        # store's lookup, a lock that skipped the check, the wait for a slot).
        await asyncio.sleep(max(0.0, self.delay - (loop.time() - started)))
