"""The pure retry schedule: backoff, jitter, expiry and the delay warning, with `now` given."""

from __future__ import annotations

import pytest

from mailhouse.config import QueueConfig
from mailhouse.queue import schedule

DEFAULTS = QueueConfig()
CREATED = 1_700_000_000.0


def test_defaults_are_postfix_like() -> None:
    assert (DEFAULTS.min_backoff, DEFAULTS.max_backoff) == (300.0, 14_400.0)
    assert DEFAULTS.max_lifetime == 5 * 86_400


def test_backoff_doubles_from_min_up_to_max() -> None:
    delays = [schedule.backoff(n, DEFAULTS) for n in range(1, 10)]
    assert delays == [300, 600, 1200, 2400, 4800, 9600, 14_400, 14_400, 14_400]
    assert schedule.backoff(0, DEFAULTS) == 300  # nonsense in, the first delay out
    assert schedule.backoff(10_000, DEFAULTS) == 14_400  # no overflow


def test_backoff_with_max_below_min_is_max() -> None:
    config = QueueConfig(min_backoff=600, max_backoff=60)
    assert schedule.backoff(1, config) == 60


def test_next_attempt_without_jitter() -> None:
    now = CREATED + 1000
    assert schedule.next_attempt(1, now, CREATED, DEFAULTS) == now + 300
    assert schedule.next_attempt(3, now, CREATED, DEFAULTS) == now + 1200


def test_jitter_is_deterministic_bounded_and_spreads() -> None:
    now = CREATED + 1000
    times = [schedule.next_attempt(2, now, CREATED, DEFAULTS, key=k) for k in range(200)]
    assert times == [schedule.next_attempt(2, now, CREATED, DEFAULTS, key=k) for k in range(200)]
    assert all(now + 540 <= t < now + 660 for t in times)  # 600 s ± 10 %
    assert len(set(times)) > 150  # a crowd deferred together does not come back together
    factors = [schedule.jitter_factor(k, 1) for k in range(1000)]
    assert min(factors) >= 0.9 and max(factors) < 1.1
    assert min(factors) < 0.92 and max(factors) > 1.08


@pytest.mark.parametrize("attempts", [1, 7, 20])
def test_jitter_stays_within_min_and_max(attempts: int) -> None:
    now = CREATED + 1000
    for key in range(300):
        delay = schedule.next_attempt(attempts, now, CREATED, DEFAULTS, key=key) - now
        assert 300 <= delay <= 14_400


def test_never_scheduled_after_expiry() -> None:
    expiry = CREATED + DEFAULTS.max_lifetime
    now = expiry - 60
    assert schedule.next_attempt(9, now, CREATED, DEFAULTS, key=5) == expiry
    late = expiry + 10  # an attempt that ended after the expiry: due at once, then bounced
    assert schedule.next_attempt(9, late, CREATED, DEFAULTS) == expiry
    assert schedule.expires_at(CREATED, DEFAULTS) == expiry


def test_expired_at_exactly_max_lifetime() -> None:
    expiry = CREATED + DEFAULTS.max_lifetime
    assert not schedule.expired(CREATED, expiry - 0.001, DEFAULTS)
    assert schedule.expired(CREATED, expiry, DEFAULTS)
    assert schedule.expired(CREATED, expiry + 1, DEFAULTS)


def test_delay_warning_due() -> None:
    config = QueueConfig(delay_warning=3600)
    assert not schedule.delay_warning_due(CREATED, CREATED + 3599, False, config)
    assert schedule.delay_warning_due(CREATED, CREATED + 3600, False, config)
    assert not schedule.delay_warning_due(CREATED, CREATED + 9999, True, config)  # once
    off = QueueConfig(delay_warning=0)
    assert not schedule.delay_warning_due(CREATED, CREATED + 10**9, False, off)


def test_attempts_fit_the_lifetime() -> None:
    """With the defaults a message that never gets through is tried ~35 times in 5 days."""
    now, attempts = CREATED, 0
    while not schedule.expired(CREATED, now, DEFAULTS):
        attempts += 1
        now = schedule.next_attempt(attempts, now, CREATED, DEFAULTS, key=42)
    assert 30 <= attempts <= 40
    assert now == CREATED + DEFAULTS.max_lifetime
