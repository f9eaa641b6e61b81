"""The login throttle: sliding windows per IP and per account, bounded memory, constant delay."""

from __future__ import annotations

import asyncio
import time

import pytest

from mailhouse.model import Account
from mailhouse.service.throttle import LoginGuard, LoginThrottle, ip_key, user_key

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


def test_attempts_in_flight_count_as_failures_once_a_failure_is_recorded() -> None:
    t, _ = throttle(limit=3)
    with t.attempt("192.0.2.1", "a@example.test"), t.attempt("192.0.2.1", "b@example.test"):
        assert t.check("192.0.2.1", "c@example.test")  # no failure yet: good logins in flight
        t.record_failure("192.0.2.1", "z@example.test")
        assert not t.check("192.0.2.1", "c@example.test")  # 1 failure + 2 in flight
    assert t.check("192.0.2.1", "c@example.test")


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

    asyncio.run(run())
