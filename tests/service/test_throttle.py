"""The login throttle: sliding windows per IP and per account, bounded memory, constant delay."""

from __future__ import annotations

import asyncio
import time

import pytest

from mailhouse.config import SubmissionConfig
from mailhouse.model import Account
from mailhouse.service.throttle import (
    BUSY,
    CheckResult,
    LoginGuard,
    LoginThrottle,
    Ticket,
    ip_key,
    user_key,
)

ALICE = Account(1, "alice@example.test", "hash")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def throttle(limit: int = 3, window: float = 60.0, **kw: object) -> tuple[LoginThrottle, Clock]:
    clock = Clock()
    return LoginThrottle(limit, window, clock=clock, **kw), clock  # type: ignore[arg-type]


def test_ip_lock_after_limit_then_window_slides() -> None:
    t, clock = throttle()
    for i in range(3):
        assert t.check("192.0.2.1", f"user{i}@example.test")
        t.record_failure("192.0.2.1", f"user{i}@example.test")
        clock.now += 10
    assert not t.check("192.0.2.1", "someone@example.test")
    assert t.check("192.0.2.2", "someone@example.test")  # another IP is not affected
    clock.now = 1000.0 + 60.0  # the first failure leaves the window
    assert t.check("192.0.2.1", "someone@example.test")
    t.record_failure("192.0.2.1", "someone@example.test")
    assert not t.check("192.0.2.1", "someone@example.test")


def test_account_lock_across_ips_same_for_unknown_and_existing_names() -> None:
    t, _ = throttle()
    for name in ("alice@example.test", "ghost@example.test"):
        for i in range(3):
            t.record_failure(f"198.51.100.{i}", name)
        # Case and U-label spellings are the same account, and locked alike.
        assert not t.check("203.0.113.9", name.upper())
    assert t.check("203.0.113.9", "bob@example.test")


def test_success_exempts_that_ip_from_the_account_lock_only() -> None:
    t, clock = throttle()
    t.record_success("192.0.2.7", "alice@example.test")
    for i in range(3):
        t.record_failure(f"198.51.100.{i}", "alice@example.test")
    assert not t.check("198.51.100.50", "alice@example.test")
    assert t.check("192.0.2.7", "alice@example.test")  # her own client keeps working
    for _ in range(3):
        t.record_failure("192.0.2.7", "other@example.test")
    assert not t.check("192.0.2.7", "alice@example.test")  # but its IP lock still applies
    clock.now += 61
    assert t.check("198.51.100.50", "alice@example.test")


def test_ipv6_counted_per_64_and_mapped_ipv4_as_ipv4() -> None:
    assert ip_key("2001:db8:1:2::1") == ip_key("2001:db8:1:2:ffff::9") == "ip:2001:db8:1:2::/64"
    assert ip_key("2001:db8:1:3::1") != ip_key("2001:db8:1:2::1")
    assert ip_key("::ffff:192.0.2.1") == ip_key("192.0.2.1") == "ip:192.0.2.1"
    assert user_key("Alice@EXAMPLE.test") == "user:alice@example.test"
    assert user_key("not an address") == user_key("x" * 5000) == "user:<invalid>"
    t, _ = throttle()
    for i in range(3):
        t.record_failure(f"2001:db8:0:1::{i + 1}", f"u{i}@example.test")
    assert not t.check("2001:db8:0:1:abcd::1", "x@example.test")


def test_checks_in_flight_take_slots_from_the_first_one() -> None:
    # A key has (limit - recent failures) slots; a failure keeps its slot's worth of allowance,
    # a success gives it back.
    t, _ = throttle(limit=3)
    tickets = [t.try_acquire_keys(ip_key("192.0.2.1"), user_key(f"u{i}@example.test"))
               for i in range(4)]
    assert all(isinstance(x, Ticket) for x in tickets[:3])
    assert tickets[3] is BUSY  # the fourth waits: nothing has failed yet, but 3 are in flight
    first, second, third = (x for x in tickets[:3] if isinstance(x, Ticket))
    t.release(first, CheckResult.SUCCESS)
    again = t.try_acquire_keys(ip_key("192.0.2.1"), user_key("v@example.test"))
    assert isinstance(again, Ticket)
    t.release(second, CheckResult.FAILURE)
    assert t.try_acquire_keys(ip_key("192.0.2.1"), user_key("w@example.test")) is BUSY
    t.release(third, CheckResult.ABANDONED)  # no answer went out: not counted
    last = t.try_acquire_keys(ip_key("192.0.2.1"), user_key("w@example.test"))
    assert isinstance(last, Ticket)
    t.release(again, CheckResult.FAILURE)
    t.release(last, CheckResult.FAILURE)
    t.release(last, CheckResult.FAILURE)  # a second release is ignored
    assert t.in_flight == 0
    assert t.try_acquire_keys(ip_key("192.0.2.1"), user_key("x@example.test")) is None  # 3


def test_a_trusted_pair_skips_the_account_slots_not_the_ip_slots() -> None:
    t, _ = throttle(limit=2)
    t.record_success("192.0.2.7", "alice@example.test")
    held = [t.try_acquire_keys(ip_key(f"198.51.100.{i}"), user_key("alice@example.test"))
            for i in range(2)]
    assert all(isinstance(x, Ticket) for x in held)
    assert t.try_acquire_keys(ip_key("198.51.100.9"), user_key("alice@example.test")) is BUSY
    mine = [t.try_acquire_keys(ip_key("192.0.2.7"), user_key("alice@example.test"))
            for _ in range(3)]
    assert isinstance(mine[0], Ticket) and isinstance(mine[1], Ticket)
    assert mine[2] is BUSY  # the IP's own slots still apply


def test_memory_is_bounded() -> None:
    t, clock = throttle(limit=5, max_keys=100)
    for i in range(1000):
        t.record_failure("192.0.2.1", f"user{i}@example.test")
        t.record_success(f"10.0.{i // 256}.{i % 256}", "alice@example.test")
    assert t.tracked_keys <= 100
    assert not t.check("192.0.2.1", "fresh@example.test")  # the attacker's own key survives
    clock.now += 61
    t.record_failure("192.0.2.200", "x@example.test")  # expired keys go as new ones arrive
    assert t.tracked_keys == 2


class FakeAccounts:
    def __init__(self, cost: float = 0.0) -> None:
        self.calls = 0
        self.cost = cost

    async def authenticate(self, username: str, password: str) -> Account | None:
        self.calls += 1
        await asyncio.sleep(self.cost)
        return ALICE if (username, password) == ("alice@example.test", "right") else None


def test_guard_delays_failures_and_refuses_without_checking_when_locked() -> None:
    async def run() -> None:
        accounts = FakeAccounts()
        guard = LoginGuard(accounts, LoginThrottle(2, 60.0), delay=0.1)
        start = time.monotonic()
        assert (await guard.login("192.0.2.1", "alice@example.test", "right")).account == ALICE
        assert time.monotonic() - start < 0.05  # success is not delayed
        for _ in range(2):
            start = time.monotonic()
            outcome = await guard.login("192.0.2.1", "alice@example.test", "wrong")
            assert outcome.account is None and not outcome.throttled
            assert time.monotonic() - start >= 0.09
        calls = accounts.calls
        start = time.monotonic()
        outcome = await guard.login("192.0.2.1", "alice@example.test", "right")
        assert outcome.throttled and outcome.account is None  # even the right password
        assert accounts.calls == calls  # the password was not even looked at
        assert time.monotonic() - start >= 0.09

    asyncio.run(run())


def test_guard_reply_time_does_not_depend_on_check_cost() -> None:
    async def timed(cost: float) -> float:
        guard = LoginGuard(FakeAccounts(cost), LoginThrottle(10, 60.0), delay=0.2)
        start = time.monotonic()
        await guard.login("192.0.2.1", "ghost@example.test", "x")
        return time.monotonic() - start

    async def run() -> None:
        cheap, costly = await timed(0.0), await timed(0.1)
        assert abs(cheap - costly) < 0.05

    asyncio.run(run())


def test_parallel_burst_after_a_failure_cannot_exceed_the_limit() -> None:
    async def run() -> None:
        accounts = FakeAccounts(cost=0.02)
        throttle = LoginThrottle(3, 60.0)
        guard = LoginGuard(accounts, throttle, delay=0.0)
        await guard.login("192.0.2.1", "u@example.test", "wrong")  # one failure on record
        outcomes = await asyncio.gather(*(guard.login("192.0.2.1", f"u{i}@example.test", "x")
                                          for i in range(20)))
        assert accounts.calls == 3
        assert sum(o.throttled for o in outcomes) == 18

    asyncio.run(run())


def test_parallel_good_logins_are_never_locked_out() -> None:
    # A client opening 20 connections at once with the right password (bench/smtp_relay found
    # the opposite): no failure on record, so logins in flight do not count against it.
    async def run() -> None:
        accounts = FakeAccounts(cost=0.02)
        guard = LoginGuard(accounts, LoginThrottle(3, 60.0), delay=0.0)
        outcomes = await asyncio.gather(*(guard.login("192.0.2.1", "alice@example.test", "right")
                                          for _ in range(20)))
        assert all(o.account is ALICE and not o.throttled for o in outcomes)

    asyncio.run(run())


@pytest.mark.parametrize("exc", [RuntimeError("store down")])
def test_guard_releases_in_flight_on_error(exc: Exception) -> None:
    class Broken:
        async def authenticate(self, username: str, password: str) -> Account | None:
            raise exc

    async def run() -> None:
        t = LoginThrottle(1, 60.0)
        guard = LoginGuard(Broken(), t, delay=0.0)
        with pytest.raises(RuntimeError):
            await guard.login("192.0.2.1", "a@example.test", "x")
        assert t.check("192.0.2.1", "a@example.test")
        assert t.in_flight == 0

    asyncio.run(run())


def test_fifty_parallel_wrong_guesses_on_a_fresh_key_check_only_the_allowance() -> None:
    # Finding 4 (issue 7): in flight did not count before the first failure landed, so 50
    # parallel guesses from a fresh address were all checked and the right one got in.
    async def run() -> None:
        accounts = FakeAccounts(cost=0.02)
        guard = LoginGuard(accounts, LoginThrottle(10, 60.0), delay=0.0)
        guesses = [guard.login("192.0.2.1", "alice@example.test", f"guess{i}") for i in range(49)]
        outcomes = await asyncio.gather(*guesses,
                                        guard.login("192.0.2.1", "alice@example.test", "right"))
        assert accounts.calls == 10
        assert sum(o.throttled for o in outcomes) == 40
        assert all(o.account is None for o in outcomes[:49])
        # The right password, sent with them or right after, is refused unchecked.
        late = await guard.login("192.0.2.1", "alice@example.test", "right")
        assert late.throttled and accounts.calls == 10

    asyncio.run(run())


def test_waiters_of_a_key_that_locks_are_answered_at_once() -> None:
    async def run() -> None:
        accounts = FakeAccounts(cost=0.05)
        guard = LoginGuard(accounts, LoginThrottle(3, 60.0, queue_timeout=30.0), delay=0.0)
        start = time.monotonic()
        outcomes = await asyncio.gather(*(guard.login("192.0.2.1", "u@example.test", "x")
                                          for _ in range(20)))
        assert sum(o.throttled for o in outcomes) == 17
        assert time.monotonic() - start < 5.0  # not after the 30 s queue timeout

    asyncio.run(run())


def test_a_waiter_is_refused_after_the_queue_timeout_and_frees_nothing() -> None:
    async def run() -> None:
        t = LoginThrottle.from_config(  # submission.auth_queue_timeout
            SubmissionConfig(auth_failure_limit=1, auth_queue_timeout=0.1))
        held = await t.acquire("192.0.2.1", "a@example.test")
        assert held is not None
        start = time.monotonic()
        assert await t.acquire("192.0.2.1", "b@example.test") is None
        assert time.monotonic() - start >= 0.09
        assert t.waiting == 0 and t.in_flight == 1
        t.release(held, CheckResult.SUCCESS)
        assert await t.acquire("192.0.2.1", "b@example.test") is not None

    asyncio.run(run())


def test_a_cancelled_waiter_gives_its_slot_back() -> None:
    async def run() -> None:
        t = LoginThrottle(1, 60.0)
        held = await t.acquire("192.0.2.1", "a@example.test")
        assert held is not None
        waiter = asyncio.create_task(t.acquire("192.0.2.1", "b@example.test"))
        await asyncio.sleep(0.01)
        assert t.waiting == 1
        t.release(held, CheckResult.SUCCESS)  # grants the waiter's slot ...
        waiter.cancel()  # ... which leaves before it could use it
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert t.in_flight == 0 and t.waiting == 0
        later = await t.acquire("192.0.2.1", "c@example.test")
        assert later is not None

    asyncio.run(run())


def test_a_release_right_after_a_waiter_was_cancelled_skips_it() -> None:
    async def run() -> None:
        t = LoginThrottle(1, 60.0)
        held = await t.acquire("192.0.2.1", "a@example.test")
        assert held is not None
        waiter = asyncio.create_task(t.acquire("192.0.2.1", "b@example.test"))
        await asyncio.sleep(0.01)
        waiter.cancel()  # its future is cancelled now, its task has yet to run
        t.release(held, CheckResult.SUCCESS)
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert t.in_flight == 0 and t.waiting == 0

    asyncio.run(run())


def test_waiters_are_bounded() -> None:
    async def run() -> None:
        t = LoginThrottle(1, 60.0, max_waiters=3, queue_timeout=5.0)
        held = await t.acquire("192.0.2.1", "a@example.test")
        assert held is not None
        waiters = [asyncio.create_task(t.acquire("192.0.2.1", "a@example.test"))
                   for _ in range(3)]
        await asyncio.sleep(0.01)
        assert await t.acquire("192.0.2.1", "a@example.test") is None  # the fourth: refused
        t.release(held, CheckResult.FAILURE)  # locks the key: every waiter is refused
        assert await asyncio.gather(*waiters) == [None, None, None]

    asyncio.run(run())
