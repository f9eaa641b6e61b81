"""When to try a deferred recipient again, when to give up, when to warn the sender. PURE: no
clock, no I/O; `now` and the message's arrival time come in as parameters.

Backoff (as Postfix's qmgr, security.md §3 "Faults"): the first retry waits `min_backoff`
(default 300 s), each further one twice as long, up to `max_backoff` (default 4 h):
300, 600, 1200, 2400, 4800, 9600, 14400, 14400 … so a greylisting server (RFC 6647) sees us
back within minutes and a dead one is not hammered. About 35 attempts fit in the default 5 days.

Jitter: messages deferred together (a destination went down) would otherwise come back
together forever. Each delay is scaled by a factor in [0.9, 1.1) derived from the message id and
the attempt number: deterministic (tests can predict it, a restart does not reshuffle) and the
same for every recipient of one message, so they stay in one delivery. The result stays within
[min_backoff, max_backoff].

Expiry: a message older than `max_lifetime` (default 5 days, RFC 5321 §4.5.4.1 "at least 4-5
days") is returned to its sender with 4.4.7 (RFC 3463). A next attempt is never scheduled after
the expiry time, so the bounce leaves on time rather than up to `max_backoff` late.
"""

from __future__ import annotations

import hashlib

from mailhouse.config import QueueConfig

JITTER = 0.1  # ± fraction of a delay
_MAX_EXPONENT = 60  # 2**60 times any sane min_backoff is far past any max_backoff


def backoff(attempts: int, config: QueueConfig) -> float:
    """Seconds to wait after the `attempts`-th failed attempt (1 for the first)."""
    exponent = min(max(attempts, 1) - 1, _MAX_EXPONENT)
    return min(config.min_backoff * 2.0**exponent, config.max_backoff)


def jitter_factor(key: int, attempts: int, spread: float = JITTER) -> float:
    """A factor in [1 - spread, 1 + spread), fixed for (key, attempts)."""
    digest = hashlib.blake2b(b"%d:%d" % (key, attempts), digest_size=8).digest()
    unit = int.from_bytes(digest, "big") / 2.0**64  # [0, 1)
    return 1.0 + spread * (2.0 * unit - 1.0)


def next_attempt(
    attempts: int,
    now: float,
    created: float,
    config: QueueConfig,
    *,
    key: int | None = None,
    spread: float = JITTER,
) -> float:
    """When to try again after `attempts` failed attempts, the last one ending at `now`.
    `key` (the queue id) turns jitter on; never later than the message's expiry."""
    delay = backoff(attempts, config)
    if key is not None and spread > 0:
        delay *= jitter_factor(key, attempts, spread)
        delay = min(max(delay, config.min_backoff), config.max_backoff)
    return min(now + delay, expires_at(created, config))


def expires_at(created: float, config: QueueConfig) -> float:
    return created + config.max_lifetime


def expired(created: float, now: float, config: QueueConfig) -> bool:
    """The message has been queued for `max_lifetime`: its PENDING recipients fail (4.4.7)."""
    return expires_at(created, config) <= now


def delay_warning_due(
    created: float, now: float, delay_warned: bool, config: QueueConfig
) -> bool:
    """A "delayed" DSN (RFC 3464 action=delayed) is owed: warnings are on, the message has
    waited `delay_warning` seconds, and none was sent. The caller checks that recipients are
    still pending and that the sender is not <>."""
    return (
        config.delay_warning > 0
        and not delay_warned
        and created + config.delay_warning <= now
    )
